"""The denoising loops a session can pick, behind one interface.

- "plain": the Self-Forcing loop (engine.loop), the reference: k forwards per
  block, then a commit, one block at a time.
- "stream_batch": one block per denoising step in flight, one block out per
  forward (engine.stream_batch); a reordering of its own sequential schedule.
- "rolling": a window of blocks at staggered noise levels denoised jointly
  (Rolling Forcing, engine.rolling); an approximation of the plain loop.
"""

from __future__ import annotations

from typing import Literal, Protocol

from torch import Tensor

from engine.cache import CacheConfig, CrossAttentionCache, KVCache
from engine.loop import DenoisingLoop, LoopConfig, NoiseSource
from engine.protocols import CausalGenerator
from engine.schedule import FlowSchedule

Denoiser = Literal["plain", "stream_batch", "rolling"]
DENOISERS: tuple[Denoiser, ...] = ("plain", "stream_batch", "rolling")


class BlockLoop(Protocol):
    """What a session needs from a denoising loop."""

    cache: KVCache
    cross: CrossAttentionCache
    blocks_done: int

    def set_context(self, context: Tensor) -> None: ...

    def next_block(self) -> Tensor:
        """The next clean block [B, F, C, H, W], committed to the cache."""
        ...

    def recache(self, context: Tensor) -> None: ...

    def hard_cut(self, context: Tensor) -> None: ...


def make_loop(
    denoiser: Denoiser,
    model: CausalGenerator,
    schedule: FlowSchedule,
    config: LoopConfig,
    cache_config: CacheConfig,
    noise: NoiseSource,
) -> BlockLoop:
    if denoiser == "plain":
        return DenoisingLoop(model, schedule, config, cache_config, noise)
    if denoiser == "stream_batch":
        from engine.stream_batch import StreamBatchLoop

        return StreamBatchLoop(model, schedule, config, cache_config, noise)
    if denoiser == "rolling":
        from engine.rolling import RollingLoop

        return RollingLoop(model, schedule, config, cache_config, noise)
    raise ValueError(f"unknown denoiser {denoiser!r}; choose one of {DENOISERS}")
