"""The Self-Forcing denoising loop: denoise a block against a read-only cache, then commit it.

For each block of latent frames:
  1. start from noise; for each step: predict flow, x0 = x - sigma * flow,
     and re-noise x0 to the next step's level (fresh noise);
  2. run the model once more on the clean x0 (optionally re-noised to a small
     context level) with a committing plan, which writes the block's keys and
     values into the cache.

The loop is deterministic for a seed: all noise comes from one NoiseSource,
which the caller may replace (e.g. to replay exact noise in a test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.cache import CacheConfig, CrossAttentionCache, KVCache
from engine.executor import FlowExecutor
from engine.protocols import CausalGenerator, FlowRequest
from engine.schedule import FlowSchedule, add_noise

NoiseSource = Callable[[tuple[int, ...]], Tensor]


def sampler_step(
    schedule: FlowSchedule, i: int, x: Tensor, flow: Tensor, noise: NoiseSource
) -> tuple[Tensor, Tensor]:
    """After step i's flow: the clean estimate x0 and the input of step i + 1 (x0 again
    after the last step). Draws noise only for a "renoise" step that has a successor."""
    sigmas = schedule.sigmas
    x0 = x - sigmas[i] * flow
    if i + 1 == len(sigmas):
        return x0, x0
    if schedule.sampler == "euler":
        return x0, x + (sigmas[i + 1] - sigmas[i]) * flow
    return x0, add_noise(x0, noise(tuple(x0.shape)), sigmas[i + 1])


def commit_request(
    schedule: FlowSchedule,
    x0: Tensor,
    frame_index: int,
    context: Tensor,
    cross: CrossAttentionCache,
    cache: KVCache,
    noise: NoiseSource,
) -> FlowRequest:
    """The forward that writes a clean block [B, F, C, H, W] into the cache, optionally
    re-noised to the schedule's context level (plans the commit; the caller runs it and
    then calls cache.commit(request.plan, x0))."""
    context_x = x0
    if schedule.context_sigma > 0:
        context_x = add_noise(x0, noise(tuple(x0.shape)), schedule.context_sigma)
    plan = cache.plan(x0.shape[1], commit=True, frame_index=frame_index)
    t = torch.full((x0.shape[0], x0.shape[1]), 1000.0 * schedule.context_sigma, device=x0.device)
    return FlowRequest(context_x, t, context, cross, cache, plan)


class SeededNoise:
    """Gaussian noise from one seeded generator per stream."""

    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)


@dataclass(frozen=True)
class LoopConfig:
    """Block structure of a stream."""

    block_frames: int = 3  # latent frames per block (1 or 3 in the public models)
    latent_hw: tuple[int, int] = (16, 16)  # latent height, width
    batch: int = 1

    def __post_init__(self) -> None:
        if self.block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {self.block_frames}")
        if min(self.latent_hw) < 1:
            raise ValueError(f"latent_hw must be positive, got {self.latent_hw}")


class CachedLoop:
    """What every denoising loop shares: the stream's caches and prompt, the block shape,
    and the two ways to change the past (KV-recache, hard cut). Subclasses say how a
    forward that only fills the cache runs (``_run``: now, or through an executor) and how
    blocks are made (``next_block``)."""

    def __init__(
        self,
        model: CausalGenerator,
        schedule: FlowSchedule,
        config: LoopConfig,
        cache_config: CacheConfig,
        noise: NoiseSource,
    ) -> None:
        self.model, self.schedule, self.config = model, schedule, config
        self.noise = noise
        self.cache: KVCache
        self.cross: CrossAttentionCache
        self.cache, self.cross = model.new_caches(
            config.latent_hw, config.block_frames, cache_config, batch=config.batch
        )
        self.context: Tensor | None = None
        self.blocks_done = 0

    @property
    def block_shape(self) -> tuple[int, ...]:
        c = self.config
        return (c.batch, c.block_frames, self.model.latent_channels, *c.latent_hw)

    def set_context(self, context: Tensor) -> None:
        """Use new prompt embeddings [B, T, text_dim] from the next forward on."""
        self.context = context
        self.cross.invalidate()

    def _run(self, request: FlowRequest) -> None:
        """Run (or submit) a forward whose output nobody reads: a commit or a recache."""
        raise NotImplementedError

    def _commit(self, x0: Tensor, frame_index: int) -> None:
        """Write a clean block [B, F, C, H, W] into the cache (its keys, then bookkeeping)."""
        assert self.context is not None
        request = commit_request(
            self.schedule, x0, frame_index, self.context, self.cross, self.cache, self.noise
        )
        self._run(request)
        self.cache.commit(request.plan, x0)

    @torch.inference_mode()
    def recache(self, context: Tensor) -> None:
        """KV-recache: re-encode the remembered frames under a new prompt, by the cache's
        policy (engine.cache, "KV-recache").

        "blocks": the kept clean latents (sinks, then the window, in temporal order) are
        committed again block by block with the new prompt, so the cache holds what it
        would have held had the new prompt been active for those frames. "span":
        LongLive's single forward over the last recache_frames frames.
        """
        if self.cache.config.recache == "span":
            self._recache_span(context)
            return
        kept = self.cache.kept_frames()
        next_frame = self.cache.next_frame
        self.set_context(context)
        self.cache.reset()
        bf = self.config.block_frames
        for first, latents in kept:
            for j in range(0, latents.shape[1], bf):
                self._commit(latents[:, j : j + bf], first + j)
        self.cache.next_frame = next_frame

    def _recache_span(self, context: Tensor) -> None:
        self.set_context(context)
        plan = self.cache.plan_recache()
        if plan is None:
            return  # nothing generated yet: the new prompt simply applies
        x0 = self.cache.recent_latents(plan.num_frames)
        sigma = self.schedule.context_sigma
        x = x0 if sigma == 0 else add_noise(x0, self.noise(tuple(x0.shape)), sigma)
        t = torch.full((x0.shape[0], x0.shape[1]), 1000.0 * sigma, device=x0.device)
        assert self.context is not None
        self._run(FlowRequest(x, t, self.context, self.cross, self.cache, plan))
        self.cache.apply_recache(plan)

    def hard_cut(self, context: Tensor) -> None:
        """Start a new scene: forget all frames; positions continue from the current frame."""
        next_frame = self.cache.next_frame
        self.set_context(context)
        self.cache.reset()
        self.cache.next_frame = next_frame


class SubmittingLoop(CachedLoop):
    """A loop whose forwards go through an executor (one at a time, batched, or a
    pipeline; engine.executor), so work may run later than it is submitted."""

    def __init__(
        self,
        model: CausalGenerator,
        schedule: FlowSchedule,
        config: LoopConfig,
        cache_config: CacheConfig,
        noise: NoiseSource,
        executor: FlowExecutor,
    ) -> None:
        super().__init__(model, schedule, config, cache_config, noise)
        self.executor = executor

    def set_context(self, context: Tensor) -> None:
        """As CachedLoop.set_context; forwards already queued keep the prompt they had."""
        self.executor.flush()
        super().set_context(context)

    def _run(self, request: FlowRequest) -> None:
        """Submit; the cache's bookkeeping advances now (the executor keeps the order)."""
        self.executor.submit(request)


