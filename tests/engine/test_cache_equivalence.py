"""The cached path against references: full-sequence forward, and a naive rolling window."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.cache import CacheConfig, CrossAttentionCache, KVCache
from engine.rope import apply_rope
from models.wan.model import CausalWanModel

TOL = 1e-4


def cached_step(
    model: CausalWanModel,
    cache: KVCache,
    cross: CrossAttentionCache,
    x: Tensor,
    t: Tensor,
    ctx: Tensor,
) -> Tensor:
    """Flow for block x with the cache read-only, then commit x (same input and timesteps)."""
    n = x.shape[1]
    flow = model.predict_flow(x, t, ctx, cross, cache, cache.plan(n))
    plan = cache.plan(n, commit=True)
    model.predict_flow(x, t, ctx, cross, cache, plan)
    cache.commit(plan, x)
    return flow


@pytest.mark.parametrize("block_frames", [1, 3])
@torch.inference_mode()
def test_cached_blocks_equal_full_sequence_forward(tiny: CausalWanModel, block_frames: int) -> None:
    blocks, hw = 4, (8, 8)
    frames = blocks * block_frames
    x = torch.randn(1, frames, 16, *hw)
    # a different noise level per block, as diffusion forcing trains with
    t = (torch.rand(1, blocks) * 1000).repeat_interleave(block_frames, dim=1)
    ctx = torch.randn(1, 7, tiny.config.text_dim)
    reference = tiny(x, t, ctx, block_frames=block_frames)

    cache, cross = tiny.new_caches(
        hw, block_frames, CacheConfig.global_attention(max_frames=frames)
    )
    flows = []
    for b in range(blocks):
        s = slice(b * block_frames, (b + 1) * block_frames)
        flows.append(cached_step(tiny, cache, cross, x[:, s], t[:, s], ctx))
    cached = torch.cat(flows, dim=1)
    assert reference.abs().max() > 0.1  # the comparison is not between zeros
    err = (cached - reference).abs().max().item()
    assert err <= TOL, f"cached vs full forward: max abs error {err:.2e}"


class NaiveRollingReference:
    """Keeps every frame's un-rotated K/V and, for each block, attends over exactly the
    kept frames (first S, last W) re-positioned as [sinks, window, block] = 0..n-1
    (relative) or at their own frame indices (absolute)."""

    def __init__(self, model: CausalWanModel, sinks: int, window: int, positions: str) -> None:
        self.model, self.sinks, self.window, self.positions = model, sinks, window, positions
        layers = len(model.blocks)
        self.k: list[list[Tensor]] = [[] for _ in range(layers)]  # per layer, per frame [B,H,tpf,D]
        self.v: list[list[Tensor]] = [[] for _ in range(layers)]

    def kept(self) -> list[int]:
        total = len(self.k[0])
        head = list(range(min(self.sinks, total)))
        tail = list(range(max(self.sinks, total - self.window), total))
        return head + tail

    def step(self, x: Tensor, t: Tensor, ctx: Tensor, commit: bool) -> Tensor:
        m = self.model
        tokens, (h, w) = m.embed_video(x)
        e, e0 = m.embed_time(t)
        text = m.embed_text(ctx)
        kept = self.kept()
        n = x.shape[1]
        first = len(self.k[0])
        if self.positions == "relative":
            ctx_pos = torch.arange(len(kept))
            blk_pos = torch.arange(len(kept), len(kept) + n)
        else:
            ctx_pos = torch.tensor(kept)
            blk_pos = torch.arange(first, first + n)
        cos, sin = m.rope.cos_sin(blk_pos, h, w)
        ccos, csin = m.rope.cos_sin(ctx_pos, h, w) if kept else (None, None)
        new_k: list[Tensor] = []
        new_v: list[Tensor] = []
        for i, block in enumerate(m.blocks):

            def attend(q: Tensor, k: Tensor, v: Tensor, k_raw: Tensor, i: int = i) -> Tensor:
                ks, vs = [k.transpose(1, 2)], [v.transpose(1, 2)]
                if kept:
                    kr = torch.cat([self.k[i][f] for f in kept], dim=2)
                    ks.insert(0, apply_rope(kr, ccos.squeeze(1), csin.squeeze(1)))
                    vs.insert(0, torch.cat([self.v[i][f] for f in kept], dim=2))
                y = F.scaled_dot_product_attention(
                    q.transpose(1, 2), torch.cat(ks, 2), torch.cat(vs, 2)
                )
                new_k.append(k_raw.transpose(1, 2))
                new_v.append(v.transpose(1, 2))
                return y.transpose(1, 2)

            tokens = block(tokens, e0, cos, sin, block.cross_attn.context_kv(text), attend)
        if commit:
            tpf = h * w
            for i in range(len(m.blocks)):
                for f in range(n):
                    self.k[i].append(new_k[i][:, :, f * tpf : (f + 1) * tpf])
                    self.v[i].append(new_v[i][:, :, f * tpf : (f + 1) * tpf])
        return m.unpatchify(m.head(tokens, e), n, h, w)


@pytest.mark.parametrize("positions", ["relative", "absolute"])
@pytest.mark.parametrize("block_frames", [1, 3])
@torch.inference_mode()
def test_rolling_window_equals_naive_reference(
    tiny: CausalWanModel, positions: str, block_frames: int
) -> None:
    sinks, window, hw = block_frames, 2 * block_frames, (4, 4)
    blocks = 8  # the window wraps several times
    config = CacheConfig.rolling_window(sinks, window, positions=positions)  # type: ignore[arg-type]
    cache, cross = tiny.new_caches(hw, block_frames, config)
    ref = NaiveRollingReference(tiny, sinks, window, positions)
    ctx = torch.randn(1, 5, tiny.config.text_dim)
    for b in range(blocks):
        x = torch.randn(1, block_frames, 16, *hw)
        t = torch.full((1, block_frames), float(torch.randint(0, 1000, ())))
        expected = ref.step(x, t, ctx, commit=False)
        got = cached_step(tiny, cache, cross, x, t, ctx)
        ref.step(x, t, ctx, commit=True)
        err = (got - expected).abs().max().item()
        assert err <= TOL, f"block {b}: cached vs naive rolling window, max abs error {err:.2e}"
    assert cache.frames_kept == sinks + window
    assert cache.ring_count > window  # evictions happened


@torch.inference_mode()
def test_eviction_changes_output(tiny: CausalWanModel) -> None:
    """Guard against a reference that would pass by ignoring the context entirely."""
    hw, ctx = (4, 4), torch.randn(1, 5, tiny.config.text_dim)
    x = torch.randn(1, 1, 16, *hw)
    t = torch.full((1, 1), 500.0)
    outs = []
    for window in (1, 4):
        cache, cross = tiny.new_caches(hw, 1, CacheConfig.rolling_window(1, window))
        torch.manual_seed(1)
        for _ in range(6):
            cached_step(tiny, cache, cross, torch.randn(1, 1, 16, *hw), t, ctx)
        outs.append(tiny.predict_flow(x, t, ctx, cross, cache, cache.plan(1)))
    assert (outs[0] - outs[1]).abs().max() > 1e-3
