"""A user's ONNX converter, exported here from torch, through the same AudioGenerator interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from engine.audio import AudioGenerator
from models.audio.onnx_vc import OnnxVoiceConverter

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx legacy path

RATE, CHUNK, TAPS = 16_000, 320, 33


class StreamingFilter(nn.Module):
    """A causal FIR filter (a fixed 'voice'), chunked: state = the last TAPS - 1 inputs."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("kernel", torch.randn(1, 1, TAPS, generator=g) / TAPS)

    def forward(self, audio: torch.Tensor, state_past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = torch.cat([state_past, audio], dim=1)  # [1, TAPS - 1 + CHUNK]
        y = torch.nn.functional.conv1d(x[:, None], self.kernel)[:, 0]  # [1, CHUNK]
        return 0.5 * y, x[:, -(TAPS - 1) :]


def export(path: Path, metadata: dict[str, str] | None = None) -> Path:
    model = StreamingFilter().eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, CHUNK), torch.zeros(1, TAPS - 1)),
        str(path),
        input_names=["audio", "state_past"],
        output_names=["audio_out", "state_past_out"],
        dynamo=False,
    )
    proto = onnx.load(str(path))
    for key, value in (metadata or {"sample_rate": str(RATE), "chunk": str(CHUNK)}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def test_streamed_chunks_equal_the_filter_over_the_whole_signal(tmp_path: Path) -> None:
    vc = OnnxVoiceConverter.load(export(tmp_path / "vc.onnx"))
    assert isinstance(vc, AudioGenerator) and vc.takes == "audio"
    assert vc.latency == pytest.approx(CHUNK / RATE)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 10 * CHUNK).astype(np.float32)
    out = []
    for i in range(0, len(x), 123):  # pieces that do not line up with chunks
        vc.feed_audio(x[i : i + 123], RATE)
        while (piece := vc.next_piece()) is not None:
            out.append(piece.samples)
    got = np.concatenate(out)
    kernel = StreamingFilter().kernel.numpy()[0, 0]
    whole = 0.5 * np.convolve(np.concatenate([np.zeros(TAPS - 1), x]), kernel[::-1], "valid")
    np.testing.assert_allclose(got, whole[: len(got)], atol=1e-5)
    assert len(got) == len(x)
    vc.cancel()
    assert vc.next_piece() is None


@pytest.mark.parametrize(
    ("metadata", "error"),
    [({"chunk": "320"}, "sample_rate"), ({"sample_rate": "x", "chunk": "320"}, "integer")],
)
def test_a_model_off_the_contract_is_named(
    tmp_path: Path, metadata: dict[str, str], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        OnnxVoiceConverter.load(export(tmp_path / "vc.onnx", metadata))
    with pytest.raises(FileNotFoundError, match="no ONNX converter"):
        OnnxVoiceConverter.load(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        OnnxVoiceConverter.load(tmp_path / "junk.onnx")


def test_framecast_convert_runs_a_file_through_the_onnx_converter(tmp_path: Path) -> None:
    import wave

    from apps.cli import main

    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE) * 32767).astype("<i2")
    src = tmp_path / "in.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(x.tobytes())
    model = export(tmp_path / "vc.onnx")
    out = tmp_path / "out.wav"
    assert main(["convert", str(src), "--onnx", str(model), "--out", str(out)]) == 0
    with wave.open(str(out)) as w:
        assert w.getframerate() == RATE and w.getnframes() == len(x)
    assert main(["convert", str(tmp_path / "nope.wav"), "--out", str(out)]) == 1
    (tmp_path / "bad.wav").write_bytes(b"RIFF garbage")
    assert main(["convert", str(tmp_path / "bad.wav"), "--out", str(out)]) == 1
