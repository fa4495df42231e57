"""KVCache bookkeeping: capacity, eviction order, rollback, errors, positions."""

from __future__ import annotations

import pytest
import torch

from engine.cache import CacheConfig, CacheError, CacheGeometry, KVCache
from engine.rope import Rope3D
from models.wan.model import CausalWanModel


def make_cache(config: CacheConfig, block_frames: int = 1) -> KVCache:
    g = CacheGeometry(
        num_layers=2,
        num_heads=2,
        head_dim=12,
        grid_hw=(2, 2),
        latent_shape=(4, 2, 2),
        block_frames=block_frames,
    )
    return KVCache(g, config, Rope3D(12))


def commit_frames(cache: KVCache, n_blocks: int, value_of_frame: bool = True) -> None:
    """Commit blocks whose K/V/latents are filled with their absolute frame index."""
    bf = cache.geometry.block_frames
    tpf = cache.tokens_per_frame
    for _ in range(n_blocks):
        plan = cache.plan(bf, commit=True)
        idx = torch.arange(plan.frame_index, plan.frame_index + bf, dtype=torch.float32)
        kv = idx.repeat_interleave(tpf).view(1, 1, -1, 1).expand(1, 2, -1, 12)
        for layer in range(2):
            cache.write_scratch(layer, plan, kv, kv)
            cache.commit_block(layer, plan, kv, kv, kv)
        cache.commit(plan, idx.view(1, bf, 1, 1, 1).expand(1, bf, 4, 2, 2))


def kept_indices(cache: KVCache) -> list[int]:
    out: list[int] = []
    for first, lat in cache.kept_frames():
        vals = lat[0, :, 0, 0, 0].tolist()
        assert vals == list(range(first, first + len(vals)))  # temporal order, contiguous
        out += [int(v) for v in vals]
    return out


def test_rolling_cache_keeps_sinks_and_last_window() -> None:
    cache = make_cache(CacheConfig.rolling_window(sinks=2, window=3))
    commit_frames(cache, 9)
    assert kept_indices(cache) == [0, 1, 6, 7, 8]
    plan = cache.plan(1)
    # attended region: the block itself + 5 kept frames, one contiguous slice
    assert plan.attn_end - plan.attn_start == 6 * cache.tokens_per_frame
    vals = set(cache.v[0, 0, 0, plan.scratch_end : plan.attn_end, 0].tolist())
    assert vals == {0.0, 1.0, 6.0, 7.0, 8.0}


def test_cache_memory_is_fixed_and_allocated_once() -> None:
    cache = make_cache(CacheConfig.rolling_window(sinks=1, window=2))
    ptr, nbytes = cache.k.data_ptr(), cache.nbytes
    commit_frames(cache, 50)
    assert cache.k.data_ptr() == ptr and cache.nbytes == nbytes
    assert cache.frames_kept == 3


def test_global_cache_refuses_past_capacity_with_clear_error() -> None:
    cache = make_cache(CacheConfig.global_attention(max_frames=4))
    commit_frames(cache, 4)
    with pytest.raises(CacheError, match="rolling window"):
        cache.plan(1)


def test_absolute_positions_are_the_reference_s_inside_the_table_then_sinks_slide() -> None:
    cache = make_cache(CacheConfig.rolling_window(1, 2, positions="absolute", rope_max_positions=8))
    commit_frames(cache, 7)
    plan = cache.plan(1)  # frame 7: the last one the 8-entry table holds
    assert plan.positions.tolist() == [7]
    assert plan.sink_position == 0  # the sink at its own frame, as in the reference
    for frame in range(8, 40):
        commit_frames(cache, 1)
        plan = cache.plan(1)
        assert plan.positions.tolist() == [frame]  # queries and window keep their frame index
        # the sink slides so that the farthest distance stays the table's largest (7)
        assert plan.sink_position == frame + 1 - 8
        assert frame - plan.sink_position == 7


def test_relative_positions_realign_sinks_before_window() -> None:
    cache = make_cache(CacheConfig.rolling_window(sinks=2, window=3))
    commit_frames(cache, 20)
    plan = cache.plan(1)
    assert plan.positions.tolist() == [20]
    assert plan.sink_position == 17 - 2  # sinks now sit at frames 15, 16; window is 17..19


@pytest.mark.parametrize("commits", [3, 9])  # before and after the ring wraps
def test_rollback_restores_the_earlier_state(commits: int) -> None:
    cache = make_cache(CacheConfig.rolling_window(sinks=1, window=4))
    commit_frames(cache, commits)
    before = kept_indices(cache)
    cache.rollback(2)
    assert kept_indices(cache) == before[:-2]
    assert cache.next_frame == commits - 2
    commit_frames(cache, 2)  # the same frames again land where they belong
    assert kept_indices(cache) == before


def test_rollback_past_the_window_is_refused() -> None:
    cache = make_cache(CacheConfig.rolling_window(sinks=1, window=2))
    commit_frames(cache, 5)
    with pytest.raises(CacheError, match="roll back"):
        cache.rollback(3)


def test_truncate_window_keeps_newest() -> None:
    cache = make_cache(CacheConfig.rolling_window(sinks=1, window=4))
    commit_frames(cache, 7)
    cache.truncate_window(2)
    assert kept_indices(cache) == [0, 5, 6]


def test_blocks_must_tile_sinks_and_window() -> None:
    with pytest.raises(ValueError, match="multiples of block_frames"):
        make_cache(CacheConfig.rolling_window(sinks=2, window=6), block_frames=3)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        CacheConfig(window_frames=0)
    with pytest.raises(ValueError):
        CacheConfig(positions="sideways")  # type: ignore[arg-type]


@torch.inference_mode()
def test_rollback_then_recommit_reproduces_output(nano: CausalWanModel) -> None:
    """Model-level: outputs after rollback + re-commit equal outputs without the detour.

    Exact only while nothing was evicted: a re-committed frame must see the same
    context it saw the first time."""
    hw, ctx = (2, 2), torch.randn(1, 4, nano.config.text_dim)
    cache, cross = nano.new_caches(hw, 1, CacheConfig.rolling_window(1, 8))
    xs = [torch.randn(1, 1, 16, *hw) for _ in range(7)]
    t = torch.full((1, 1), 0.0)

    def commit(x: torch.Tensor) -> None:
        plan = cache.plan(1, commit=True)
        nano.predict_flow(x, t, ctx, cross, cache, plan)
        cache.commit(plan, x)

    for x in xs[:6]:
        commit(x)
    probe = torch.randn(1, 1, 16, *hw)
    expected = nano.predict_flow(probe, t + 500, ctx, cross, cache, cache.plan(1))
    cache.rollback(2)
    for x in xs[4:6]:
        commit(x)
    got = nano.predict_flow(probe, t + 500, ctx, cross, cache, cache.plan(1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
