"""The causal Wan DiT against the public Wan code: RoPE, timestep embedding, patch layout,
block-causal attention and per-frame conditioning.

The references below are re-written from the public Wan2.1 code (wan/modules/model.py:
rope_params, rope_apply, sinusoidal_embedding_1d, WanModel.unpatchify) so that a
checkpoint trained with it sees the same numerics here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from engine.cache import CacheConfig
from engine.rope import Rope3D, apply_rope, wan_rope_split
from models.wan.config import PRESETS
from models.wan.loader import build_model
from models.wan.model import CausalWanModel, block_causal_mask, sinusoidal_embedding

NANO = PRESETS["nano"]

# ---------------------------------------------------------------- RoPE reference


def _rope_params(max_seq_len: int, dim: int, theta: float = 10000.0) -> Tensor:
    """Wan's rope_params: [max_seq_len, dim/2] complex128 table."""
    assert dim % 2 == 0
    freqs = torch.outer(
        torch.arange(max_seq_len),
        1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float64).div(dim)),
    )
    return torch.polar(torch.ones_like(freqs), freqs)


def _wan_freqs(head_dim: int) -> Tensor:
    d = head_dim
    return torch.cat(
        [
            _rope_params(1024, d - 4 * (d // 6)),
            _rope_params(1024, 2 * (d // 6)),
            _rope_params(1024, 2 * (d // 6)),
        ],
        dim=1,
    )


def _wan_rope_apply(x: Tensor, grid: tuple[int, int, int], freqs: Tensor, start: int) -> Tensor:
    """Wan's causal_rope_apply: x [B, F*h*w, n, D] rotated for frames start..start+F-1."""
    n, c = x.size(2), x.size(3) // 2
    parts = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    f, h, w = grid
    seq_len = f * h * w
    out = []
    for i in range(x.size(0)):
        x_i = torch.view_as_complex(x[i, :seq_len].to(torch.float64).reshape(seq_len, n, -1, 2))
        freqs_i = torch.cat(
            [
                parts[0][start : start + f].view(f, 1, 1, -1).expand(f, h, w, -1),
                parts[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
                parts[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
            ],
            dim=-1,
        ).reshape(seq_len, 1, -1)
        out.append(torch.view_as_real(x_i * freqs_i).flatten(2))
    return torch.stack(out)


@pytest.mark.parametrize("head_dim", [32, 48, 128])
def test_rope_split_matches_wan(head_dim: int) -> None:
    d, c = head_dim, head_dim // 2
    t, h, w = wan_rope_split(d)
    assert (t, h, w) == (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
    # The table split (in complex columns) that rope_apply uses agrees with it.
    assert (t // 2, h // 2, w // 2) == (c - 2 * (c // 3), c // 3, c // 3)


@pytest.mark.parametrize("head_dim", [32, 48, 128])
@pytest.mark.parametrize("start", [0, 500, 1019])
def test_rope_matches_public_wan(head_dim: int, start: int) -> None:
    frames, h, w, heads = 5, 3, 4, 2
    g = torch.Generator().manual_seed(head_dim + start)
    x = torch.randn(2, frames * h * w, heads, head_dim, generator=g)

    rope = Rope3D(head_dim)
    cos, sin = rope.cos_sin(torch.arange(start, start + frames), h, w)
    assert cos.shape == sin.shape == (frames * h * w, 1, head_dim // 2)
    got = apply_rope(x, cos, sin)
    assert got.dtype == x.dtype and got.shape == x.shape

    want = _wan_rope_apply(x, (frames, h, w), _wan_freqs(head_dim), start)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    # Sanity: rotating at the wrong frame offset is far off (the check has teeth).
    shifted = _wan_rope_apply(x, (frames, h, w), _wan_freqs(head_dim), start + 1 - 2 * (start > 0))
    assert (got.double() - shifted).abs().max() > 1e-2


def test_rope_cache_layout_matches_token_layout() -> None:
    """apply_rope on the cache's [L, B, H, N, D] layout with [N, D/2] tables."""
    rope = Rope3D(48)
    cos, sin = rope.cos_sin(torch.arange(7, 10), 2, 3)
    x = torch.randn(2, 18, 4, 48, generator=torch.Generator().manual_seed(0))  # [B, N, H, D]
    by_token = apply_rope(x, cos, sin)
    by_cache = apply_rope(x.transpose(1, 2).unsqueeze(0), cos.squeeze(1), sin.squeeze(1))
    torch.testing.assert_close(by_cache[0].transpose(1, 2), by_token, atol=0, rtol=0)


def _rotate(x: Tensor, frame_pos: list[int], h: int, w: int, head_dim: int) -> Tensor:
    cos, sin = Rope3D(head_dim).cos_sin(torch.tensor(frame_pos), h, w)
    return apply_rope(x, cos, sin)


@pytest.mark.parametrize("head_dim", [32, 128])
def test_rope_translation_invariance_at_huge_positions(head_dim: int) -> None:
    """Scores depend on frame distance only, even at p = 100_000 (past any float32 table)."""
    p, h, w, heads = 100_000, 2, 3, 2
    n = h * w
    g = torch.Generator().manual_seed(7)
    q = torch.randn(n, heads, head_dim, generator=g)
    k = torch.randn(n, heads, head_dim, generator=g)

    def scores(q_frame: int, k_frame: int) -> Tensor:
        # Both frames in one call; tokens [0, n) are at q_frame, [n, 2n) at k_frame.
        qr = _rotate(torch.cat([q, q]), [q_frame, k_frame], h, w, head_dim)[:n]
        kr = _rotate(torch.cat([k, k]), [q_frame, k_frame], h, w, head_dim)[n:]
        return torch.einsum("ihd,jhd->hij", qr.double(), kr.double())

    for d in (0, 1, 5, 20, 1023):
        far, near = scores(p, p - d), scores(d, 0)
        torch.testing.assert_close(far, near, atol=1e-4, rtol=0)
        if d:
            # Distance still matters: the invariance is not a trivial one.
            assert (scores(p, p) - far).abs().max() > 1e-2

    # Angles computed in float32 at this position would be off by ~1e-2 rad: caught.
    inv = Rope3D(head_dim).inv_freq[0].float()
    a32 = (torch.tensor(float(p)) * inv).double()
    assert (a32 - p * Rope3D(head_dim).inv_freq[0]).abs().max() > 1e-3


# ---------------------------------------------------------------- timestep embedding


def test_sinusoidal_embedding_layout() -> None:
    dim = 256
    t = torch.tensor([0.0, 1.0, 17.5, 999.0, 1000.0])
    emb = sinusoidal_embedding(dim, t)
    assert emb.shape == (5, dim) and emb.dtype == torch.float64
    half = dim // 2
    want = torch.empty(5, dim, dtype=torch.float64)
    for n, tn in enumerate(t.tolist()):
        for i in range(half):
            angle = tn * 10000.0 ** (-i / half)
            want[n, i] = math.cos(angle)
            want[n, half + i] = math.sin(angle)
    torch.testing.assert_close(emb, want, atol=1e-12, rtol=0)
    # cos half first: t = 0 gives ones then zeros.
    assert torch.equal(emb[0, :half], torch.ones(half, dtype=torch.float64))
    assert torch.equal(emb[0, half:], torch.zeros(half, dtype=torch.float64))


# ---------------------------------------------------------------- patch layout


@pytest.fixture(scope="module")
def nano() -> CausalWanModel:
    return build_model(NANO, seed=1)


def _code(b: int, f: int, c: int, y: int, x: int) -> float:
    return float(((b * 10 + f) * 100 + c) * 1000 + y * 30 + x)


def test_unpatchify_places_each_channel(nano: CausalWanModel) -> None:
    """Token (f, i, j) channel (q*pw + r)*C + c lands at pixel (f, c, i*ph + q, j*pw + r):
    the head's output channels are (pt, ph, pw, C) with C fastest, as Wan's unpatchify."""
    bsz, frames, h, w = 2, 3, 2, 4
    _, ph, pw = NANO.patch_size
    cout = NANO.out_dim
    tokens = torch.empty(bsz, frames * h * w, cout * ph * pw)
    for b in range(bsz):
        for f in range(frames):
            for i in range(h):
                for j in range(w):
                    for q in range(ph):
                        for r in range(pw):
                            for c in range(cout):
                                tokens[b, (f * h + i) * w + j, (q * pw + r) * cout + c] = _code(
                                    b, f, c, i * ph + q, j * pw + r
                                )
    out = nano.unpatchify(tokens, frames, h, w)
    assert out.shape == (bsz, frames, cout, h * ph, w * pw)
    want = torch.tensor(
        [
            [
                [
                    [[_code(b, f, c, y, x) for x in range(w * pw)] for y in range(h * ph)]
                    for c in range(cout)
                ]
                for f in range(frames)
            ]
            for b in range(bsz)
        ]
    )
    assert torch.equal(out, want)

    # Same as the public unpatchify ('fhwpqrc->cfphqwr'), moved to frame-major BFCHW.
    for b in range(bsz):
        u = tokens[b].view(frames, h, w, 1, ph, pw, cout)
        u = torch.einsum("fhwpqrc->cfphqwr", u).reshape(cout, frames, h * ph, w * pw)
        assert torch.equal(out[b], u.transpose(0, 1))


def test_patch_embedding_token_order(nano: CausalWanModel) -> None:
    """embed_video's token (f, i, j) is the Conv3d of latent patch x[f, :, 2i:2i+2, 2j:2j+2]."""
    frames, hh, ww = 2, 4, 6
    x = torch.randn(1, frames, NANO.in_dim, hh, ww, generator=torch.Generator().manual_seed(3))
    tokens, (h, w) = nano.embed_video(x)
    assert (h, w) == (2, 3) and tokens.shape == (1, frames * h * w, NANO.dim)
    weight = nano.patch_embedding.weight.flatten(1).double()  # [dim, C*1*2*2], (c, pt, ph, pw)
    bias = nano.patch_embedding.bias.double()
    for f in range(frames):
        for i in range(h):
            for j in range(w):
                patch = x[0, f, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].double().flatten()
                want = weight @ patch + bias
                torch.testing.assert_close(
                    tokens[0, (f * h + i) * w + j].double(), want, atol=1e-5, rtol=1e-5
                )


# ---------------------------------------------------------------- block-causal mask


@pytest.mark.parametrize(
    ("frames", "tokens_per_frame", "block"), [(5, 3, 1), (6, 2, 3), (7, 2, 3), (4, 1, 3)]
)
def test_block_causal_mask(frames: int, tokens_per_frame: int, block: int) -> None:
    mask = block_causal_mask(frames, tokens_per_frame, block, torch.device("cpu"))
    n = frames * tokens_per_frame
    assert mask.shape == (n, n) and mask.dtype == torch.bool
    for i in range(n):
        for j in range(n):
            bi, bj = (i // tokens_per_frame) // block, (j // tokens_per_frame) // block
            assert bool(mask[i, j]) == (bj <= bi), (i, j)
    # Every token attends to its own block in full (bidirectional within a block).
    assert mask.diagonal().all()
    if block > 1:
        assert mask[0, tokens_per_frame]  # frame 0 sees frame 1 of its block


# ---------------------------------------------------------------- per-frame conditioning


def _clip(seed: int, frames: int = 6) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, frames, NANO.in_dim, 4, 4, generator=g)
    t = torch.linspace(999.0, 250.0, frames).unsqueeze(0)
    ctx = torch.randn(1, 5, NANO.text_dim, generator=g)
    return x, t, ctx


def _run(model: CausalWanModel, x: Tensor, t: Tensor, ctx: Tensor, block: int) -> Tensor:
    with torch.no_grad():
        return model(x, t, ctx, block_frames=block)


# Outputs are O(0.5). A frame's own timestep/input moves its output by ~1e-2; the effect
# carried to another frame by attention in a random nano model is ~1e-4; float32 noise is
# ~1e-7. Blocks that must not see a change are in fact bit-identical on CPU.
DIRECT, INDIRECT = 1e-3, 2e-5


def _same(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-7, rtol=0)


def _differs(a: Tensor, b: Tensor, by: float = DIRECT) -> None:
    assert (a - b).abs().max() > by


@pytest.mark.parametrize("block", [1, 2, 3])
def test_last_block_timestep_only_changes_last_block(nano: CausalWanModel, block: int) -> None:
    x, t, ctx = _clip(0)
    base = _run(nano, x, t, ctx, block)
    assert base.shape == x.shape
    t2 = t.clone()
    t2[:, -1] = 50.0  # only the last frame of the last block
    out = _run(nano, x, t2, ctx, block)
    _same(out[:, :-block], base[:, :-block])
    _differs(out[:, -1], base[:, -1])
    for f in range(6 - block, 5):  # the whole last block sees it (bidirectional within it)
        _differs(out[:, f], base[:, f], INDIRECT)


@pytest.mark.parametrize("block", [1, 2, 3])
def test_last_block_input_only_changes_last_block(nano: CausalWanModel, block: int) -> None:
    x, t, ctx = _clip(1)
    base = _run(nano, x, t, ctx, block)
    x2 = x.clone()
    x2[:, -block:] = torch.randn(x2[:, -block:].shape, generator=torch.Generator().manual_seed(9))
    out = _run(nano, x2, t, ctx, block)
    _same(out[:, :-block], base[:, :-block])
    _differs(out[:, -block:], base[:, -block:])


def test_first_block_conditions_later_blocks(nano: CausalWanModel) -> None:
    """Positive control for the two tests above: information does flow forward."""
    x, t, ctx = _clip(2)
    base = _run(nano, x, t, ctx, 2)
    t2 = t.clone()
    t2[:, 0] = 10.0
    out = _run(nano, x, t2, ctx, 2)
    _differs(out[:, 0], base[:, 0])
    for f in range(1, 6):
        _differs(out[:, f], base[:, f], INDIRECT)


def test_timesteps_are_per_frame_not_per_clip(nano: CausalWanModel) -> None:
    """Each frame is modulated by its own timestep: giving every frame the first frame's
    timestep leaves frame 0 alone and changes every other frame."""
    x, t, ctx = _clip(3)
    base = _run(nano, x, t, ctx, 1)
    flat = _run(nano, x, torch.full_like(t, float(t[0, 0])), ctx, 1)
    _same(flat[:, 0], base[:, 0])  # frame 0 kept its timestep and sees nothing later
    for f in range(1, 6):
        _differs(flat[:, f], base[:, f])


# ---------------------------------------------------------------- cached path


@pytest.mark.parametrize("block", [1, 2])
def test_cached_stream_matches_masked_forward(nano: CausalWanModel, block: int) -> None:
    """Streaming block by block through the KV cache (denoise, then commit the clean block
    at t=0) gives the flow that the full masked forward gives for the same history."""
    frames = 3 * block
    x, t, ctx = _clip(4, frames)
    clean = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    cache, cross = nano.new_caches((4, 4), block, CacheConfig.global_attention(max_frames=frames))
    with torch.no_grad():
        for start in range(0, frames, block):
            sl = slice(start, start + block)
            flow = nano.predict_flow(x[:, sl], t[:, sl], ctx, cross, cache, cache.plan(block))
            hist_x = torch.cat([clean[:, :start], x[:, sl]], dim=1)
            hist_t = torch.cat([torch.zeros(1, start), t[:, sl]], dim=1)
            want = nano(hist_x, hist_t, ctx, block_frames=block)[:, start:]
            torch.testing.assert_close(flow, want, atol=1e-5, rtol=1e-5)
            plan = cache.plan(block, commit=True)
            done = nano.predict_flow(clean[:, sl], torch.zeros(1, block), ctx, cross, cache, plan)
            assert done.numel() == 0
            cache.commit(plan, clean[:, sl])
    assert cross.fills == 1
