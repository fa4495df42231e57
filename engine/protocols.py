"""What the engine needs from models; models implement these, engine never imports models."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from engine.cache import BlockPlan, CacheConfig, CrossAttentionCache, KVCache


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
