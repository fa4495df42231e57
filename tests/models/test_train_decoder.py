"""Training the tiny autoencoder on world clips: the loss falls on a fixed batch, a seed
reproduces the weights exactly, saved weights round-trip, and the trained streaming
decoder equals its batch decode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from apps.cli import main
from models.decoders import TAEHVConfig, TinyVideoDecoder, TinyVideoEncoder
from models.train import TrainConfig, WorldClips, evaluate_autoencoder, load_autoencoder
from models.train import train_autoencoder as train
from models.train.autoencoder import Progress, heldout_clips, reconstruction_loss

# 32x32 clips of 8 frames, 2 per step: a few steps take well under a second.
FAST = TrainConfig(steps=40, batch=2, frames=8, size=32, crop=None, log_every=10, eval_frames=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("taehv")
    reports: list[Progress] = []
    metrics = train(TrainConfig(**{**FAST.__dict__, "out": out}), progress=reports.append)
    assert [p.step for p in reports] == [10, 20, 30, 40]
    assert reports[-1].eta_s == 0 and all(p.steps_per_s > 0 for p in reports)
    return out, metrics


def test_data_is_seeded_and_in_range() -> None:
    a = next(iter(WorldClips(batch=2, frames=8, size=32, seed=3)))
    b = next(iter(WorldClips(batch=2, frames=8, size=32, seed=3)))
    c = next(iter(WorldClips(batch=2, frames=8, size=32, seed=4)))
    assert a.shape == (2, 8, 3, 32, 32) and a.dtype == torch.float32
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[:, 0], a[:, -1])  # objects move within a clip
    with pytest.raises(ValueError):
        WorldClips(frames=6)


def test_training_lowers_loss_on_a_fixed_batch(trained: tuple[Path, dict[str, object]]) -> None:
    out, _ = trained
    x = heldout_clips([11, 12], frames=8, size=32)  # never drawn by the training stream
    taehv = TAEHVConfig.tiny()
    with torch.no_grad():  # the untrained weights train() starts from (seeded)
        before = reconstruction_loss(
            TinyVideoDecoder(taehv, seed=FAST.seed + 1)(TinyVideoEncoder(taehv, seed=FAST.seed)(x)),
            x,
        )
        encoder, decoder = load_autoencoder(out)
        after = reconstruction_loss(decoder(encoder(x)), x)
    assert float(after) < 0.8 * float(before), f"{before=} {after=}"


def test_same_seed_same_weights(trained: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    out, metrics = trained
    again = train(TrainConfig(**{**FAST.__dict__, "out": tmp_path}))
    assert again["loss_curve"] == metrics["loss_curve"]
    for name in ("encoder.safetensors", "decoder.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(tmp_path / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_saved_weights_round_trip(trained: tuple[Path, dict[str, object]]) -> None:
    out, metrics = trained
    sidecar = json.loads((out / "train.json").read_text())
    assert sidecar["config"]["steps"] == FAST.steps
    assert sidecar["loss_final"] == metrics["loss_final"]
    assert {"cpu", "torch", "threads"} <= sidecar["hardware"].keys() and sidecar["wall_s"] > 0
    # Fresh modules with other seeds: every weight must come from the files.
    encoder, decoder = load_autoencoder(out)
    again_enc, again_dec = load_autoencoder(out)
    assert TinyVideoEncoder(TAEHVConfig.tiny(), seed=5).state_dict().keys() == (
        encoder.state_dict().keys()
    )
    x = heldout_clips([21], frames=8, size=32)
    with torch.inference_mode():
        assert torch.equal(decoder(encoder(x)), again_dec(again_enc(x)))
    assert evaluate_autoencoder(encoder, decoder, frames=8, size=32) == {
        k: metrics[k] for k in ("psnr_batch", "psnr_stream", "stream_max_abs_diff")
    }


def test_trained_stream_equals_batch(trained: tuple[Path, dict[str, object]]) -> None:
    encoder, decoder = load_autoencoder(trained[0])
    x = heldout_clips([31, 32], frames=16, size=32)
    with torch.inference_mode():
        z = encoder(x)
        batch = decoder.decode(z)
        decoder.reset()
        stream = torch.cat([decoder.push(z[:, :1]), decoder.push(z[:, 1:]), decoder.flush()], 1)
    torch.testing.assert_close(stream, batch, atol=1e-5, rtol=0)
    m = evaluate_autoencoder(encoder, decoder, seeds=[31, 32], frames=16, size=32)
    assert m["stream_max_abs_diff"] < 1e-5
    assert np.isclose(m["psnr_batch"], m["psnr_stream"], atol=1e-3)


def test_cli_train_decoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "decoder", "--out", str(tmp_path), "--steps", "4", "--batch", "1"]
    argv += ["--size", "16", "--crop", "0", "--frames", "4", "--log-every", "2"]
    argv += ["--eval-frames", "4"]
    assert main(argv) == 0
    assert "step 4/4" in capsys.readouterr().err
    assert (tmp_path / "decoder.safetensors").is_file()
    assert json.loads((tmp_path / "train.json").read_text())["config"]["steps"] == 4
