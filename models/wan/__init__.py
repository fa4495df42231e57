"""The causal Wan2.1 DiT, parameter-compatible with Self-Forcing, CausVid and LongLive."""

from models.wan.config import PRESETS, WanConfig
from models.wan.loader import CheckpointError, load_checkpoint, load_state_dict_file
from models.wan.model import CausalWanModel

__all__ = [
    "PRESETS",
    "CausalWanModel",
    "CheckpointError",
    "WanConfig",
    "load_checkpoint",
    "load_state_dict_file",
]
