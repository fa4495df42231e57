"""Voice conversion without training: WORLD analysis, a new pitch and vocal tract, WORLD synthesis.

The zero-training fallback of streaming voice conversion, and the reference the
trained converter is measured against. Live input arrives 20 ms at a time; each
``block`` of new input is analysed with ``context`` seconds of the past before
it (WORLD's F0 estimator needs a few pitch periods), and only the new block's
frames are resynthesised:

- pitch: F0 times 2^(semitones / 12);
- vocal tract: the spectral envelope stretched along frequency by ``formant``
  (> 1 raises the formants, a shorter vocal tract; < 1 lowers them);
- aperiodicity kept, so breath and consonants stay as they were.

WORLD synthesis starts each call cold, so consecutive outputs overlap by
``crossfade`` and are blended; the output is held back by that much.
Algorithmic latency: ``block + crossfade`` (90 ms by default), independent of
how long the stream runs.

Usage (an engine AudioGenerator: audio in, audio out)::

    vc = WorldVoiceConverter(ConverterConfig(semitones=4))
    vc.feed_audio(mic_chunk, 48_000)            # float32 [N] or [N, channels]
    while (piece := vc.next_piece()) is not None:
        play(piece.samples)                     # float32 [n] at vc.sample_rate
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.audio import AudioPiece, InputKind, StreamResampler
from models.audio.asr import resample_mono

F0_RATE = 8_000  # Hz: where Harvest looks for F0


class ConverterUnavailable(ImportError):
    """pyworld is missing: names the extra that brings it."""


def _pyworld() -> Any:
    if importlib.util.find_spec("pyworld") is None:
        raise ConverterUnavailable(
            "the DSP voice converter runs WORLD from pyworld: pip install 'framecast[vc]'"
        )
    import pyworld

    return pyworld


@dataclass(frozen=True)
class ConverterConfig:
    """What the converter changes, and how it cuts the live input."""

    semitones: float = 4.0  # pitch shift
    formant: float = 1.0  # spectral-envelope stretch (1: keep the vocal tract)
    sample_rate: int = 16_000  # Hz, where WORLD runs (speech needs no more)
    block: float = 0.08  # seconds of new input per step: most of the algorithmic latency
    context: float = 0.04  # seconds of past input analysed with each block
    crossfade: float = 0.01  # seconds blended between consecutive outputs
    frame_period: float = 5.0  # ms between WORLD frames
    f0_floor: float = 70.0  # Hz: the lowest pitch looked for (lower costs more)
    f0_ceil: float = 400.0  # Hz: the highest

    def __post_init__(self) -> None:
        if not -24 <= self.semitones <= 24:
            raise ValueError(f"semitones must be within +-24, got {self.semitones}")
        if not 0.5 <= self.formant <= 2.0:
            raise ValueError(f"formant must be in [0.5, 2], got {self.formant}")
        if not 0 < self.crossfade < self.block <= 1.0 or self.context < self.crossfade:
            raise ValueError("need 0 < crossfade < block <= 1 s and context >= crossfade")
        hop = self.frame_period / 1000 * self.sample_rate
        for name in ("block", "context", "crossfade"):
            samples = getattr(self, name) * self.sample_rate
            if abs(samples / hop - round(samples / hop)) > 1e-6:
                raise ValueError(f"{name} must be a whole number of {self.frame_period} ms frames")

    @property
    def ratio(self) -> float:
        return float(2.0 ** (self.semitones / 12.0))

    @property
    def latency(self) -> float:
        """Seconds from a sample's arrival to its converted sample, compute excluded."""
        return self.block + self.crossfade


