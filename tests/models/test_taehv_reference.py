"""The public taew2_1 weights through ``load_taew2_1`` against madebyollin/taehv itself.

tests/fixtures/reference/taehv_w21.safetensors holds the reference's outputs (commit
1f14a56) for deterministic random weights in the taew2_1 layout, made by
tests/fixtures/reference/make_taehv.py. The weights are too big to commit, so they are
regenerated here from the recorded key list with the same rule: one CPU
``torch.Generator`` seeded with 0; for each key in ``sorted()`` order, ``torch.randn(shape)``
(float32); keys of 2 or more dims scaled by ``sqrt(1 / prod(shape[1:]))``, 1-D keys by 0.1;
then 0.5 added to ``decoder.22.bias`` (the RGB head). They are written as a temporary
``taew2_1.pth`` and read back through the public loader.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from models.decoders.taehv import (
    TAEHVConfig,
    TinyVideoDecoder,
    TinyVideoEncoder,
    load_taew2_1,
)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "reference" / "taehv_w21.safetensors"
ATOL = 1e-4  # float32, max abs error against the reference's outputs


def taew2_1_weights(shapes: dict[str, tuple[int, ...]], rule: dict) -> dict[str, Tensor]:
    """The fixture's weights rule (see the module docstring and make_taehv.py)."""
    g = torch.Generator().manual_seed(rule["seed"])
    sd: dict[str, Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        w = torch.randn(shape, generator=g, dtype=torch.float32)
        scale = math.sqrt(1.0 / math.prod(shape[1:])) if len(shape) >= 2 else rule["bias_std"]
        sd[key] = w * scale
    sd[rule["head_bias"]] += rule["head_bias_offset"]
    return sd


@pytest.fixture(scope="module")
def recorded() -> tuple[dict[str, Tensor], dict]:
    with safe_open(str(FIXTURE), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["taehv"])
    return tensors, meta


@pytest.fixture(scope="module")
def weights(recorded: tuple[dict[str, Tensor], dict]) -> dict[str, Tensor]:
    _, meta = recorded
    shapes = {k: tuple(s) for k, s in meta["keys"]}
    sd = taew2_1_weights(shapes, meta["rule"])
    sums = {k: float(v.double().abs().sum()) for k, v in sd.items()}
    for k, want in meta["abs_sums"].items():  # a changed random stream, not a decoder bug
        assert math.isclose(sums[k], want, rel_tol=1e-6), f"weights rule drifted at {k}"
    return {k: sd[k] for k, _ in meta["keys"]}  # the reference's key order


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, weights: dict[str, Tensor]) -> Path:
    path = tmp_path_factory.mktemp("taehv") / "taew2_1.pth"
    torch.save(weights, path)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> tuple[TinyVideoDecoder, TinyVideoEncoder]:
    return load_taew2_1(checkpoint, encoder=True)


