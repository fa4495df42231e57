"""Seeded batches of world clips for training: [B, T, 3, H, W] float32 in [0, 1].

Every clip is a fresh random scene (models.world.sample_scene) rendered from a
random start frame, so batches cover the whole trajectory (bounces included),
not only the first frames. A batch is a pure function of (seed, batch index):
two iterators with the same seed give the same batches, and held-out seeds give
scenes the training stream never draws (different generator streams).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.world import WorldStream, sample_scene

MAX_START_FRAME = 256  # clips start anywhere in the first ~10 s of a scene


def clip_batch(
    rng: np.random.Generator,
    batch: int,
    frames: int,
    height: int,
    width: int,
    crop: int | None = None,
) -> Tensor:
    """One batch drawn from ``rng``: [batch, frames, 3, height, width] float32 in [0, 1].

    With ``crop``, each clip is rendered at height x width and a random
    crop x crop window (at a multiple of 8 pixels) is kept: objects keep the
    scale of the full frame while a training step costs only the crop.
    """
    out_h, out_w = (height, width) if crop is None else (crop, crop)
    if crop is not None and (crop > min(height, width) or crop % 8):
        raise ValueError(f"crop must be a multiple of 8 within {height}x{width}, got {crop}")
    clips = np.empty((batch, frames, out_h, out_w, 3), dtype=np.uint8)
    for i in range(batch):
        stream = WorldStream(sample_scene(rng), height=height, width=width)
        stream.frame_index = int(rng.integers(MAX_START_FRAME))
        clip = stream.next_frames(frames)
        if crop is not None:
            top = 8 * int(rng.integers((height - crop) // 8 + 1))
            left = 8 * int(rng.integers((width - crop) // 8 + 1))
            clip = clip[:, top : top + crop, left : left + crop]
        clips[i] = clip
    # NTHWC uint8 -> NTCHW float
    return torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float().div_(255.0)


@dataclass(frozen=True)
class WorldClips:
    """An endless, seeded iterable of clip batches.

    Usage::

        for step, x in zip(range(100), WorldClips(batch=4, frames=8, size=64, seed=0)):
            ...                                   # x: [4, 8, 3, 64, 64] in [0, 1]
    """

    batch: int = 4
    frames: int = 8  # a multiple of 4 (the autoencoder's frames per latent)
    size: int = 128  # height = width, a multiple of 8 (the autoencoder's upscale)
    seed: int = 0
    crop: int | None = None  # train on random crop x crop windows of size x size renders

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.frames < 4 or self.frames % 4:
            raise ValueError(f"frames must be a positive multiple of 4, got {self.frames}")
        if self.size < 8 or self.size % 8:
            raise ValueError(f"size must be a positive multiple of 8, got {self.size}")

    def __iter__(self) -> Iterator[Tensor]:
        rng = np.random.default_rng(self.seed)
        while True:
            yield clip_batch(rng, self.batch, self.frames, self.size, self.size, self.crop)
