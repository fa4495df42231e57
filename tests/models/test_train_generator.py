"""Generator training plumbing: the clip sampler, a short seeded run, and bundling its weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import fake_latent_set

from models.embedded import load_bundle
from models.resolve import ModelOptions, build_stream, resolve
from models.train.autoencoder import TrainConfig, train_autoencoder
from models.train.bundle import write_bundle
from models.train.generator import ClipSampler, GeneratorTrainConfig, train_generator


def test_sampler_is_seeded_and_masks_spliced_frames(tmp_path: Path) -> None:
    fake_latent_set(tmp_path / "lat.pt")
    data = torch.load(tmp_path / "lat.pt", weights_only=False)
    config = GeneratorTrainConfig(data=tmp_path / "lat.pt", batch=64, switch=0.5, sink_gap=0.25)
    a, b = ClipSampler(data, config)(), ClipSampler(data, config)()
    assert torch.equal(a.latents, b.latents) and torch.equal(a.loss_mask, b.loss_mask)
    assert a.latents.shape == (64, 6, 16, 4, 4)
    spliced = a.loss_mask[:, 0] == 0
    assert 0 < int(spliced.sum()) < 64  # some clips splice two scenes, the rest do not
    # the masked frames are a prefix: once a frame is trained, all later ones are
    assert bool((a.loss_mask[:, 1:] >= a.loss_mask[:, :-1]).all())
    # latents are normalised with the set's statistics
    raw = (data["latents"].float() - 0.5) / 2.0
    assert abs(float(raw.mean()) - float(ClipSampler(data, config).latents.mean())) < 1e-6


def test_short_run_learns_and_bundles_into_a_stream(tmp_path: Path) -> None:
    fake_latent_set(tmp_path / "lat.pt")
    config = GeneratorTrainConfig(
        data=tmp_path / "lat.pt",
        preset="nano",
        steps=30,
        batch=4,
        log_every=10,
        lr=3e-3,
        out=tmp_path / "gen",
    )
    metrics = train_generator(config)
    assert metrics["loss_final"] < metrics["loss_start"]
    ae = train_autoencoder(
        TrainConfig(steps=1, batch=1, size=32, crop=None, eval_frames=0, out=tmp_path / "ae")
    )
    assert ae["loss_final"] > 0
    meta = write_bundle(tmp_path / "ae", tmp_path / "gen", tmp_path / "bundle")
    assert meta["defaults"]["window"] == 6 - 1 - 1 and meta["defaults"]["height"] == 32
    assert resolve(ModelOptions(model=str(tmp_path / "bundle"))).stream.schedule.sampler == "euler"
    # a bundle carries the step rule measured for its generator, and streams with it
    write_bundle(tmp_path / "ae", tmp_path / "gen", tmp_path / "renoise", sampler="renoise")
    chosen = resolve(ModelOptions(model=str(tmp_path / "renoise"))).stream.schedule
    assert chosen.sampler == "renoise"
    with pytest.raises(ValueError, match="sampler must be one of"):
        write_bundle(tmp_path / "ae", tmp_path / "gen", tmp_path / "bad", sampler="ddim")  # type: ignore[arg-type]
    bundle = load_bundle(tmp_path / "bundle")
    trained = bundle.generator()
    assert trained.config.dim == 64
    # the bundle's generator is the EMA copy, bit for bit
    from safetensors.torch import load_file

    ema = load_file(str(tmp_path / "gen" / "generator_ema.safetensors"))
    for k, v in trained.state_dict().items():
        assert torch.equal(v, ema[k]), k
    stream = build_stream(ModelOptions(model=str(bundle.path)))
    stream.start("a red circle")
    frames = list(stream.frames(max_frames=8))
    stream.close()
    assert len(frames) == 8 and frames[0].data.shape == (32, 32, 3)
    assert np.ptp(np.stack([f.data for f in frames])) > 0


def test_frame_zero_trains_only_at_stream_starts(tmp_path: Path) -> None:
    """A window's first frame is trained only when it is its clip's world frame 0."""
    fake_latent_set(tmp_path / "lat.pt")
    data = torch.load(tmp_path / "lat.pt", weights_only=False)
    data["starts"] = torch.tensor([0, 0, 0, 40, 80, 120])
    config = GeneratorTrainConfig(
        data=tmp_path / "lat.pt", batch=256, switch=0.0, sink_gap=0.0, head=0.5
    )
    sampler = ClipSampler(data, config)
    batch = sampler()
    # every window's frame 0 is some clip's frame at an offset; find which
    firsts = batch.latents[:, 0]
    at_start = torch.stack([(firsts == sampler.latents[i, 0]).flatten(1).all(1) for i in range(6)])
    head_start = at_start[:3].any(0)  # frame 0 of a clip that starts the world
    assert bool((batch.loss_mask[:, 0] == head_start.float()).all())
    # head clips start at offset 0 about half the time (head=0.5), plus chance hits
    assert 0.2 < float(head_start.float().mean()) < 0.6
    assert bool((batch.loss_mask[:, 1:] == 1).all())


def test_foreground_weights_mark_the_object_not_the_background() -> None:
    from models.train.generator import foreground_weights

    x0 = torch.zeros(1, 2, 16, 8, 8)
    x0[:, :, :, 2:4, 5:7] = 2.0  # a 2x2 "object" far from the background latent
    w = foreground_weights(x0, 4.0)
    assert w.shape == (1, 2, 8, 8)
    assert bool((w[:, :, 2:4, 5:7] == 5.0).all())
    assert float(w.sum()) == 2 * (64 + 4 * 4)  # only the object's 4 pixels per frame


def test_text_dropout_zeroes_word_pieces_but_keeps_the_special_tokens() -> None:
    from models.train.generator import _drop_words

    embed = torch.zeros(8, 4)
    embed[:5] = torch.arange(1, 6, dtype=torch.float32)[:, None]  # [CLS] w w w [SEP], 3 pads
    rng = np.random.default_rng(0)
    assert torch.equal(_drop_words(embed, 0.0, rng), embed)
    dropped = _drop_words(embed, 1.0, rng)
    assert dropped[0].abs().sum() > 0 and dropped[4].abs().sum() > 0  # [CLS], [SEP] kept
    assert dropped[1:4].abs().sum() == 0 and dropped[5:].abs().sum() == 0
    assert embed[1].abs().sum() > 0  # the latent set's own tensor is untouched
    some = [int((_drop_words(embed, 0.5, rng)[1:4].abs().sum(-1) == 0).sum()) for _ in range(200)]
    assert 0.4 < sum(some) / (3 * 200) < 0.6
    with pytest.raises(ValueError, match="text_dropout"):
        GeneratorTrainConfig(text_dropout=1.5)
