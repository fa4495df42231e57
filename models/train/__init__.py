"""Training on the procedural world: seeded clip batches and the TAEHV-style autoencoder.

from models.train import TrainConfig, train_autoencoder

metrics = train_autoencoder(TrainConfig(steps=200, out=Path("out/taehv")))
"""

from models.train.autoencoder import (
    TrainConfig,
    evaluate_autoencoder,
    load_autoencoder,
    train_autoencoder,
)
from models.train.data import WorldClips, clip_batch

__all__ = [
    "TrainConfig",
    "WorldClips",
    "clip_batch",
    "evaluate_autoencoder",
    "load_autoencoder",
    "train_autoencoder",
]
