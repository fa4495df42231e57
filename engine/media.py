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
class PhonemeMark:
    """A phoneme heard in an AudioChunk, for lips that follow the voice (avatars, captions).

    start/end count the chunk's time_base from the stream's start, like its pts.
    """

    phoneme: str  # IPA, as the voice's phonemiser wrote it
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Mono or interleaved PCM. samples: float32 [N, channels] in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int  # Hz
    pts: int  # in samples
    time_base: Fraction
    marks: tuple[PhonemeMark, ...] = ()  # phonemes that start within this chunk

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return len(self.samples) / self.sample_rate

    @property
    def time(self) -> float:
        return float(self.pts * self.time_base)