class WorldVoiceConverter:
    """An engine AudioGenerator: live audio in, the same speech at a new pitch and timbre out."""

    channels = 1
    takes: InputKind = "audio"

    def __init__(self, config: ConverterConfig | None = None) -> None:
        self.config = config or ConverterConfig()
        self._world = _pyworld()
        c = self.config
        self._block = round(c.block * c.sample_rate)
        self._context = round(c.context * c.sample_rate)
        self._xfade = round(c.crossfade * c.sample_rate)
        self._hop = round(c.frame_period / 1000 * c.sample_rate)
        self._lock = threading.Lock()
        self._fade_in = np.linspace(0.0, 1.0, self._xfade, endpoint=False) + 0.5 / self._xfade
        self._resample = StreamResampler(c.sample_rate)
        self.reset()

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def reset(self) -> None:
        with self._lock:
            self._history = np.zeros(self._context, np.float64)  # past input, for analysis
            self._pending = np.zeros(0, np.float64)  # input not yet converted
            self._tail: np.ndarray | None = None  # last output's overlap, not yet played
            self._generation = getattr(self, "_generation", 0) + 1
            self._resample.reset()

    def cancel(self) -> None:
        self.reset()

    def feed_text(self, text: str) -> None:
        raise TypeError("WorldVoiceConverter converts audio; it takes no text")

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        x = self._resample(samples, sample_rate).astype(np.float64)
        with self._lock:
            self._pending = np.concatenate([self._pending, x])

    def end_input(self) -> None:
        """Convert what is held: pad the last partial block with silence."""
        with self._lock:
            short = (-len(self._pending)) % self._block
            if short:
                self._pending = np.concatenate([self._pending, np.zeros(short)])

    def next_piece(self) -> AudioPiece | None:
        with self._lock:
            if len(self._pending) < self._block:
                return None
            generation = self._generation
            block, self._pending = self._pending[: self._block], self._pending[self._block :]
            window = np.concatenate([self._history, block])
            self._history = window[-self._context :]
        converted = self._convert(window)  # block + crossfade samples, ending at the block's end
        with self._lock:
            if generation != self._generation:
                return None  # cancelled meanwhile
            head, body, tail = (
                converted[: self._xfade],
                converted[self._xfade : self._block],
                converted[self._block :],
            )
            if self._tail is not None:
                head = self._tail * (1.0 - self._fade_in) + head * self._fade_in
            else:
                head = head * self._fade_in  # the stream's start fades in
            self._tail = tail
        out = np.concatenate([head, body]).astype(np.float32)
        return AudioPiece(np.clip(out, -1.0, 1.0))

    def _convert(self, window: np.ndarray) -> np.ndarray:
        """WORLD on the window; the last (block + crossfade) samples, resynthesised."""
        c, pw = self.config, self._world
        fs, period = c.sample_rate, c.frame_period
        # Harvest, not DIO: on the packaged voice DIO put only 40% of frames within a
        # semitone of Harvest's track (Harvest on windows: 92%). Harvest runs at 8 kHz
        # (F0 needs no more), which cuts its cost by a third.
        low = resample_mono(window.astype(np.float32), fs, F0_RATE).astype(np.float64)
        f0, times = pw.harvest(
            low, F0_RATE, f0_floor=c.f0_floor, f0_ceil=c.f0_ceil, frame_period=period
        )
        frames = len(window) // self._hop + 1
        f0, times = _fit(f0, frames), np.arange(frames) * period / 1000
        sp = pw.cheaptrick(window, f0, times, fs)
        ap = pw.d4c(window, f0, times, fs)
        # frames whose centre lies in the region to resynthesise (block + the crossfade before it)
        first = (len(window) - self._block - self._xfade) // self._hop
        f0, sp, ap = f0[first:], sp[first:], ap[first:]
        if c.formant != 1.0:
            sp = _stretch_envelope(sp, c.formant)
        audio = pw.synthesize(
            np.ascontiguousarray(f0 * c.ratio),
            np.ascontiguousarray(sp),
            np.ascontiguousarray(ap),
            fs,
            period,
        )
        need = self._block + self._xfade
        if len(audio) < need:
            audio = np.concatenate([audio, np.zeros(need - len(audio))])
        return np.asarray(audio[:need])


def _fit(track: np.ndarray, frames: int) -> np.ndarray:
    """A frame track cut or edge-padded to ``frames`` frames."""
    if len(track) >= frames:
        return np.ascontiguousarray(track[:frames])
    return np.concatenate([track, np.full(frames - len(track), track[-1] if len(track) else 0.0)])


def _stretch_envelope(sp: np.ndarray, factor: float) -> np.ndarray:
    """Move spectral-envelope features from bin k to bin k * factor (frames x bins)."""
    bins = np.arange(sp.shape[1], dtype=np.float64)
    source = np.clip(bins / factor, 0, sp.shape[1] - 1)
    out = np.empty_like(sp)
    for i, row in enumerate(sp):
        out[i] = np.interp(source, bins, row)
    return out
