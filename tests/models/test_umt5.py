"""UMT5 text encoder against Wan2.1's own T5Encoder / tokenizer (tiny fixture, CPU, float32).

The fixture (tests/fixtures/reference/umt5_tiny) was written by make_umt5.py beside it from
Wan-Video/Wan2.1 wan/modules/t5.py and tokenizers.py at commit 9737cba.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from engine.protocols import PromptEncoder
from models.umt5 import (
    UMT5_PRESETS,
    WAN_WEIGHTS_FILE,
    Offload,
    UMT5CheckpointError,
    UMT5PromptEncoder,
    UMT5Tokenizer,
    build_umt5,
    clean_prompt,
    load_umt5,
    model_forward,
    umt5_size,
)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "reference" / "umt5_tiny"
WAN = FIXTURE / "wan_encoder.safetensors"
HF = FIXTURE / "hf"
TOKENIZER = FIXTURE / "tokenizer"
TINY = UMT5_PRESETS["tiny"]
TOL = 1e-4  # float32 parity bound (measured: 0 with eager attention, ~1e-6 with sdpa)


@pytest.fixture(scope="module")
def case() -> dict:
    return json.loads((FIXTURE / "case.json").read_text())


@pytest.fixture(scope="module")
def expected() -> dict[str, Tensor]:
    return load_file(str(FIXTURE / "expected.safetensors"))


def run(weights: Path, expected: dict[str, Tensor], **kw: object) -> Tensor:
    model = load_umt5(weights, TINY, **kw)  # type: ignore[arg-type]
    with torch.inference_mode():
        return model_forward(model, expected["ids"], expected["mask"]).float()


def test_fixture_matches_tiny_preset(case: dict) -> None:
    c = case["config"]
    assert (c["vocab_size"], c["dim"], c["dim_ffn"]) == (TINY.vocab_size, TINY.dim, TINY.ffn_dim)
    assert (c["num_heads"], c["num_layers"]) == (TINY.n_heads, TINY.n_layers)
    assert (c["dim_attn"], c["num_buckets"]) == (TINY.attn_dim, TINY.num_buckets)
    assert case["text_len"] == TINY.text_len


def test_cleaning_as_wan(case: dict) -> None:
    assert [clean_prompt(p) for p in case["prompts"]] == case["cleaned"]
    assert clean_prompt(" a\u3000b\n\tc&amp;amp;d  ") == "a b c&d"
    regex = pytest.importorskip("regex")  # what Wan's whitespace_clean uses for \s
    from models.umt5 import _WHITESPACE

    chars = [chr(i) for i in range(0x3001)]  # every White_Space code point is <= U+3000
    assert [c for c in chars if _WHITESPACE.fullmatch(c)] == [
        c for c in chars if regex.fullmatch(r"\s", c)
    ]


def test_tokenizer_padding_truncation_mask(case: dict, expected: dict[str, Tensor]) -> None:
    tok = UMT5Tokenizer(TOKENIZER, text_len=TINY.text_len)
    ids, mask = tok(case["prompts"])
    assert torch.equal(ids, expected["ids"]) and torch.equal(mask, expected["mask"])
    assert ids.dtype == mask.dtype == torch.long
    lens = mask.sum(1)
    assert lens.tolist() == expected["lens"].tolist() == [4, 13, 16]  # the last one truncated
    for row, n in zip(ids, lens.tolist(), strict=True):
        assert row[n - 1] == 1  # </s> ends every prompt, a truncated one too
        assert (row[n:] == tok.pad_id).all() and tok.pad_id == 0
    # Wan's length: 512, whatever the prompt.
    ids, mask = UMT5Tokenizer(TOKENIZER)(["a red fox", "a red fox " * 300])
    assert ids.shape == mask.shape == (2, 512)
    assert mask.sum(1).tolist() == [4, 512] and ids[1, -1] == 1


@pytest.mark.parametrize("weights", [WAN, HF], ids=["wan-layout", "hf-layout-sharded"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_parity_float32(weights: Path, attn: str, expected: dict[str, Tensor]) -> None:
    out = run(weights, expected, dtype=torch.float32, attn_implementation=attn)
    err = float((out - expected["out"]).abs().max())
    assert err <= TOL, f"max abs error {err:.3g} vs the Wan reference"


def test_hf_layout_skips_the_decoder(tmp_path: Path, expected: dict[str, Tensor]) -> None:
    index = json.loads((HF / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    assert any(k.startswith("decoder.") for k in weight_map) and "lm_head.weight" in weight_map
    encoder_shards = {f for k, f in weight_map.items() if k.startswith("encoder.")}
    assert len(encoder_shards) == 2  # the parity test reads both shards
    # A shard holding only decoder weights is never opened: here it does not even exist.
    for k in weight_map:
        if k.startswith(("decoder.", "lm_head.")):
            weight_map[k] = "decoder-only.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for f in encoder_shards:
        (tmp_path / f).symlink_to(HF / f)
    assert (
        float((run(tmp_path, expected, dtype=torch.float32) - expected["out"]).abs().max()) <= TOL
    )


def test_mask_matters(expected: dict[str, Tensor]) -> None:
    model = load_umt5(WAN, TINY, dtype=torch.float32)
    with torch.inference_mode():
        ones = model_forward(model, expected["ids"], torch.ones_like(expected["mask"]))
    assert float((ones - expected["out_nomask"]).abs().max()) <= TOL
    short = slice(0, 4)  # the first prompt's real rows: 4 tokens, 12 pads
    assert float((ones[0, short] - expected["out"][0, short]).abs().max()) > 1e-2


def test_parity_bfloat16(expected: dict[str, Tensor]) -> None:
    # Wan runs UMT5 in bfloat16; eager attention matches it to the bit on this CPU, allow 1 ulp.
    out = run(WAN, expected, dtype=torch.bfloat16)
    err = float((out - expected["out_bf16"]).abs().max())
    assert err <= 2**-6, f"{err=}"  # one bf16 ulp at |x| in [2, 4); outputs reach ~3.1


def test_position_buckets_match_wan_at_xxl(expected: dict[str, Tensor]) -> None:
    model: Any = build_umt5(UMT5_PRESETS["xxl"])
    attn = model.encoder.block[0].layer[0].SelfAttention
    buckets = attn._relative_position_bucket(torch.arange(-511, 512))  # key - query
    assert torch.equal(buckets, expected["buckets"])


def test_prompt_encoder(case: dict, expected: dict[str, Tensor]) -> None:
    enc = UMT5PromptEncoder(WAN, TOKENIZER, config=TINY)
    assert isinstance(enc, PromptEncoder) and enc.text_dim == TINY.dim
    for i, prompt in enumerate(case["prompts"]):
        n = int(expected["lens"][i])
        out = enc.encode(prompt)
        assert out.shape == (n, TINY.dim) and out.dtype == torch.float32, f"{out.shape=}"
        assert not out.is_inference() and not out.requires_grad
        assert float((out - expected["out"][i, :n]).abs().max()) <= TOL
    padded, lens = enc.encode_batch(case["prompts"])
    assert padded.shape == (3, TINY.text_len, TINY.dim) and lens.tolist() == [4, 13, 16]
    zeroed = expected["out"] * expected["mask"][..., None]  # Self-Forcing's prompt_embeds
    assert float((padded - zeroed).abs().max()) <= TOL
    assert (padded[0, 4:] == 0).all()


@pytest.mark.parametrize("offload", ["cpu", "swap"])
def test_trim_and_offload(offload: Offload, case: dict, expected: dict[str, Tensor]) -> None:
    enc = UMT5PromptEncoder(HF, TOKENIZER, config=TINY, offload=offload, trim_padding=True)
    padded, _ = enc.encode_batch(case["prompts"][:2])  # longest 13 of 16: trimmed
    zeroed = expected["out"][:2] * expected["mask"][:2, :, None]
    assert float((padded - zeroed).abs().max()) <= TOL
    if offload == "swap":  # parameters are back on their host tensors after the encode
        assert enc._host and all(p.data_ptr() == h.data_ptr() for p, h in enc._host)


def test_cache_hit_reuses_tensor(case: dict) -> None:
    enc = UMT5PromptEncoder(WAN, TOKENIZER, config=TINY, cache_size=2)
    calls = []
    enc.load().register_forward_hook(lambda *_: calls.append(1))
    a = enc.encode(case["prompts"][0])
    assert enc.encode(case["prompts"][0]) is a and len(calls) == 1
    enc.encode(case["prompts"][1])
    enc.encode(case["prompts"][2])  # evicts prompts[0], the least recently used
    assert len(calls) == 3
    b = enc.encode(case["prompts"][0])
    assert b is not a and torch.equal(a, b) and len(calls) == 4
    uncached = UMT5PromptEncoder(WAN, TOKENIZER, config=TINY, cache_size=0)
    assert uncached.encode("a red fox") is not uncached.encode("a red fox")


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nope.pth.*{WAN_WEIGHTS_FILE}"):
        UMT5PromptEncoder(tmp_path / "nope.pth", TOKENIZER, config=TINY)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*google/umt5-xxl"):
        UMT5PromptEncoder(WAN, tmp_path, config=TINY)
    with pytest.raises(FileNotFoundError, match="no UMT5 weights"):
        load_umt5(tmp_path, TINY)  # an empty folder


def test_missing_or_wrong_keys_are_named(tmp_path: Path) -> None:
    wan = load_file(str(WAN))
    drop = dict(wan)
    del drop["blocks.1.ffn.fc1.weight"]
    save_file(drop, str(tmp_path / "wan.safetensors"))
    with pytest.raises(UMT5CheckpointError, match=r"missing \[blocks\.1\.ffn\.fc1\.weight\]"):
        load_umt5(tmp_path / "wan.safetensors", TINY)
    with pytest.raises(UMT5CheckpointError, match=r"unexpected \[blocks\.1\.attn\.k\.weight"):
        load_umt5(WAN, replace(TINY, n_layers=1))

    hf = {k: v for k, v in load_file(str(HF / "model-00002-of-00002.safetensors")).items()}
    hf.update(load_file(str(HF / "model-00001-of-00002.safetensors")))
    del hf["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    hf["encoder.final_layer_norm.weight"] = torch.ones(7)
    torch.save(hf, tmp_path / "pytorch_model.bin")
    with pytest.raises(UMT5CheckpointError) as err:
        load_umt5(tmp_path, TINY)
    assert "missing [encoder.block.0.layer.0.SelfAttention.relative_attention_bias" in str(
        err.value
    )
    assert "encoder.final_layer_norm.weight [7] != [32]" in str(err.value)

    save_file({"foo.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UMT5CheckpointError, match="neither Wan's UMT5 layout"):
        load_umt5(tmp_path / "other.safetensors", TINY)


def test_xxl_size_on_meta() -> None:
    # Wan's umt5_xxl (t5.py at 9737cba): vocab 256384, dim 4096, dim_attn 4096, dim_ffn 10240,
    # 64 heads, 24 encoder layers, 32 buckets, shared_pos=False (a bias table per layer).
    vocab, dim, attn, ffn, heads, layers, buckets = 256384, 4096, 4096, 10240, 64, 24, 32
    per_block = 2 * dim + 4 * dim * attn + 3 * dim * ffn + buckets * heads
    reference = vocab * dim + layers * per_block + dim  # embedding, blocks, final norm
    assert reference == 5_680_910_336
    size = umt5_size()
    assert size.params == reference and size.bytes == 2 * reference  # 11.36 GB in bf16
    model = build_umt5(UMT5_PRESETS["xxl"])
    assert all(p.is_meta for p in model.parameters())
    assert model.config.dense_act_fn == "gelu_new" and model.config.is_gated_act  # tanh GELU
    assert model.config.layer_norm_epsilon == 1e-6
