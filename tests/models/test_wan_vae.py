"""The Wan2.1 VAE against the reference (fixture from tests/fixtures/reference/make_wan_vae.py):
whole-clip and streamed decode, encode, the strict loader, the released layout, and bounded
stream memory."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from engine.protocols import StreamingDecoder
from models.decoders.wan_vae import (
    WanVAE,
    WanVAEConfig,
    WanVAEStreamingDecoder,
    check_wan_vae_state_dict,
    load_wan_vae,
)
from models.wan import CheckpointError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "reference" / "wan_vae_tiny.safetensors"
META = json.loads(FIXTURE.with_suffix(".json").read_text())
TOL = 1e-4  # max abs error against the reference, float32
# Parameters of the reference WanVAE_ in the released configuration (_video_vae: dim 96,
# z_dim 16), counted on the meta device by make_wan_vae.py (also in wan_vae_tiny.json).
RELEASE_PARAMETERS = 126_892_531


@pytest.fixture(scope="module")
def ref() -> dict[str, Tensor]:
    return load_file(str(FIXTURE))


@pytest.fixture(scope="module")
def state(ref: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k.removeprefix("state."): v for k, v in ref.items() if k.startswith("state.")}


@pytest.fixture(scope="module")
def vae(state: dict[str, Tensor]) -> WanVAE:
    model = WanVAE(WanVAEConfig.tiny())
    check_wan_vae_state_dict(model, state, source="fixture")
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def _latents(ref: dict[str, Tensor]) -> Tensor:
    return ref["decode.latents"].transpose(1, 2)  # reference [B, z, F, h, w] -> [B, F, z, h, w]


def _video(ref: dict[str, Tensor]) -> Tensor:
    return ref["decode.video"].transpose(1, 2)  # [B, T, 3, H, W], the VAE's scale


def _err(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_tiny_preset_is_the_fixture_config() -> None:
    c, r = WanVAEConfig.tiny(), META["config"]
    assert (c.dim, c.z_dim, list(c.dim_mult), c.num_res_blocks) == (
        r["dim"],
        r["z_dim"],
        r["dim_mult"],
        r["num_res_blocks"],
    )
    assert list(c.attn_scales) == r["attn_scales"]
    assert list(c.temporal_downsample) == r["temperal_downsample"]
    assert list(c.latent_mean) == META["latent_mean"] and list(c.latent_std) == META["latent_std"]
    assert list(WanVAEConfig.wan2_1().latent_mean) == META["latent_mean"]


@pytest.mark.parametrize("per_step", [None, 1, 3], ids=["one-pass", "per-latent", "by-3"])
def test_decode_matches_reference(
    vae: WanVAE, ref: dict[str, Tensor], per_step: int | None
) -> None:
    z = _latents(ref)
    with torch.inference_mode():
        out = vae.decode(z, latents_per_step=per_step)
    assert out.shape[1] == 1 + 4 * (z.shape[1] - 1)
    assert _err(out, _video(ref)) <= TOL


@pytest.mark.parametrize(
    "chunks", [[1, 1, 1, 1], [1, 2, 1], [3, 1], [4]], ids=["ones", "1+2+1", "3+1", "whole"]
)
def test_streamed_decode_matches_reference(
    vae: WanVAE, ref: dict[str, Tensor], chunks: list[int]
) -> None:
    z = _latents(ref)
    dec = WanVAEStreamingDecoder(vae)
    dec.reset()
    out, t = [], 0
    for n in chunks:
        rgb = dec.push(z[:, t : t + n])
        assert rgb.shape[1] == (1 + 4 * (n - 1) if t == 0 else 4 * n)
        assert rgb.dtype == torch.float32
        out.append(rgb)
        t += n
    out.append(dec.flush())
    want = _video(ref).clamp(-1, 1) * 0.5 + 0.5  # the reference wrapper + Self-Forcing
    assert _err(torch.cat(out, dim=1), want) <= TOL


@pytest.mark.parametrize("per_step", [None, 1, 2], ids=["one-pass", "per-latent", "by-2"])
def test_encode_matches_reference(
    vae: WanVAE, ref: dict[str, Tensor], per_step: int | None
) -> None:
    with torch.inference_mode():
        mu = vae.encode(ref["encode.video"].transpose(1, 2), latents_per_step=per_step)
    assert _err(mu, ref["encode.mu"].transpose(1, 2)) <= TOL


def test_streaming_decoder_protocol_reset_and_memory(vae: WanVAE, ref: dict[str, Tensor]) -> None:
    dec = WanVAEStreamingDecoder(vae)
    assert isinstance(dec, StreamingDecoder)
    assert (dec.frames_per_latent, dec.upscale) == (4, 8)
    z = _latents(ref)
    b, _, _, h, w = z.shape
    first = dec.push(z[:, :1])
    sizes = []
    for i in range(1, 10):
        dec.push(z[:, i % 4 : i % 4 + 1])
        if i in (2, 9):
            sizes.append(dec.memory_bytes())  # after 3 and after 10 pushes
    assert sizes[0] == sizes[1] > 0
    assert dec.flush().shape == (b, 0, 3, 8 * h, 8 * w)
    with pytest.raises(ValueError, match="mid-stream"):
        dec.push(z[:1, :1])
    dec.reset()
    assert dec.memory_bytes() == sizes[0]  # reset keeps the buffers
    assert torch.equal(dec.push(z[:, :1]), first)  # ... and is a fresh stream
    dec.reset()
    assert dec.push(z[:1, :1]).shape == (1, 1, 3, 8 * h, 8 * w)  # new shape after reset


def _drop(sd: dict[str, Tensor], key: str) -> dict[str, Tensor]:
    return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize("fault", ["missing", "unexpected", "shape"])
def test_strict_loader_names_bad_keys(state: dict[str, Tensor], tmp_path: Path, fault: str) -> None:
    key = "decoder.middle.1.to_qkv.weight"
    if fault == "missing":
        sd = _drop(state, key)
    elif fault == "unexpected":
        sd, key = {**state, "decoder.extra.weight": torch.zeros(1)}, "decoder.extra.weight"
    else:
        sd = {**state, key: state[key][:, :-1].contiguous()}
    path = tmp_path / "vae.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=fault if fault != "shape" else "wrong shapes") as e:
        load_wan_vae(path, config=WanVAEConfig.tiny())
    assert key in str(e.value) and "Wan2.1_VAE.pth" in str(e.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_wan_vae_files(
    state: dict[str, Tensor], ref: dict[str, Tensor], tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"vae{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    vae = load_wan_vae(path, config=WanVAEConfig.tiny())
    assert not vae.training and all(not p.is_meta for p in vae.parameters())
    with torch.inference_mode():
        assert _err(vae.decode(_latents(ref)), _video(ref)) <= TOL
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_wan_vae(path)  # the released config does not fit tiny weights


def test_release_layout_matches_reference() -> None:
    with torch.device("meta"):
        vae = WanVAE(WanVAEConfig.wan2_1())
    layout = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert layout == META["release_layout"]
    assert sum(p.numel() for p in vae.parameters()) == RELEASE_PARAMETERS
    assert META["release_parameters"] == RELEASE_PARAMETERS
    scales = tuple(META["tiny_attn_config"]["attn_scales"])
    with torch.device("meta"):
        attn = WanVAE(replace(WanVAEConfig.tiny(), attn_scales=scales))
    assert {k: list(v.shape) for k, v in attn.state_dict().items()} == META["tiny_attn_layout"]


def test_bfloat16_runs(vae: WanVAE, ref: dict[str, Tensor]) -> None:
    """Computation in the model's dtype (bf16 for GPUs); output is still float32 in [0, 1]."""
    low = WanVAE(vae.config)
    low.load_state_dict(vae.state_dict())
    low = low.to(torch.bfloat16).eval()
    dec = WanVAEStreamingDecoder(low)
    z = _latents(ref)
    out = torch.cat([dec.push(z[:, :1]), dec.push(z[:, 1:])], dim=1)
    want = _video(ref).clamp(-1, 1) * 0.5 + 0.5
    assert out.dtype == torch.float32 and out.shape == want.shape
    # bf16 rounding through ~40 random layers: small on average, a few % at worst.
    assert (out - want).abs().mean() < 0.02 and _err(out, want) < 0.25
