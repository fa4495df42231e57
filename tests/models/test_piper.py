"""PiperVoice: the split graph and windowed decoding give the whole-sentence audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from models.audio.phonemes import EspeakPhonemizer, phoneme_ids
from models.audio.piper import PiperVoice, PiperVoiceConfig, default_voice_path, window_spans


@pytest.fixture(scope="module")
def voice() -> PiperVoice:
    return PiperVoice.load(threads=2)


@pytest.fixture(scope="module")
def ids(voice: PiperVoice) -> list[int]:
    (sentence,) = EspeakPhonemizer("en-us").sentences("The quick brown fox jumps over the dog.")
    return phoneme_ids(sentence, voice.config.phoneme_id_map)


def whole_model_audio(ids: list[int]) -> np.ndarray:
    """The unmodified voice file run in one piece: the reference for the split graph."""
    session = onnxruntime.InferenceSession(
        str(default_voice_path()), providers=["CPUExecutionProvider"]
    )
    feed = {
        "input": np.asarray([ids], np.int64),
        "input_lengths": np.asarray([len(ids)], np.int64),
        "scales": np.asarray([0.0, 1.0, 0.0], np.float32),  # no noise: deterministic
    }
    return np.asarray(session.run(None, feed)[0], np.float32).reshape(-1)


def test_split_graph_matches_the_whole_model(voice: PiperVoice, ids: list[int]) -> None:
    latent = voice.encode(ids, noise_scale=0.0, noise_w=0.0)
    audio = voice.decode(latent.z)
    reference = whole_model_audio(ids)
    assert audio.shape == reference.shape
    np.testing.assert_allclose(audio, reference, atol=1e-5)
    # durations: one count per id, covering exactly the latent's frames
    assert latent.frames_per_id.shape == (len(ids),)
    assert int(latent.frames_per_id.sum()) == latent.frames
    assert len(audio) == latent.frames * voice.config.hop_length


@pytest.mark.parametrize(("first", "window"), [(8, 48), (1, 7), (20, 20)])
def test_windowed_decode_matches_the_whole_decode(
    voice: PiperVoice, ids: list[int], first: int, window: int
) -> None:
    latent = voice.encode(ids, noise_scale=0.0, noise_w=0.0)
    whole = voice.decode(latent.z)
    spans = window_spans(latent.frames, first, window)
    assert spans[0] == (0, first) and spans[-1][1] == latent.frames
    pieces = np.concatenate([voice.decode_span(latent, lo, hi) for lo, hi in spans])
    assert pieces.shape == whole.shape
    rel = np.sqrt(np.mean((pieces - whole) ** 2) / np.mean(whole**2))
    assert rel < 1e-4, rel
    # without context the seams show: the context is what makes windows exact
    bare = np.concatenate([voice.decode_span(latent, lo, hi, context=0) for lo, hi in spans])
    assert np.sqrt(np.mean((bare - whole) ** 2) / np.mean(whole**2)) > 10 * rel


def test_bad_spans_and_missing_files_are_named(voice: PiperVoice, tmp_path: Path) -> None:
    latent = voice.encode([1, 0, 2])
    with pytest.raises(ValueError, match="outside"):
        voice.decode_span(latent, 0, latent.frames + 1)
    with pytest.raises(FileNotFoundError, match="no Piper voice"):
        PiperVoice.load(tmp_path / "missing.onnx")
    (tmp_path / "v.onnx.json").write_text('{"audio": {"sample_rate": 16000}}')
    with pytest.raises(ValueError, match="no key 'espeak'"):
        PiperVoiceConfig.from_json(tmp_path / "v.onnx.json")


def test_non_piper_onnx_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "v.onnx")
    (tmp_path / "v.onnx.json").write_text(Path(f"{default_voice_path()}.json").read_text())
    with pytest.raises(ValueError, match="not a Piper VITS graph"):
        PiperVoice.load(tmp_path / "v.onnx")
