"""What the engine needs from models; models implement these, engine never imports models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from engine.cache import BlockPlan, CacheConfig, CrossAttentionCache, KVCache


@dataclass(frozen=True)
class FlowRequest:
    """One forward of a block: the arguments of CausalGenerator.predict_flow, kept together
    so that several (from one stream batch, or several sessions) can run as one batch or
    travel a pipeline."""

    x: Tensor  # [B, F, C, H, W]
    timesteps: Tensor  # [B, F] on the 0..1000 scale
    context: Tensor  # [B, T, text_dim]
    cross: CrossAttentionCache
    cache: KVCache
    plan: BlockPlan

    def args(self) -> tuple[Tensor, Tensor, Tensor, CrossAttentionCache, KVCache, BlockPlan]:
        return self.x, self.timesteps, self.context, self.cross, self.cache, self.plan


@dataclass(frozen=True)
class LayerRequest:
    """A forward's activations between pipeline stages: tokens [B, N, dim] instead of x."""

    tokens: Tensor
    timesteps: Tensor
    context: Tensor
    cross: CrossAttentionCache
    cache: KVCache
    plan: BlockPlan


@runtime_checkable
class CausalGenerator(Protocol):
    """A block-causal flow-matching generator over latent frames."""

    @property
    def latent_channels(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def new_caches(
        self, latent_hw: tuple[int, int], block_frames: int, config: CacheConfig, *, batch: int = 1
    ) -> tuple[KVCache, CrossAttentionCache]:
        """Allocate this model's self-attention and prompt caches for one stream."""
        ...

    def predict_flow(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        cross: CrossAttentionCache,
        cache: KVCache,
        plan: BlockPlan,
    ) -> Tensor:
        """Flow (velocity) for one block.

        x: [B, F, C, H, W] latents at the noise levels timesteps [B, F] (0..1000);
        context: [B, T, text_dim] prompt embeddings (encoded into ``cross`` when it
        is invalid). Reads the cache as ``plan`` says; writes it only when the plan
        commits. Returns float32 [B, F, C, H, W].
        """
        ...


@runtime_checkable
class StreamingDecoder(Protocol):
    """Latent frames in, RGB frames out, with a small memory carried between pushes.

    Usage::

        dec.reset()
        for latents in blocks:              # [B, F, C, h, w]
            rgb = dec.push(latents)         # [B, F * frames_per_latent, 3, H, W] in [0, 1]
        rgb = dec.flush()                   # whatever is still held back (may be empty)
    """

    frames_per_latent: int
    upscale: int

    def reset(self) -> None: ...

    def push(self, latents: Tensor) -> Tensor: ...

    def flush(self) -> Tensor: ...


@runtime_checkable
class PromptEncoder(Protocol):
    """Turns a prompt into the embeddings a generator's cross-attention expects."""

    def encode(self, prompt: str) -> Tensor:
        """[T, text_dim] float32 for one prompt."""
        ...


class GeneratorWrapper:
    """A CausalGenerator that hands everything to another one; subclasses change one
    thing (time, count or fail its forwards) by overriding predict_flow."""

    def __init__(self, inner: CausalGenerator) -> None:
        self.inner = inner

    @property
    def latent_channels(self) -> int:
        return self.inner.latent_channels

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def new_caches(
        self, latent_hw: tuple[int, int], block_frames: int, config: CacheConfig, *, batch: int = 1
    ) -> tuple[KVCache, CrossAttentionCache]:
        return self.inner.new_caches(latent_hw, block_frames, config, batch=batch)

    def predict_flow(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        cross: CrossAttentionCache,
        cache: KVCache,
        plan: BlockPlan,
    ) -> Tensor:
        return self.inner.predict_flow(x, timesteps, context, cross, cache, plan)


@runtime_checkable
class BatchedGenerator(CausalGenerator, Protocol):
    """A generator that can run several independent block forwards in one batch."""

    def predict_flow_many(self, requests: Sequence[FlowRequest]) -> list[Tensor]:
        """One flow per request (empty for committing requests), as if each ran alone,
        in order: a committing request is seen by the requests after it."""
        ...


@runtime_checkable
class LayeredGenerator(CausalGenerator, Protocol):
    """A generator whose forward splits into stages of contiguous transformer blocks
    (what engine.parallel needs to pipeline a model it never imports)."""

    @property
    def num_layers(self) -> int: ...

    @property
    def token_dim(self) -> int:
        """Width of the activations passed between stages."""
        ...

    def embed_block(self, x: Tensor) -> Tensor:
        """First stage: latents [B, F, C, H, W] -> tokens [B, N, dim] float32."""
        ...

    def run_layers(
        self,
        tokens: Tensor,
        timesteps: Tensor,
        context: Tensor,
        cross: CrossAttentionCache,
        cache: KVCache,
        plan: BlockPlan,
        layers: range,
    ) -> Tensor:
        """Blocks ``layers`` on tokens [B, N, dim], with caches holding exactly those layers."""
        ...

    def head_out(self, tokens: Tensor, timesteps: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        """Last stage: tokens [B, N, dim] -> flow [B, F, C, H, W] float32."""
        ...

    def run_layers_many(self, requests: Sequence[LayerRequest], layers: range) -> list[Tensor]:
        """run_layers for several same-shaped requests as one batch, exactly as if run in
        order; a request that carries a new prompt must come first."""
        ...

    def head_out_many(
        self,
        tokens: Sequence[Tensor],
        timesteps: Sequence[Tensor],
        grid_hw: tuple[int, int],
        requests: Sequence[LayerRequest],
    ) -> list[Tensor]:
        """head_out over several requests; empty tensors for committing ones."""
        ...

    def new_stage_caches(
        self,
        latent_hw: tuple[int, int],
        block_frames: int,
        config: CacheConfig,
        layers: range,
        *,
        batch: int = 1,
    ) -> tuple[KVCache, CrossAttentionCache]:
        """Caches for blocks ``layers`` only; an empty range gives bookkeeping-only caches."""
        ...

    def keep_layers(self, layers: range) -> None:
        """Free the blocks outside ``layers``."""
        ...
