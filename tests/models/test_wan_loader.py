"""Checkpoint loading for the causal Wan DiT: public layouts, strict key errors, sizes.

No network and no mocks: checkpoints are written to tmp_path from seeded nano/tiny
models; the full-size presets are only ever built on the meta device.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from models.wan.config import PRESETS, WanConfig
from models.wan.loader import (
    CheckpointError,
    build_model,
    compare_keys,
    count_parameters,
    load_state_dict_file,
)
from models.wan.model import CausalWanModel

NANO = PRESETS["nano"]


def _source_model(seed: int) -> CausalWanModel:
    """Seeded random nano model whose every parameter is distinct from its default.

    init_weights leaves biases at 0 and norm weights at 1; a loader that silently skipped
    those keys would still look right, so every tensor gets seeded noise on top."""
    model = build_model(NANO, seed=seed)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _state_dict(model: CausalWanModel) -> dict[str, Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _inputs(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, NANO.in_dim, 4, 6, generator=g)
    t = torch.tensor([[900.0, 900.0, 400.0, 400.0]])
    ctx = torch.randn(1, 5, NANO.text_dim, generator=g)
    return x, t, ctx


def _forward(model: CausalWanModel) -> Tensor:
    x, t, ctx = _inputs()
    with torch.no_grad():
        return model(x, t, ctx, block_frames=2)


def _assert_identical(loaded: CausalWanModel, source: CausalWanModel) -> None:
    src = dict(source.named_parameters())
    got = dict(loaded.named_parameters())
    assert sorted(got) == sorted(src)
    for name, p in src.items():
        q = got[name]
        assert q.device.type == "cpu", name
        assert q.dtype == p.dtype, name
        assert q.shape == p.shape, name
        assert torch.equal(q, p), f"{name} differs after loading"
    assert torch.equal(_forward(loaded), _forward(source))


@pytest.fixture(scope="module")
def source() -> CausalWanModel:
    return _source_model(seed=1)


@pytest.fixture(scope="module")
def source_ema() -> CausalWanModel:
    return _source_model(seed=2)


# ---------------------------------------------------------------- round trips


def test_sources_are_distinct(source: CausalWanModel, source_ema: CausalWanModel) -> None:
    # Guards the EMA test: the two sources must be told apart by every parameter.
    for (name, a), b in zip(source.named_parameters(), source_ema.parameters(), strict=True):
        assert not torch.equal(a, b), name
    assert not torch.allclose(_forward(source), _forward(source_ema))


def test_generator_wrapper_with_model_prefix(tmp_path: Path, source: CausalWanModel) -> None:
    """Self-Forcing / CausVid: {"generator": {"model.<key>": tensor}}."""
    path = tmp_path / "self_forcing.pt"
    torch.save({"generator": {"model." + k: v for k, v in _state_dict(source).items()}}, path)
    _assert_identical(build_model(NANO, checkpoint=path), source)


@pytest.mark.parametrize("use_ema", [False, True])
def test_generator_and_ema(
    tmp_path: Path, source: CausalWanModel, source_ema: CausalWanModel, use_ema: bool
) -> None:
    """LongLive / Self-Forcing with EMA: both entries present, use_ema picks one."""
    path = tmp_path / "with_ema.pt"
    torch.save(
        {
            "generator": {"model." + k: v for k, v in _state_dict(source).items()},
            "generator_ema": {"model." + k: v for k, v in _state_dict(source_ema).items()},
            "step": torch.tensor(1234),
        },
        path,
    )
    loaded = build_model(NANO, checkpoint=path, use_ema=use_ema)
    _assert_identical(loaded, source_ema if use_ema else source)


def _with_infixes(key: str, i: int) -> str:
    """model.X.Y -> model._fsdp_wrapped_module.X._orig_mod.Y (varying per key)."""
    parts = key.split(".")
    infix = ("_fsdp_wrapped_module", "_orig_mod", "_checkpoint_wrapped_module")[i % 3]
    cut = 1 + i % len(parts)
    return ".".join(["_orig_mod", "model", *parts[: cut - 1], infix, *parts[cut - 1 :]])


def test_fsdp_and_compile_infixes(tmp_path: Path, source: CausalWanModel) -> None:
    sd = {_with_infixes(k, i): v for i, (k, v) in enumerate(_state_dict(source).items())}
    assert any("_fsdp_wrapped_module." in k for k in sd)
    assert all("_orig_mod." in k for k in sd)
    path = tmp_path / "fsdp.pt"
    torch.save({"generator": sd}, path)
    _assert_identical(build_model(NANO, checkpoint=path), source)


def test_bare_safetensors(tmp_path: Path, source: CausalWanModel) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_state_dict(source), str(path))
    _assert_identical(build_model(NANO, checkpoint=path), source)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_bare_torch_state_dict(tmp_path: Path, source: CausalWanModel, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    torch.save(_state_dict(source), path)
    _assert_identical(build_model(NANO, checkpoint=path), source)


def test_bfloat16_checkpoint_is_cast_to_requested_dtype(
    tmp_path: Path, source: CausalWanModel
) -> None:
    path = tmp_path / "bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in _state_dict(source).items()}, str(path))
    loaded = build_model(NANO, checkpoint=path, dtype=torch.float32)
    for name, p in source.named_parameters():
        q = loaded.get_parameter(name)
        assert q.dtype == torch.float32, name
        assert torch.equal(q, p.to(torch.bfloat16).float()), name


def test_checkpoint_model_runs_forward_as_built(tmp_path: Path, source: CausalWanModel) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_state_dict(source), str(path))
    loaded = build_model(NANO, checkpoint=path)
    assert torch.equal(_forward(loaded), _forward(source))


def test_ema_requested_but_absent_is_an_error(tmp_path: Path, source: CausalWanModel) -> None:
    path = tmp_path / "no_ema.pt"
    torch.save({"generator": {"model." + k: v for k, v in _state_dict(source).items()}}, path)
    with pytest.raises(CheckpointError, match="generator_ema"):
        build_model(NANO, checkpoint=path, use_ema=True)


def test_ema_only_checkpoint_loads_its_ema(tmp_path: Path, source: CausalWanModel) -> None:
    path = tmp_path / "ema_only.pt"
    torch.save({"generator_ema": {"model." + k: v for k, v in _state_dict(source).items()}}, path)
    _assert_identical(build_model(NANO, checkpoint=path), source)


def test_nested_wrapper_prefixes_are_stripped(tmp_path: Path, source: CausalWanModel) -> None:
    path = tmp_path / "ddp.pt"
    torch.save({"module.model." + k: v for k, v in _state_dict(source).items()}, path)
    _assert_identical(build_model(NANO, checkpoint=path), source)


def test_loaded_model_is_inference_ready(tmp_path: Path, source: CausalWanModel) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_state_dict(source), str(path))
    loaded = build_model(NANO, checkpoint=path)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert not any(p.is_meta for p in loaded.parameters())


# ---------------------------------------------------------------- key errors


def test_missing_and_unexpected_keys_are_named(tmp_path: Path, source: CausalWanModel) -> None:
    sd = _state_dict(source)
    del sd["blocks.0.self_attn.q.weight"]
    sd["blocks.0.bogus.weight"] = torch.zeros(3)
    path = tmp_path / "wrong_keys.pt"
    torch.save({"generator": {"model." + k: v for k, v in sd.items()}}, path)

    with pytest.raises(CheckpointError) as info:
        build_model(NANO, checkpoint=path)
    msg = str(info.value)
    assert "blocks.0.self_attn.q.weight" in msg
    assert "blocks.0.bogus.weight" in msg
    # Each name sits in its own category, in the order missing..., unexpected...
    missing_at, unexpected_at = msg.index("missing keys"), msg.index("unexpected keys")
    assert missing_at < msg.index("blocks.0.self_attn.q.weight") < unexpected_at
    assert unexpected_at < msg.index("blocks.0.bogus.weight")
    assert str(path) in msg

    with torch.device("meta"):
        model = CausalWanModel(NANO)
    report = compare_keys(model, load_state_dict_file(path))
    assert report.missing == ["blocks.0.self_attn.q.weight"]
    assert report.unexpected == ["blocks.0.bogus.weight"]
    assert report.mismatched == []
    assert not report.ok


def test_shape_mismatch_names_key_and_both_shapes(tmp_path: Path) -> None:
    tiny = build_model(PRESETS["tiny"], seed=3)
    path = tmp_path / "tiny.safetensors"
    save_file(_state_dict(tiny), str(path))

    with pytest.raises(CheckpointError) as info:
        build_model(NANO, checkpoint=path)
    msg = str(info.value)
    with torch.device("meta"):
        model = CausalWanModel(NANO)
    report = compare_keys(model, load_state_dict_file(path))
    # tiny has 4 layers, nano 2: the extra layers are unexpected keys, named in the error.
    assert report.missing == []
    assert {k.split(".")[1] for k in report.unexpected} == {"2", "3"}
    assert report.unexpected[0] in msg
    # The first mismatched key (sorted) is shown with the checkpoint and the model shape.
    key, ckpt_shape, model_shape = report.mismatched[0]
    assert ckpt_shape != model_shape
    assert key in msg
    assert str(list(ckpt_shape)) in msg and str(list(model_shape)) in msg
    first = re.search(re.escape(key) + r" \(checkpoint (\[[\d, ]+\]) vs model (\[[\d, ]+\])\)", msg)
    assert first is not None, msg
    assert first.group(1) == str(list(ckpt_shape))
    assert first.group(2) == str(list(model_shape))


def test_single_shape_mismatch_is_reported_exactly(tmp_path: Path, source: CausalWanModel) -> None:
    sd = _state_dict(source)
    sd["head.head.weight"] = torch.zeros(32, NANO.dim)
    path = tmp_path / "bad_head.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as info:
        build_model(NANO, checkpoint=path)
    msg = str(info.value)
    assert f"head.head.weight (checkpoint [32, {NANO.dim}] vs model [64, {NANO.dim}])" in msg
    assert "missing keys" not in msg and "unexpected keys" not in msg


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(CheckpointError) as info:
        build_model(NANO, checkpoint=path)
    assert str(path) in str(info.value)


def test_checkpoint_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    torch.save({"optimizer": {"lr": torch.tensor(1.0)}, "step": torch.tensor(3)}, path)
    with pytest.raises(CheckpointError):
        build_model(NANO, checkpoint=path)


def test_image_to_video_checkpoint_gets_a_hint(tmp_path: Path, source: CausalWanModel) -> None:
    sd = _state_dict(source)
    sd["img_emb.proj.0.weight"] = torch.zeros(4)
    sd["blocks.0.cross_attn.k_img.weight"] = torch.zeros(4)
    path = tmp_path / "i2v.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="image-to-video"):
        build_model(NANO, checkpoint=path)


# ---------------------------------------------------------------- sizes


def _hand_count(c: WanConfig) -> int:
    """Parameter count of the public WanModel (t2v) from its config, written out by hand."""
    d, f = c.dim, c.ffn_dim
    patch = math.prod(c.patch_size)
    linear = lambda i, o: i * o + o  # noqa: E731
    patch_embed = c.in_dim * patch * d + d
    text = linear(c.text_dim, d) + linear(d, d)
    time = linear(c.freq_dim, d) + linear(d, d)
    time_proj = linear(d, 6 * d)
    qk_norm = 2 * d if c.qk_norm else 0
    attn = 4 * linear(d, d) + qk_norm
    norm3 = 2 * d if c.cross_attn_norm else 0
    ffn = linear(d, f) + linear(f, d)
    block = 2 * attn + norm3 + ffn + 6 * d
    head = linear(d, c.out_dim * patch) + 2 * d
    # ours only: the pooled prompt's projection into the modulation
    prompt = linear(c.text_dim, d) + linear(d, d) if c.prompt_modulation else 0
    return patch_embed + text + time + time_proj + c.num_layers * block + head + prompt


def test_wan_1_3b_parameter_count() -> None:
    config = PRESETS["wan2.1-1.3b"]
    assert _hand_count(config) == 1_418_996_800  # published Wan2.1-T2V-1.3B count
    assert count_parameters(config) == 1_418_996_800


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameter_count_matches_hand_formula(name: str) -> None:
    assert count_parameters(PRESETS[name]) == _hand_count(PRESETS[name])


@pytest.fixture(scope="module")
def meta_1_3b() -> CausalWanModel:
    with torch.device("meta"):
        return CausalWanModel(PRESETS["wan2.1-1.3b"])


def test_meta_model_allocates_nothing(meta_1_3b: CausalWanModel) -> None:
    tensors = [*meta_1_3b.parameters(), *meta_1_3b.buffers()]
    assert tensors
    assert all(t.is_meta for t in tensors)
    assert all(t.device == torch.device("meta") for t in tensors)


PUBLIC_SHAPES = {
    "patch_embedding.weight": (1536, 16, 1, 2, 2),
    "patch_embedding.bias": (1536,),
    "text_embedding.0.weight": (1536, 4096),
    "text_embedding.2.weight": (1536, 1536),
    "time_embedding.0.weight": (1536, 256),
    "time_projection.1.weight": (9216, 1536),
    "time_projection.1.bias": (9216,),
    "blocks.0.modulation": (1, 6, 1536),
    "blocks.0.self_attn.q.weight": (1536, 1536),
    "blocks.0.self_attn.norm_q.weight": (1536,),
    "blocks.0.self_attn.norm_k.weight": (1536,),
    "blocks.0.norm3.weight": (1536,),
    "blocks.0.norm3.bias": (1536,),
    "blocks.0.cross_attn.norm_k.weight": (1536,),
    "blocks.0.ffn.0.weight": (8960, 1536),
    "blocks.0.ffn.2.weight": (1536, 8960),
    "blocks.29.ffn.2.bias": (1536,),
    "head.modulation": (1, 2, 1536),
    "head.head.weight": (64, 1536),
    "head.head.bias": (64,),
}


def test_public_1_3b_shapes(meta_1_3b: CausalWanModel) -> None:
    sd = meta_1_3b.state_dict()
    for key, shape in PUBLIC_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert "blocks.30.modulation" not in sd
    # 30 blocks x 27 tensors + 12 stem tensors + 3 head tensors, no buffers.
    assert len(sd) == 30 * 27 + 12 + 3


def test_affine_free_norms_have_no_parameters(meta_1_3b: CausalWanModel) -> None:
    for block in meta_1_3b.blocks:
        assert list(block.norm1.parameters()) == []
        assert list(block.norm2.parameters()) == []
    assert list(meta_1_3b.head.norm.parameters()) == []
    names = set(meta_1_3b.state_dict())
    assert not any(re.search(r"\.norm[12]\.|^head\.norm\.", k) for k in names)
