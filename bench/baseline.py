"""The no-KV-cache baseline the streaming benchmark compares the rolling cache with.

Without a cache, every denoising step of a block must rerun the block-causal
forward over the whole kept context [sinks, last W frames, noisy block]: the
same work a cache saves. NaiveStream does exactly that, with the same schedule,
re-noising and window as engine.loop.DenoisingLoop, so that until the window
evicts it produces the same latents (tests/apps/test_bench.py checks this) and
the speed-up is a same-work comparison.

Usage::

    naive = NaiveStream(model, schedule, loop_config, cache_config, context, SeededNoise(0))
    x0 = naive.next_block()  # [B, block_frames, C, H, W]
    result = run_baseline(model, schedule, loop_config, cache_config, context,
                          blocks=100, warmup=7, seed=0, interleave=cached_loop)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench.env import log, machine_busy_s, progress_every
from engine.cache import CacheConfig
from engine.loop import DenoisingLoop, LoopConfig, SeededNoise
from engine.metrics import BlockClock, block_stats, synchronize
from engine.schedule import FlowSchedule, add_noise
from models.resolve import VAE_TEMPORAL
from models.wan.model import CausalWanModel


class NaiveStream:
    """The no-KV-cache baseline: every denoising step reruns the block-causal full-sequence
    forward over [sinks, last W frames, noisy block] and keeps the block's flow.

    Same schedule and re-noising as DenoisingLoop; the kept frames are stored at the
    context noise level (as the loop's commit does) and fed at timestep 1000*context_sigma.
    Positions are 0..n-1, which is what the cache's relative positions amount to.
    """

    def __init__(
        self,
        model: CausalWanModel,
        schedule: FlowSchedule,
        loop_config: LoopConfig,
        cache_config: CacheConfig,
        context: Tensor,
        noise: Callable[[tuple[int, ...]], Tensor],
    ) -> None:
        self.model, self.schedule, self.context, self.noise = model, schedule, context, noise
        self.batch, self.bf = loop_config.batch, loop_config.block_frames
        self.shape = (self.batch, self.bf, model.latent_channels, *loop_config.latent_hw)
        self.sink_frames, self.window_frames = cache_config.sink_frames, cache_config.ring_frames
        self.sinks: Tensor | None = None
        self.window: Tensor | None = None

    @property
    def context_frames(self) -> int:
        return sum(t.shape[1] for t in (self.sinks, self.window) if t is not None)

    @torch.inference_mode()
    def next_block(self) -> Tensor:
        s, device, bf = self.schedule, self.model.device, self.bf
        kept = [t for t in (self.sinks, self.window) if t is not None]
        ctx_x = torch.cat(kept, dim=1) if kept else None
        n_ctx = 0 if ctx_x is None else ctx_x.shape[1]
        t_ctx = torch.full((self.batch, n_ctx), 1000.0 * s.context_sigma, device=device)
        x = self.noise(self.shape)
        x0 = x
        for j, (t, sigma) in enumerate(zip(s.timesteps, s.sigmas, strict=True)):
            seq = x if ctx_x is None else torch.cat([ctx_x, x], dim=1)
            ts = torch.cat([t_ctx, torch.full((self.batch, bf), t, device=device)], dim=1)
            flow = self.model(seq, ts, self.context, block_frames=bf)[:, n_ctx:]
            x0 = x - sigma * flow
            if j + 1 < len(s.steps):
                x = add_noise(x0, self.noise(self.shape), s.sigmas[j + 1])
        kept_x = x0
        if s.context_sigma > 0:
            kept_x = add_noise(x0, self.noise(tuple(x0.shape)), s.context_sigma)
        n_sinks = 0 if self.sinks is None else self.sinks.shape[1]
        if n_sinks < self.sink_frames:
            self.sinks = kept_x if self.sinks is None else torch.cat([self.sinks, kept_x], dim=1)
        else:
            w = kept_x if self.window is None else torch.cat([self.window, kept_x], dim=1)
            self.window = w[:, -self.window_frames :]
        return x0


def run_baseline(
    model: CausalWanModel,
    schedule: FlowSchedule,
    loop_config: LoopConfig,
    cache_config: CacheConfig,
    context: Tensor,
    *,
    blocks: int,
    warmup: int,
    seed: int,
    interleave: DenoisingLoop | None = None,
) -> dict[str, Any]:
    """Stream ``blocks`` blocks without a KV cache. With ``interleave`` (a cached stream
    whose window is full), one cached block is timed after or before each baseline block
    (alternating), so the speed-up can also be read under identical machine conditions."""
    device, bf = model.device, loop_config.block_frames
    naive = NaiveStream(
        model, schedule, loop_config, cache_config, context, SeededNoise(seed, device)
    )
    clock, cached_clock = BlockClock(machine_busy_s), BlockClock(machine_busy_s)

    def cached_block() -> None:
        assert interleave is not None
        cached_clock.start()
        interleave.next_block()
        synchronize(device)  # CUDA sync: the block's latents are ready when the clock is read
        cached_clock.stop()

    every = progress_every(blocks)
    with torch.inference_mode():
        for i in range(blocks):
            if interleave is not None and i % 2:
                cached_block()
            n_ctx = naive.context_frames
            synchronize(device)  # CUDA sync: the interleaved cached block's work is not ours
            clock.start()
            naive.next_block()
            synchronize(device)  # CUDA sync: the block's latents are ready when the clock is read
            clock.stop()
            if interleave is not None and not i % 2:
                cached_block()
            if (i + 1) % every == 0 or i + 1 == blocks:
                ms = clock.recent_ms(every)
                log(f"  baseline block {i + 1}/{blocks}: {ms:.1f} ms/block, context {n_ctx} frames")
    steady = clock.wall[warmup:]
    latent_fps = bf * len(steady) / sum(steady)
    out: dict[str, Any] = {
        "warmup_blocks": warmup,
        "steady_state": {
            "blocks": [warmup, blocks],
            "context_frames": cache_config.sink_frames + cache_config.ring_frames,
            "latent_fps": latent_fps,
            "video_fps": VAE_TEMPORAL * latent_fps,
            **block_stats(steady),
            "cpu_mean_ms": clock.window(warmup, blocks)["cpu_mean_ms"],
            "other_processes_cores_busy": clock.window(warmup, blocks)[
                "other_processes_cores_busy"
            ],
        },
        "block_times_ms": clock.times_ms(),
        "interleaved_cached": None,
    }
    if interleave is not None:
        w = cached_clock.window(warmup, blocks)
        w["blocks"] = [interleave.blocks_done - blocks + warmup, interleave.blocks_done]
        out["interleaved_cached"] = {
            "definition": (
                "one cached block (the same long stream, window full) timed right before or "
                "after each baseline block, alternating; stats over the baseline's steady-state "
                "slots"
            ),
            **w,
            "speedup": out["steady_state"]["mean_ms"] / w["mean_ms"],
        }
    return out
