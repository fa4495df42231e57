"""Streams far past the reference's limits: constant memory, positions that never run out."""

from __future__ import annotations

import gc

import psutil
import torch

from engine.cache import CacheConfig
from engine.loop import DenoisingLoop, LoopConfig, SeededNoise
from engine.schedule import FlowSchedule
from models.wan.model import CausalWanModel


def make_loop(
    model: CausalWanModel, block_frames: int, sinks: int, window: int, hw: tuple[int, int]
) -> DenoisingLoop:
    loop = DenoisingLoop(
        model,
        FlowSchedule(steps=(1000,)),
        LoopConfig(block_frames=block_frames, latent_hw=hw),
        CacheConfig.rolling_window(sinks, window),
        SeededNoise(0),
    )
    g = torch.Generator().manual_seed(0)
    loop.set_context(torch.randn(1, 4, model.config.text_dim, generator=g))
    return loop


def test_stream_of_100k_frames_runs_past_the_rope_table(nano: CausalWanModel) -> None:
    """The reference crashes at frame 1024; this streams 100,008 latent frames for real."""
    loop = make_loop(nano, block_frames=12, sinks=12, window=24, hw=(2, 2))
    nbytes = loop.cache.nbytes + loop.cross.nbytes
    blocks = 100_008 // 12
    for b in range(blocks):
        out = loop.next_block()
        if b % 1000 == 0:
            assert torch.isfinite(out).all(), f"non-finite output at block {b}"
    assert loop.cache.next_frame == 100_008
    assert torch.isfinite(out).all() and out.abs().max() > 0
    assert loop.cache.nbytes + loop.cross.nbytes == nbytes
    assert loop.cache.frames_kept == 36


@torch.inference_mode()
def test_relative_positions_are_translation_invariant(tiny: CausalWanModel) -> None:
    """A stream starting at frame 1,000,000 makes the same video as one starting at 0:
    positions past the table behave exactly like trained ones."""
    outs = []
    for start in (0, 1_000_000):
        loop = make_loop(tiny, block_frames=1, sinks=1, window=3, hw=(4, 4))
        loop.hard_cut(loop.context)  # type: ignore[arg-type]
        loop.cache.next_frame = start
        outs.append(torch.cat([loop.next_block() for _ in range(8)], dim=1))
    err = (outs[0] - outs[1]).abs().max().item()
    assert err < 1e-4, f"offset stream differs by {err:.2e}"


def test_2000_block_stream_has_constant_cache_and_flat_rss(tiny: CausalWanModel) -> None:
    loop = make_loop(tiny, block_frames=3, sinks=3, window=12, hw=(4, 4))
    proc = psutil.Process()
    cache_bytes: list[int] = []
    rss_start = 0
    ptrs = (loop.cache.k.data_ptr(), loop.cache.v.data_ptr())
    for b in range(2000):
        loop.next_block()
        if b >= 5:  # the window (12 frames = 4 blocks) plus sinks is full
            cache_bytes.append(loop.cache.nbytes + loop.cross.nbytes)
        if b == 199:
            gc.collect()
            rss_start = proc.memory_info().rss
    gc.collect()
    rss_end = proc.memory_info().rss
    assert len(set(cache_bytes)) == 1
    assert (loop.cache.k.data_ptr(), loop.cache.v.data_ptr()) == ptrs
    growth = (rss_end - rss_start) / rss_start
    assert growth < 0.05, f"RSS grew {growth:.1%} over 1,800 blocks"
