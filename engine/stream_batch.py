"""Stream batch: one block per denoising step in flight, one clean block out per forward.

The plain Self-Forcing loop (engine.loop) runs k forwards for a block, then a
commit forward, and only then starts the next block: every forward has batch 1,
and a pipeline of GPUs would idle while it waits. StreamDiffusion and
StreamDiffusionV2 instead keep k blocks in flight, block m + i at step k-1-i,
so one batched forward advances all of them and one clean block leaves per
forward.

The catch is context. A block being denoised attends to the committed (clean)
keys of earlier blocks; with k blocks in flight, the blocks just ahead of it are
not clean yet. This loop uses the *lagged* schedule: a block at step i attends to
every block that finished before that step, i.e. block m at step i sees clean
blocks <= m - k + i. Its last step sees every earlier block, as in Self-Forcing;
its first step sees context k - 1 blocks older. (StreamDiffusionV2 instead keeps
one cache per step holding the noisy keys of that step, which suits
video-to-video, where step 0 already holds the input video; for text-to-video
step 0 is pure noise, so its cache would carry nothing.)

With that schedule the order of work is fixed by the schedule alone, so
running a tick's forwards one at a time (``batched=False``, the sequential
reference), as one batch (``batched=True``), or through a pipeline of processes
(engine.parallel) gives the same frames: a reordering, not an approximation. With
one denoising step it is exactly the plain loop. With several steps it differs
from the plain loop (staler context at the early steps); the eval harness
measures by how much (docs/parallel.md).

One tick, in the order every executor sees it::

    commit(block finished last tick)         writes the cache
    step k-1 of the oldest block   --.
    ...                               |     independent of each other:
    step 1 of the second-newest       |     one batched forward, or pipelined
    step 0 of a new block          --'
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.cache import CacheConfig
from engine.executor import FlowExecutor, FlowHandle, executor_for
from engine.loop import LoopConfig, NoiseSource, SubmittingLoop, sampler_step
from engine.protocols import CausalGenerator, FlowRequest
from engine.schedule import FlowSchedule


@dataclass
class _InFlight:
    """A block between its first and last denoising step."""

    frame_index: int
    step: int  # the step whose flow ``handle`` will give
    x: Tensor  # the input of that step [B, F, C, H, W]
    handle: FlowHandle


class StreamBatchLoop(SubmittingLoop):
    """Generates clean latent blocks with one block per denoising step in flight.

    Same interface as engine.loop.DenoisingLoop (next_block, set_context,
    recache, hard_cut, cache, cross). The first block leaves after k forwards
    (k = denoising steps); then one block per forward.

    Usage::

        loop = StreamBatchLoop(model, FlowSchedule(), LoopConfig(1, (16, 16)),
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
        batched: bool = True,
        executor: FlowExecutor | None = None,
    ) -> None:
        executor = executor or executor_for(model, batched=batched)
        super().__init__(model, schedule, config, cache_config, noise, executor)
        self._inflight: deque[_InFlight] = deque()  # oldest first
        self._finished: tuple[Tensor, int] | None = None  # (x0, frame index) to commit
        self._next_frame = 0  # frame index of the next block to admit

    @property
    def steps(self) -> int:
        return len(self.schedule.steps)

    def _timesteps(self, value: float) -> Tensor:
        c = self.config
        return torch.full((c.batch, c.block_frames), value, device=self.model.device)

    def _denoise_request(self, x: Tensor, step: int, frame_index: int) -> FlowRequest:
        assert self.context is not None, "call set_context() before generating"
        plan = self.cache.plan(x.shape[1], frame_index=frame_index)
        t = self._timesteps(self.schedule.timesteps[step])
        return FlowRequest(x, t, self.context, self.cross, self.cache, plan)

    @torch.inference_mode()
    def _tick(self) -> Tensor | None:
        """Submit one tick's forwards; return the block that took its last step, if any."""
        if self._finished is not None:
            self._commit(*self._finished)
            self._finished = None
        advanced: deque[_InFlight] = deque()
        for block in self._inflight:
            flow = self.executor.result(block.handle)
            _, x = sampler_step(self.schedule, block.step, block.x, flow, self.noise)
            step = block.step + 1
            handle = self.executor.submit(self._denoise_request(x, step, block.frame_index))
            advanced.append(_InFlight(block.frame_index, step, x, handle))
        x = self.noise(self.block_shape)
        frame = self._next_frame
        self._next_frame += self.config.block_frames
        handle = self.executor.submit(self._denoise_request(x, 0, frame))
        advanced.append(_InFlight(frame, 0, x, handle))
        self._inflight = advanced
        oldest = advanced[0]
        if oldest.step + 1 < self.steps:
            return None  # still filling the pipe
        self._inflight.popleft()
        flow = self.executor.result(oldest.handle)
        x0, _ = sampler_step(self.schedule, oldest.step, oldest.x, flow, self.noise)
        self._finished = (x0, oldest.frame_index)
        return x0

    def next_block(self) -> Tensor:
        """The next clean block [B, F, C, H, W] (committed at the start of the next tick)."""
        while (x0 := self._tick()) is None:
            pass
        self.blocks_done += 1
        return x0

    def recache(self, context: Tensor) -> None:
        """KV-recache (LongLive) under a new prompt; blocks in flight continue under it."""
        self._flush_finished()
        super().recache(context)

    def hard_cut(self, context: Tensor) -> None:
        """Forget every committed frame; blocks in flight finish under the new prompt."""
        self._flush_finished()
        super().hard_cut(context)

    def _flush_finished(self) -> None:
        """Commit the block that left last, so that a switch sees the whole past."""
        if self._finished is not None:
            with torch.inference_mode():
                self._commit(*self._finished)
            self._finished = None
