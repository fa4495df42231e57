"""Media units that leave the engine: nothing transport-specific."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """One RGB frame. data: uint8 [H, W, 3]; pts counts time_base units."""

    data: np.ndarray
    pts: int
    time_base: Fraction

    @property
    def time(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Mono or interleaved PCM. samples: float32 [N, channels] in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int  # Hz
    pts: int  # in samples
    time_base: Fraction

    @property
    def time(self) -> float:
        return float(self.pts * self.time_base)
