"""Rolling denoising: a window of blocks at staggered noise levels, denoised in one forward.

Rolling Forcing (Liu et al., 2025) replaces the one-block-at-a-time loop of
Self-Forcing (engine.loop) with a *rolling window*: with a k-step schedule the
window holds k blocks, the oldest at the last (least noisy) step and the
newest at step 0 (pure noise). One forward denoises the whole window, each
frame at its own timestep; afterwards every block moves on by one step, the
oldest comes out clean and is committed to the KV cache, and a block of fresh
noise joins at the back. One block leaves per window forward (plus its commit
forward), as in stream batch, but here the blocks in flight see each other.

Attention. The window's frames attend to the committed cache (sinks and ring)
and to each other in both directions, at their true temporal positions: the
window covers frames next_frame .. next_frame + n - 1 of the stream, where
next_frame is the cache's next frame to commit. So a nearly clean block sees
the noisier blocks after it and they see it: the "mutual refinement" that lets
neighbouring blocks agree, in exchange for strict causality inside the window.
The cache's scratch region is sized for the window (CacheConfig.scratch_frames
= k * block_frames); commits stay one block at a time, as in every loop.

One window forward (steady state, k = 4, blocks m .. m+3)::

    committed cache: sinks | ring (clean, read-only)
    window:  block m @ step 3 | m+1 @ step 2 | m+2 @ step 1 | m+3 @ step 0
             '------------ bidirectional attention, per-frame timesteps ------'
    then:    block m is clean -> returned, committed (one commit forward)
             m+1..m+3 advance one step; block m+4 (fresh noise) joins @ step 0

Warm-up (the choice made here: "fill the pipe"). The stream starts with an
empty window; every forward first admits one block of fresh noise at step 0,
so the first forwards run windows of 1, 2, ..., k blocks, with block j at
step (forwards so far - j). The first block leaves after k forwards, then one
block per forward. The only randomness is the seeded NoiseSource, drawn in a
fixed order (each new block's noise, then, with the "renoise" sampler, each
block's re-noise oldest first, then the commit's context noise), so a seed
gives one video. The alternative, starting from a full window of pure noise
with all blocks at step 0, would give the first k blocks fewer steps each.

Exact or approximate. With a 1-step schedule the window is one block and the
loop is exactly the plain loop (the tests check it, bit for bit). With k > 1
it is an approximation of the plain loop: a block's early steps attend to the
unfinished (noisier, and later) blocks of the window instead of only to clean
committed frames. Rolling Forcing trains its model for that attention pattern;
a model trained for block-causal attention (the public Self-Forcing
checkpoints, the embedded defaults) runs it untrained, and docs/parallel.md
reports what that costs in quality. Compute per block is about the plain
loop's (k block-sized token sets per block, in one wider forward).

A session that stops drops the k - 1 unfinished blocks still in the window.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.cache import CacheConfig
from engine.executor import FlowExecutor, executor_for
from engine.loop import LoopConfig, NoiseSource, SubmittingLoop, sampler_step
from engine.protocols import CausalGenerator, FlowRequest
from engine.schedule import FlowSchedule


@dataclass
class _Block:
    """A block in the window: its next forward runs denoising step ``step`` on ``x``."""

    frame_index: int
    step: int
    x: Tensor  # [B, F, C, H, W] at that step's noise level


class RollingLoop(SubmittingLoop):
    """Generates clean latent blocks from a rolling window of k blocks (k = denoising steps).

    Same interface as engine.loop.DenoisingLoop (next_block, set_context,
    recache, hard_cut, cache, cross). The first block leaves after k forwards
    (warm-up); then one window forward and one commit forward per block.

    Usage::

        loop = RollingLoop(model, FlowSchedule(), LoopConfig(1, (16, 16)),
                           CacheConfig.rolling_window(1, 4), SeededNoise(0))
        loop.set_context(embeddings)        # [B, T, text_dim]
        latents = loop.next_block()         # [B, 1, C, 16, 16]
    """

    def __init__(
        self,
        model: CausalGenerator,
        schedule: FlowSchedule,
        config: LoopConfig,
        cache_config: CacheConfig,
        noise: NoiseSource,
        *,
        executor: FlowExecutor | None = None,
    ) -> None:
        # one request at a time: a window forward needs the commit before it
        executor = executor or executor_for(model, batched=False)
        self.window_blocks = len(schedule.steps)
        window_frames = self.window_blocks * config.block_frames
        cache_config = dataclasses.replace(cache_config, scratch_frames=window_frames)
        super().__init__(model, schedule, config, cache_config, noise, executor)
        self.window_forwards = 0  # forwards over the window, warm-up included (stats, tests)
        self._window: list[_Block] = []  # oldest (least noisy) first
        self._next_frame = 0  # frame index of the next block to admit

    def _timesteps(self) -> Tensor:
        """Per-frame timesteps [B, n] of the window: each block's frames at its own step."""
        c, t = self.config, self.schedule.timesteps
        device = self.model.device
        return torch.cat(
            [torch.full((c.batch, c.block_frames), t[b.step], device=device) for b in self._window],
            dim=1,
        )

    @torch.inference_mode()
    def _forward(self) -> Tensor | None:
        """Admit a noise block, run one window forward, advance every block one step;
        return the block that took its last step (committed), if any."""
        assert self.context is not None, "call set_context() before generating"
        bf = self.config.block_frames
        self._window.append(_Block(self._next_frame, 0, self.noise(self.block_shape)))
        self._next_frame += bf
        first = self._window[0].frame_index
        assert first == self.cache.next_frame, f"{first=} {self.cache.next_frame=}"
        x = torch.cat([b.x for b in self._window], dim=1)  # [B, n*bf, C, H, W]
        plan = self.cache.plan(x.shape[1], frame_index=first)
        request = FlowRequest(x, self._timesteps(), self.context, self.cross, self.cache, plan)
        flows = self.executor.result(self.executor.submit(request)).split(bf, dim=1)
        self.window_forwards += 1
        advanced: list[_Block] = []
        clean: Tensor | None = None
        for block, flow in zip(self._window, flows, strict=True):
            x0, x_next = sampler_step(self.schedule, block.step, block.x, flow, self.noise)
            if block.step + 1 == self.window_blocks:
                clean = x0  # only the oldest block can be at the last step
            else:
                advanced.append(_Block(block.frame_index, block.step + 1, x_next))
        self._window = advanced
        if clean is not None:
            self._commit(clean, first)
        return clean

    def next_block(self) -> Tensor:
        """The next clean block [B, F, C, H, W], already committed to the cache."""
        while (x0 := self._forward()) is None:
            pass  # warm-up: the window is still filling
        self.blocks_done += 1
        return x0
