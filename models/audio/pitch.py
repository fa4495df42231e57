"""Pitch, measured: F0 tracks of speech (WORLD's Harvest) and the shift between two of them.

A median F0 of each signal is no measure of a pitch shift: speech moves over
an octave within a sentence, and the two tracks call different frames voiced,
so two medians can differ by semitones that no frame has. The shift is read
frame by frame instead, on frames voiced in both tracks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.audio.asr import resample_mono
from models.audio.dsp_vc import _pyworld

PITCH_RATE = 16_000  # Hz
FRAME_PERIOD = 5.0  # ms


def f0_track(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """F0 in Hz per 5 ms frame (0 where unvoiced): Harvest at 16 kHz, 70-800 Hz."""
    pw = _pyworld()
    x = resample_mono(samples, sample_rate, PITCH_RATE).astype(np.float64)
    f0, _ = pw.harvest(x, PITCH_RATE, f0_floor=70.0, f0_ceil=800.0, frame_period=FRAME_PERIOD)
    return np.asarray(f0)


def pitch_shift(
    source: np.ndarray,
    source_rate: int,
    converted: np.ndarray,
    converted_rate: int,
    delay: float | None = 0.0,
    max_delay: float = 0.5,
) -> tuple[float, float]:
    """(median, interquartile range) in semitones of converted F0 over source F0, frame by
    frame over frames voiced in both; ``delay`` is how many seconds the output lags.

    ``delay=None`` (audio that travelled: unknown lag) tries every lag up to
    ``max_delay`` and keeps the one where the most frames agree (within a
    semitone of their median shift): a pitch shift keeps the contour's shape, so
    only the right alignment makes the frames agree. (The smallest interquartile
    range is no guide: octave errors of the F0 tracker widen it at every lag.)
    """
    a, b = f0_track(source, source_rate), f0_track(converted, converted_rate)
    if delay is not None:
        return _shift_at(a, b, round(delay * 1000 / FRAME_PERIOD))
    limit = round(max_delay * 1000 / FRAME_PERIOD)
    best: tuple[float, float, float] | None = None  # agreement, median, iqr
    for lag in range(-limit, limit + 1):
        try:
            median, iqr, agree = _shift_at(a, b, lag, with_agreement=True)
        except ValueError:
            continue
        if best is None or agree > best[0]:
            best = (agree, median, iqr)
    if best is None:
        raise ValueError("no alignment leaves enough frames voiced in both signals")
    return best[1], best[2]


def _shift_at(
    a: np.ndarray, b: np.ndarray, lag: int, with_agreement: bool = False
) -> Any:
    b = b[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag), b])
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    both = (a > 0) & (b > 0)
    if both.sum() < 40:  # 0.2 s of voiced speech
        raise ValueError(f"only {int(both.sum())} frames are voiced in both signals")
    shift = 12.0 * np.log2(b[both] / a[both])
    q1, med, q3 = np.percentile(shift, [25, 50, 75])
    if with_agreement:
        return float(med), float(q3 - q1), float(np.sum(np.abs(shift - med) < 1.0))
    return float(med), float(q3 - q1)