def _err(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def test_fixture_is_the_wan2_1_layout(recorded: tuple[dict[str, Tensor], dict]) -> None:
    """The recorded key list is exactly what the wan2_1 preset builds."""
    _, meta = recorded
    cfg = TAEHVConfig.wan2_1()
    with torch.device("meta"):
        ours = {
            f"{half}.{k[len('layers.') :]}": tuple(v.shape)
            for half, m in (("encoder", TinyVideoEncoder(cfg)), ("decoder", TinyVideoDecoder(cfg)))
            for k, v in m.state_dict().items()
        }
    assert ours == {k: tuple(s) for k, s in meta["keys"]}
    assert len(ours) == 128


def test_parallel_decode(
    recorded: tuple[dict[str, Tensor], dict], loaded: tuple[TinyVideoDecoder, TinyVideoEncoder]
) -> None:
    ref, _ = recorded
    dec, _ = loaded
    with torch.no_grad():
        got = dec.decode(ref["latents"])
    assert got.shape == (1, 17, 3, 32, 24)  # 4F - 3 frames: the first 3 are trimmed
    assert _err(got, ref["decode_parallel"]) <= ATOL


@pytest.mark.parametrize(
    "chunks", [[1] * 5, [2, 1, 2], [3, 2], [5]], ids=["ones", "uneven", "three-two", "whole"]
)
def test_streamed_decode(
    recorded: tuple[dict[str, Tensor], dict],
    loaded: tuple[TinyVideoDecoder, TinyVideoEncoder],
    chunks: list[int],
) -> None:
    ref, _ = recorded
    dec, _ = loaded
    z = ref["latents"]
    dec.reset()
    out, t = [], 0
    for n in chunks:
        rgb = dec.push(z[:, t : t + n])
        assert rgb.shape[1] == 4 * n - (3 if t == 0 else 0)
        out.append(rgb)
        t += n
    out.append(dec.flush())
    got = torch.cat(out, dim=1)
    assert _err(got, ref["decode_streamed"]) <= ATOL
    assert _err(got, ref["decode_parallel"]) <= ATOL


def test_encode(
    recorded: tuple[dict[str, Tensor], dict], loaded: tuple[TinyVideoDecoder, TinyVideoEncoder]
) -> None:
    ref, _ = recorded
    _, enc = loaded
    with torch.no_grad():
        got = enc(ref["encode_input"])  # 9 frames, padded at the end with the last one
    assert _err(got, ref["encode_output"]) <= ATOL


def test_safetensors_and_dtype(
    tmp_path: Path, weights: dict[str, Tensor], recorded: tuple[dict[str, Tensor], dict]
) -> None:
    """The safetensors copy loads the same; device and dtype apply to every parameter."""
    ref, _ = recorded
    path = tmp_path / "taew2_1.safetensors"
    save_file({k: v.half() for k, v in weights.items()}, path)  # stored half, loaded double
    dec = load_taew2_1(path, dtype=torch.float64)
    assert {p.dtype for p in dec.parameters()} == {torch.float64}
    assert not dec.training
    with torch.no_grad():
        got = dec.decode(ref["latents"].double())
    assert _err(got.float(), ref["decode_parallel"]) <= 5e-2  # half-rounded weights


def test_wider_time_grow_keeps_last_frame(
    tmp_path: Path, weights: dict[str, Tensor], recorded: tuple[dict[str, Tensor], dict]
) -> None:
    """A stride-1 TGrow stored with 2x its rows loads its last rows, as the reference does."""
    ref, _ = recorded
    sd = dict(weights)
    key = "decoder.7.conv.weight"  # the first decoder stage does not grow time
    sd[key] = torch.cat([torch.randn_like(sd[key]), sd[key]])
    path = tmp_path / "taew2_1.pth"
    torch.save(sd, path)
    dec = load_taew2_1(path)
    with torch.no_grad():
        assert _err(dec.decode(ref["latents"]), ref["decode_parallel"]) <= ATOL


def _broken(weights: dict[str, Tensor], case: str) -> dict[str, Tensor]:
    sd = dict(weights)
    if case == "missing":
        del sd["decoder.14.weight"]
    elif case == "mis-shaped":  # as in a 48-channel (taew2_2) file
        sd["decoder.1.weight"] = torch.zeros(256, 48, 3, 3)
    elif case == "unexpected":
        sd["decoder.23.weight"] = torch.zeros(3)
    elif case == "encoder-missing":  # the whole file is checked, even for a decoder
        del sd["encoder.17.bias"]
    return sd


@pytest.mark.parametrize(
    ("case", "key"),
    [
        ("missing", "decoder.14.weight"),
        ("mis-shaped", "decoder.1.weight"),
        ("unexpected", "decoder.23.weight"),
        ("encoder-missing", "encoder.17.bias"),
    ],
)
def test_layout_errors_name_the_key(
    tmp_path: Path, weights: dict[str, Tensor], case: str, key: str
) -> None:
    path = tmp_path / "taew2_1.pth"
    torch.save(_broken(weights, case), path)
    with pytest.raises(ValueError, match=rf"{case.split('-')[-1]} {key}\b.*") as info:
        load_taew2_1(path)
    assert "taew2_1.pth" in str(info.value) and "madebyollin/taehv" in str(info.value)


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "taew2_1.pth"
    torch.save({"state_dict": {"decoder.1.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="flat state dict"):
        load_taew2_1(path)
