"""A user's streaming voice converter as ONNX: chunk in, chunk out, state in and out.

The contract, checked when the file loads (each rule names itself when broken):

- input ``audio``: float32 [1, chunk], mono at ``sample_rate``;
- inputs ``state_*`` (any number, static shapes, float32): what the model
  carries from one chunk to the next, zeros at the start of a stream;
- output ``audio_out``: float32 [1, n], the converted chunk (any fixed n);
- outputs ``state_*_out``: the next value of each ``state_*`` input, same shape;
- metadata ``sample_rate`` and ``chunk`` (integers, in the model's
  ``metadata_props``), and optionally ``latency`` (samples the model holds
  back by design, reported as its algorithmic latency).

Runs on whichever ``onnxruntime`` is installed (CPU, or CUDA first when present).

Usage::

    vc = OnnxVoiceConverter.load("my_converter.onnx")
    vc.feed_audio(mic_chunk, 48_000)
    while (piece := vc.next_piece()) is not None:
        play(piece.samples)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from engine.audio import AudioPiece, InputKind, StreamResampler
from models.audio.piper import DEFAULT_PROVIDERS, _onnxruntime


class OnnxVoiceConverter:
    """An engine AudioGenerator over a user's ONNX converter (see the module docstring)."""

    channels = 1
    takes: InputKind = "audio"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        ort = _onnxruntime()
        if not path.exists():
            raise FileNotFoundError(f"no ONNX converter at {path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        available = ort.get_available_providers()
        providers = [p for p in DEFAULT_PROVIDERS if p in available]
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own types for unreadable files
            raise ValueError(f"{path} is not a loadable ONNX model: {e}") from None
        self.path = path
        meta = self._session.get_modelmeta().custom_metadata_map
        try:
            self._rate = int(meta["sample_rate"])
            self.chunk = int(meta["chunk"])
        except (KeyError, ValueError) as e:
            raise ValueError(
                f"{path}: the converter's metadata_props need integer 'sample_rate' and 'chunk' "
                f"(got {dict(meta)}): {e}"
            ) from None
        self.latency_samples = int(meta.get("latency", 0))
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if "audio" not in inputs or "audio_out" not in outputs:
            raise ValueError(
                f"{path}: a converter takes input 'audio' and gives output 'audio_out'; "
                f"it has inputs {sorted(inputs)} and outputs {sorted(outputs)}"
            )
        self._states: dict[str, list[int]] = {}
        for name, spec in inputs.items():
            if name == "audio":
                continue
            if not name.startswith("state_"):
                raise ValueError(f"{path}: input {name!r} is neither 'audio' nor a 'state_*'")
            if f"{name}_out" not in outputs:
                raise ValueError(f"{path}: state input {name!r} has no output '{name}_out'")
            if not all(isinstance(d, int) for d in spec.shape):
                raise ValueError(f"{path}: state {name!r} needs a static shape, got {spec.shape}")
            self._states[name] = list(spec.shape)
        self._fetch = ["audio_out", *(f"{n}_out" for n in self._states)]
        self._resample = StreamResampler(self._rate)
        self._lock = threading.Lock()
        self.reset()

    @classmethod
    def load(cls, path: Path | str, **kwargs: Any) -> OnnxVoiceConverter:
        return cls(Path(path), **kwargs)

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def latency(self) -> float:
        """Algorithmic latency in seconds: a chunk's wait plus what the model holds back."""
        return (self.chunk + self.latency_samples) / self._rate

    def reset(self) -> None:
        with self._lock:
            self._pending = np.zeros(0, np.float32)
            self._state = {n: np.zeros(s, np.float32) for n, s in self._states.items()}
            self._resample.reset()

    def cancel(self) -> None:
        self.reset()

    def feed_text(self, text: str) -> None:
        raise TypeError("an ONNX voice converter converts audio; it takes no text")

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        x = self._resample(samples, sample_rate)
        with self._lock:
            self._pending = np.concatenate([self._pending, x])

    def end_input(self) -> None:
        with self._lock:
            short = (-len(self._pending)) % self.chunk
            if short:
                self._pending = np.concatenate([self._pending, np.zeros(short, np.float32)])

    def next_piece(self) -> AudioPiece | None:
        with self._lock:
            if len(self._pending) < self.chunk:
                return None
            chunk, self._pending = self._pending[: self.chunk], self._pending[self.chunk :]
            feed = {"audio": chunk[None].astype(np.float32), **self._state}
            # the model runs under the lock: its state must pass from call to call in order
            audio, *states = self._session.run(self._fetch, feed)
            self._state = dict(zip(self._states, states, strict=True))
        out = np.asarray(audio, np.float32).reshape(-1)
        return AudioPiece(np.clip(out, -1.0, 1.0))