class DenoisingLoop(CachedLoop):
    """Generates clean latent blocks one at a time for one stream.

    Usage::

        loop = DenoisingLoop(model, FlowSchedule(), LoopConfig(3, (16, 16)),
                             CacheConfig.rolling_window(3, 12), SeededNoise(0))
        loop.set_context(embeddings)            # [B, T, text_dim]
        latents = loop.next_block()             # [B, 3, C, 16, 16]
    """

    def _timesteps(self, value: float, frames: int) -> Tensor:
        return torch.full((self.config.batch, frames), value, device=self.model.device)

    @torch.inference_mode()
    def next_block(self) -> Tensor:
        """Denoise and commit the next block; returns its clean latents [B, F, C, H, W]."""
        assert self.context is not None, "call set_context() before generating"
        s, cache = self.schedule, self.cache
        frames = self.config.block_frames
        x = self.noise(self.block_shape)
        plan = cache.plan(frames)
        x0 = x
        for i, t in enumerate(s.timesteps):
            flow = self.model.predict_flow(
                x, self._timesteps(t, frames), self.context, self.cross, cache, plan
            )
            x0, x = sampler_step(s, i, x, flow, self.noise)
        self._commit(x0, plan.frame_index)
        self.blocks_done += 1
        return x0

    def _run(self, request: FlowRequest) -> None:
        self.model.predict_flow(*request.args())
