"""The block-causal Wan2.1 DiT.

Module and parameter names, shapes and numerics follow the public WanModel,
so that Self-Forcing / CausVid / LongLive state dicts load with strict keys:

    patch_embedding             Conv3d(in_dim, dim, patch, stride=patch)
    text_embedding.{0,2}        Linear(text_dim, dim), GELU(tanh), Linear(dim, dim)
    time_embedding.{0,2}        Linear(freq_dim, dim), SiLU, Linear(dim, dim)
    time_projection.1           SiLU, Linear(dim, 6 * dim)
    blocks.N.modulation         [1, 6, dim]  shift/scale/gate for attention and FFN
    blocks.N.self_attn.{q,k,v,o}, .norm_q, .norm_k   (RMSNorm over the full dim)
    blocks.N.norm3              LayerNorm with affine, before cross-attention
    blocks.N.cross_attn.{q,k,v,o}, .norm_q, .norm_k
    blocks.N.ffn.{0,2}          Linear(dim, ffn_dim), GELU(tanh), Linear(ffn_dim, dim)
    head.modulation [1, 2, dim], head.head Linear(dim, out_dim * prod(patch))
    prompt_embedding.{0,2}      Linear(text_dim, dim), SiLU, Linear(dim, dim): only when
                                config.prompt_modulation (embedded models, not in Wan)

Causal changes (as in the reference causal models): timesteps are per frame, so
modulation is applied per frame; self-attention is block-causal, either with a
mask over the full sequence (training, reference) or against a KV cache
(streaming). The residual stream stays float32 and linear layers run in the
parameter dtype, which is what the reference gets from autocast.

Layouts: latents are [B, F, C, H, W] (frame-major, "BFCHW"); tokens are
[B, F*h*w, dim] in (frame, row, column) order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.cache import (
    BlockPlan,
    CacheConfig,
    CacheGeometry,
    CrossAttentionCache,
    KVCache,
)
from engine.protocols import FlowRequest, LayerRequest
from engine.rope import Rope3D, apply_rope
from models.wan.config import WanConfig

# (q_rotated, k_rotated, v, k_unrotated) [B, N, H, D] -> attention output [B, N, H, D]
SelfAttend = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the parameter dtype."""

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """[B, N, H*D] -> [B, N, H, D]."""
    return x.unflatten(-1, (num_heads, -1))


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q: nn.Module = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k: nn.Module = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attend: SelfAttend) -> Tensor:
        n = self.num_heads
        q = _heads(self.norm_q(self.q(x)), n)
        k = _heads(self.norm_k(self.k(x)), n)
        v = _heads(self.v(x), n)
        y = attend(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, k)
        return self.o(y.flatten(2))


class WanCrossAttention(WanSelfAttention):
    """Attention from video tokens to prompt tokens; the prompt's K/V are cached per prompt."""

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """context [B, T, dim] -> k, v [B, H, T, D]."""
        n = self.num_heads
        k = _heads(self.norm_k(self.k(context)), n).transpose(1, 2)
        v = _heads(self.v(context), n).transpose(1, 2)
        return k, v

    def attend(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = _heads(self.norm_q(self.q(x)), self.num_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).flatten(2))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor, frames: int) -> Tensor:
    """Per-frame adaLN: x [B, F*n, dim]; shift/scale [B, F, 1, dim]."""
    return (x.unflatten(1, (frames, -1)) * (1 + scale) + shift).flatten(1, 2)


def _gate(y: Tensor, gate: Tensor, frames: int) -> Tensor:
    return (y.float().unflatten(1, (frames, -1)) * gate).flatten(1, 2)


class WanAttentionBlock(nn.Module):
    def __init__(self, c: WanConfig) -> None:
        super().__init__()
        self.norm1 = WanLayerNorm(c.dim, c.eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(c.dim, c.num_heads, c.qk_norm, c.eps)
        self.norm3: nn.Module = (
            WanLayerNorm(c.dim, c.eps, elementwise_affine=True)
            if c.cross_attn_norm
            else nn.Identity()
        )
        self.cross_attn = WanCrossAttention(c.dim, c.num_heads, c.qk_norm, c.eps)
        self.norm2 = WanLayerNorm(c.dim, c.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(c.dim, c.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(c.ffn_dim, c.dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, c.dim) / c.dim**0.5)

    def forward(
        self,
        x: Tensor,
        e: Tensor,
        cos: Tensor,
        sin: Tensor,
        cross_kv: tuple[Tensor, Tensor],
        attend: SelfAttend,
        kv_only: bool = False,
    ) -> Tensor:
        """x: float32 [B, F*n, dim]; e: float32 [B, F, 6, dim].

        kv_only: stop once self-attention has run (a committing forward needs
        only the last layer's keys/values, not its output)."""
        frames, dtype = e.shape[1], self.self_attn.q.weight.dtype
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.unsqueeze(1) + e).chunk(
            6, dim=2
        )
        h = _modulate(self.norm1(x), shift1, scale1, frames).to(dtype)
        y = self.self_attn(h, cos, sin, attend)
        if kv_only:
            return x
        x = x + _gate(y, gate1, frames)
        x = x + self.cross_attn.attend(self.norm3(x).to(dtype), *cross_kv).float()
        h = _modulate(self.norm2(x), shift2, scale2, frames).to(dtype)
        return x + _gate(self.ffn(h), gate2, frames)


class Head(nn.Module):
    def __init__(self, c: WanConfig) -> None:
        super().__init__()
        self.norm = WanLayerNorm(c.dim, c.eps, elementwise_affine=False)
        self.head = nn.Linear(c.dim, c.out_dim * math.prod(c.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, c.dim) / c.dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x: [B, F*n, dim]; e: [B, F, dim] (time embedding before projection)."""
        frames = e.shape[1]
        shift, scale = (self.modulation.unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)
        h = _modulate(self.norm(x), shift, scale, frames).to(self.head.weight.dtype)
        return self.head(h)


def sinusoidal_embedding(dim: int, t: Tensor) -> Tensor:
    """[N] timesteps -> [N, dim] (cos half first, as the reference), computed in float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def pooled_prompt(context: Tensor) -> Tensor:
    """[B, T, D] token embeddings -> [B, D]: the unit-norm mean over real tokens.

    Rows that are all zero are padding (latent sets pad prompts to text_len, the
    engine passes them unpadded); both give the same vector, which is the sentence
    encoder's own sentence embedding (mean pooling, normalised).
    """
    real = (context.abs().sum(dim=-1, keepdim=True) > 0).to(context.dtype)
    mean = (context * real).sum(dim=1) / real.sum(dim=1).clamp_min(1.0)
    return F.normalize(mean.float(), dim=-1)


def block_causal_mask(
    frames: int, tokens_per_frame: int, block_frames: int, device: torch.device
) -> Tensor:
    """Bool [N, N]: token i may attend to token j iff j's block is not after i's."""
    block = torch.arange(frames, device=device).div(block_frames, rounding_mode="floor")
    block = block.repeat_interleave(tokens_per_frame)
    return block.unsqueeze(1) >= block.unsqueeze(0)


def teacher_forcing_mask(
    frames: int, tokens_per_frame: int, block_frames: int, device: torch.device
) -> Tensor:
    """Bool [2N, 2N] over (clean copy, noisy copy) of a clip, N = frames * tokens_per_frame.

    Clean tokens attend block-causally among clean tokens: exactly what a
    committed block sees in the KV cache. A noisy token attends to the clean
    tokens of earlier blocks and to the noisy tokens of its own block: exactly
    what the block being denoised sees at inference. Clean never sees noisy.
    """
    block = torch.arange(frames, device=device).div(block_frames, rounding_mode="floor")
    block = block.repeat_interleave(tokens_per_frame)
    q, k = block.unsqueeze(1), block.unsqueeze(0)
    top = torch.cat([q >= k, torch.zeros_like(q >= k)], dim=1)
    bottom = torch.cat([q > k, q == k], dim=1)
    return torch.cat([top, bottom], dim=0)


def _masked_attend(mask: Tensor) -> SelfAttend:
    """Self-attention over a whole sequence under a bool mask (the training paths)."""

    def attend(q: Tensor, k: Tensor, v: Tensor, k_raw: Tensor) -> Tensor:
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )
        return y.transpose(1, 2)

    return attend


class _CachedSelfAttend:
    """Self-attention of one block against the KV cache, for one layer."""

    def __init__(self, cache: KVCache, plan: BlockPlan, layer: int) -> None:
        self.cache, self.plan, self.layer = cache, plan, layer

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, k_raw: Tensor) -> Tensor:
        cache, plan, layer = self.cache, self.plan, self.layer
        k, v, k_raw = k.transpose(1, 2), v.transpose(1, 2), k_raw.transpose(1, 2)
        cache.write_scratch(layer, plan, k, v)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), cache.keys(layer, plan), cache.values(layer, plan)
        )
        cache.commit_block(layer, plan, k, v, k_raw)
        return y.transpose(1, 2)


def _split_attend(attends: list[_CachedSelfAttend], rows: list[int]) -> SelfAttend:
    """Self-attention for a batch of independent requests: each attends to its own cache."""

    def attend(q: Tensor, k: Tensor, v: Tensor, k_raw: Tensor) -> Tensor:
        parts = zip(
            attends, q.split(rows), k.split(rows), v.split(rows), k_raw.split(rows), strict=True
        )
        return torch.cat([a(*args) for a, *args in parts])

    return attend


class _DroppedBlock(nn.Module):
    """Stands in for a transformer block another pipeline stage owns."""

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        raise RuntimeError("this block belongs to another pipeline stage (keep_layers)")


class CausalWanModel(nn.Module):
    """Block-causal Wan DiT predicting flow (velocity) for latent frames.

    Usage::

        model = CausalWanModel(PRESETS["tiny"])
        cache, cross = model.new_caches((16, 16), block_frames=3, config=CacheConfig())
        plan = cache.plan(3)
        flow = model.predict_flow(x, t, context, cross, cache, plan)   # x: [B, 3, 16, 16, 16]
    """

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        c = self.config = config
        self.patch_embedding = nn.Conv3d(
            c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, c.dim * 6))
        self.prompt_embedding: nn.Sequential | None = None
        if c.prompt_modulation:
            self.prompt_embedding = nn.Sequential(
                nn.Linear(c.text_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim)
            )
        self.blocks = nn.ModuleList([WanAttentionBlock(c) for _ in range(c.num_layers)])
        self.head = Head(c)
        self.rope = Rope3D(c.head_dim)

    def layers(self) -> list[WanAttentionBlock]:
        """The transformer blocks, typed (nn.ModuleList iterates as plain Modules)."""
        return [cast(WanAttentionBlock, b) for b in self.blocks]

    # ---- protocol: engine.protocols.CausalGenerator ----

    @property
    def latent_channels(self) -> int:
        return self.config.in_dim

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    def grid_hw(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        _, ph, pw = self.config.patch_size
        h, w = latent_hw
        if h % ph or w % pw:
            raise ValueError(f"latent size {latent_hw} is not divisible by the patch {(ph, pw)}")
        return h // ph, w // pw

    def new_caches(
        self, latent_hw: tuple[int, int], block_frames: int, config: CacheConfig, *, batch: int = 1
    ) -> tuple[KVCache, CrossAttentionCache]:
        return self.new_stage_caches(latent_hw, block_frames, config, self.all_layers, batch=batch)

    def predict_flow(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        cross: CrossAttentionCache,
        cache: KVCache,
        plan: BlockPlan,
    ) -> Tensor:
        """Flow for one block against the cache; see engine.protocols.CausalGenerator.

        A committing plan only fills the cache and returns an empty tensor.
        """
        assert x.ndim == 5 and x.shape[1] == plan.num_frames, f"{x.shape=} {plan.num_frames=}"
        tokens = self.embed_block(x)
        tokens = self.run_layers(tokens, timesteps, context, cross, cache, plan, self.all_layers)
        if plan.commit:
            return tokens.new_empty(0)
        return self.head_out(tokens, timesteps, cache.geometry.grid_hw)

    def predict_flow_many(self, requests: Sequence[FlowRequest]) -> list[Tensor]:
        """Flows for several independent blocks in one batched forward (stream batch).

        Each request keeps its own cache, plan and prompt; only the linear layers
        are batched (the GPU win); attention runs per request against its own cache,
        in request order, so a committing request listed first is seen by the
        requests after it at every layer, as if it had run alone before them.
        Returns one flow per request (empty for committing requests).
        """
        if len(requests) == 1 or len({r.x.shape for r in requests}) > 1:
            return [self.predict_flow(*r.args()) for r in requests]
        layer_requests = [
            LayerRequest(self.embed_block(r.x), r.timesteps, r.context, r.cross, r.cache, r.plan)
            for r in requests
        ]
        tokens = self.run_layers_many(layer_requests, self.all_layers)
        grid = requests[0].cache.geometry.grid_hw
        return self.head_out_many(tokens, [r.timesteps for r in requests], grid, requests)

    def run_layers_many(self, requests: Sequence[LayerRequest], layers: range) -> list[Tensor]:
        """run_layers for several same-shaped requests in one batch (linear layers batched,
        attention per request in order; see predict_flow_many). Prompt caches that are
        not valid are filled first, so a request carrying a new prompt must come first."""
        if len(requests) == 1:
            r = requests[0]
            return [
                self.run_layers(r.tokens, r.timesteps, r.context, r.cross, r.cache, r.plan, layers)
            ]
        rows = [r.tokens.shape[0] for r in requests]
        tokens = torch.cat([r.tokens for r in requests])
        e0 = torch.cat([self.embed_modulation(r.timesteps, r.context) for r in requests])
        for r in requests:
            if not r.cross.valid:
                self.fill_cross_cache(r.context, r.cross, layers)
        pairs = list(zip(requests, rows, strict=True))
        cos = torch.cat([r.plan.cos.unsqueeze(0).expand(n, -1, -1, -1) for r, n in pairs])
        sin = torch.cat([r.plan.sin.unsqueeze(0).expand(n, -1, -1, -1) for r, n in pairs])
        shared_cross = all(r.cross is requests[0].cross for r in requests)
        last = self.config.num_layers - 1
        all_commit = all(r.plan.commit for r in requests)
        blocks = self.layers()
        for j, i in enumerate(layers):
            if shared_cross:
                k, v = requests[0].cross.k[j], requests[0].cross.v[j]
                cross_kv = (k.repeat(len(requests), 1, 1, 1), v.repeat(len(requests), 1, 1, 1))
            else:
                cross_kv = (
                    torch.cat([r.cross.k[j] for r in requests]),
                    torch.cat([r.cross.v[j] for r in requests]),
                )
            attend = _split_attend([_CachedSelfAttend(r.cache, r.plan, j) for r in requests], rows)
            kv_only = all_commit and i == last
            tokens = blocks[i](tokens, e0, cos, sin, cross_kv, attend, kv_only)
        return list(tokens.split(rows))

    def head_out_many(
        self,
        tokens: Sequence[Tensor],
        timesteps: Sequence[Tensor],
        grid_hw: tuple[int, int],
        requests: Sequence[FlowRequest | LayerRequest],
    ) -> list[Tensor]:
        """The output head over several requests at once; empty for committing ones."""
        keep = [i for i, r in enumerate(requests) if not r.plan.commit]
        out: list[Tensor] = [tokens[0].new_empty(0) for _ in requests]
        if keep:
            flows = self.head_out(
                torch.cat([tokens[i] for i in keep]),
                torch.cat([timesteps[i] for i in keep]),
                grid_hw,
            )
            for i, f in zip(keep, flows.split([tokens[i].shape[0] for i in keep]), strict=True):
                out[i] = f
        return out

    # ---- stages: the pieces a pipeline stage runs (engine.parallel) ----

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def token_dim(self) -> int:
        return self.config.dim

    @property
    def all_layers(self) -> range:
        return range(self.config.num_layers)

    def embed_block(self, x: Tensor) -> Tensor:
        """First stage: latents [B, F, C, H, W] -> float32 tokens [B, F*h*w, dim]."""
        return self.embed_video(x)[0]

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
        """Run transformer blocks ``layers`` (a contiguous range) on tokens [B, N, dim].

        ``cache`` and ``cross`` hold exactly these layers (a stage's own caches, or
        the whole model's when layers covers every block): cache layer j is model
        layer layers.start + j. A committing plan skips the output half of the
        model's very last block, whose result nobody reads.
        """
        assert cache.geometry.num_layers == len(layers), f"{cache.geometry.num_layers=} {layers=}"
        e0 = self.embed_modulation(timesteps, context)
        if not cross.valid:
            self.fill_cross_cache(context, cross, layers)
        last = self.config.num_layers - 1
        blocks = self.layers()
        for j, i in enumerate(layers):
            kv_only = plan.commit and i == last
            cross_kv = (cross.k[j], cross.v[j])
            attend = _CachedSelfAttend(cache, plan, j)
            tokens = blocks[i](tokens, e0, plan.cos, plan.sin, cross_kv, attend, kv_only)
        return tokens

    def head_out(self, tokens: Tensor, timesteps: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        """Last stage: tokens [B, F*h*w, dim] -> flow [B, F, C, H, W] float32."""
        e, _ = self.embed_time(timesteps)
        return self.unpatchify(self.head(tokens, e), timesteps.shape[1], *grid_hw)

    def new_stage_caches(
        self,
        latent_hw: tuple[int, int],
        block_frames: int,
        config: CacheConfig,
        layers: range,
        *,
        batch: int = 1,
    ) -> tuple[KVCache, CrossAttentionCache]:
        """Caches for the blocks ``layers`` only (a pipeline stage's share). An empty
        range gives bookkeeping-only caches: positions, ring slots and the kept
        latents, but no keys or values (what a pipeline's driver holds)."""
        c = self.config
        geometry = CacheGeometry(
            num_layers=len(layers),
            num_heads=c.num_heads,
            head_dim=c.head_dim,
            grid_hw=self.grid_hw(latent_hw),
            latent_shape=(c.in_dim, *latent_hw),
            block_frames=block_frames,
            batch=batch,
        )
        kv = KVCache(geometry, config, self.rope, dtype=self.dtype, device=self.device)
        cross = CrossAttentionCache(
            len(layers),
            batch,
            c.num_heads,
            c.text_len,
            c.head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        return kv, cross

    def keep_layers(self, layers: range) -> None:
        """Drop every transformer block outside ``layers`` (a stage frees what it never runs)."""
        for i in range(self.config.num_layers):
            if i not in layers:
                self.blocks[i] = _DroppedBlock()

    # ---- reference path: the whole sequence at once with a block-causal mask ----

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        *,
        block_frames: int,
        frame_offset: int = 0,
    ) -> Tensor:
        """Flow for a whole clip x [B, F, C, H, W] with block-causal attention (training and
        the reference the cached path is tested against). timesteps: [B, F]."""
        frames = x.shape[1]
        tokens, (h, w) = self.embed_video(x)
        e, _ = self.embed_time(timesteps)
        e0 = self.embed_modulation(timesteps, context)
        ctx = self.embed_text(context)
        positions = torch.arange(frame_offset, frame_offset + frames, device=x.device)
        cos, sin = self.rope.cos_sin(positions, h, w)
        attend = _masked_attend(block_causal_mask(frames, h * w, block_frames, x.device))

        for block in self.layers():
            tokens = block(tokens, e0, cos, sin, block.cross_attn.context_kv(ctx), attend)
        return self.unpatchify(self.head(tokens, e), frames, h, w)

    def forward_teacher(
        self,
        noisy: Tensor,
        noisy_timesteps: Tensor,
        clean: Tensor,
        clean_timesteps: Tensor,
        context: Tensor,
        *,
        block_frames: int,
    ) -> Tensor:
        """Teacher-forcing training forward (CausVid): flow for every block of ``noisy``
        [B, F, C, H, W], each conditioned on the clean (or lightly noised) earlier
        blocks of ``clean`` as if they sat in the KV cache. One pass trains all F
        frames under inference's exact attention pattern, at twice the tokens.
        Both copies take positions 0..F-1; timesteps are [B, F] each."""
        frames = noisy.shape[1]
        assert clean.shape == noisy.shape, f"{clean.shape=} {noisy.shape=}"
        tokens_clean, (h, w) = self.embed_video(clean)
        tokens_noisy, _ = self.embed_video(noisy)
        tokens = torch.cat([tokens_clean, tokens_noisy], dim=1)
        both = torch.cat([clean_timesteps, noisy_timesteps], dim=1)
        e, _ = self.embed_time(both)
        e0 = self.embed_modulation(both, context)
        ctx = self.embed_text(context)
        positions = torch.arange(frames, device=noisy.device).repeat(2)
        cos, sin = self.rope.cos_sin(positions, h, w)
        attend = _masked_attend(teacher_forcing_mask(frames, h * w, block_frames, noisy.device))

        for block in self.layers():
            tokens = block(tokens, e0, cos, sin, block.cross_attn.context_kv(ctx), attend)
        n = frames * h * w
        return self.unpatchify(self.head(tokens[:, n:], e[:, frames:]), frames, h, w)

    # ---- pieces ----

    def embed_video(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """[B, F, C, H, W] -> float32 tokens [B, F*h*w, dim] and the token grid (h, w)."""
        assert x.ndim == 5 and x.shape[2] == self.config.in_dim, f"{x.shape=}"
        y = self.patch_embedding(x.transpose(1, 2).to(self.dtype))  # [B, dim, F, h, w]
        return y.flatten(2).transpose(1, 2).float(), (y.shape[3], y.shape[4])

    def embed_time(self, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """[B, F] -> e [B, F, dim] and its projection e0 [B, F, 6, dim], both float32."""
        assert timesteps.ndim == 2, f"{timesteps.shape=}"
        b, f = timesteps.shape
        sin_emb = sinusoidal_embedding(self.config.freq_dim, timesteps.flatten())
        e = self.time_embedding(sin_emb.to(self.dtype)).float()
        e0 = self.time_projection(e.to(self.dtype)).float()
        return e.view(b, f, -1), e0.view(b, f, 6, -1)

    def embed_modulation(self, timesteps: Tensor, context: Tensor) -> Tensor:
        """[B, F] timesteps and [B, T, text_dim] prompt -> the blocks' e0 [B, F, 6, dim].

        Without prompt modulation this is embed_time's e0 (the reference). With it,
        the pooled prompt's embedding is added to the timestep embedding before the
        projection; the output head keeps the time-only embedding, so head_out needs
        no prompt (pipeline stages stay as they are).
        """
        if self.prompt_embedding is None:
            return self.embed_time(timesteps)[1]
        b, f = timesteps.shape
        e, _ = self.embed_time(timesteps)
        p = self.prompt_embedding(pooled_prompt(context).to(self.dtype)).float()  # [B, dim]
        e = e + p[:, None, :]
        return self.time_projection(e.to(self.dtype)).float().view(b, f, 6, -1)

    def embed_text(self, context: Tensor) -> Tensor:
        """[B, T, text_dim] -> [B, text_len, dim]; zero-padded to text_len as the reference."""
        c = self.config
        assert context.ndim == 3 and context.shape[2] == c.text_dim, f"{context.shape=}"
        if context.shape[1] > c.text_len:
            raise ValueError(
                f"prompt has {context.shape[1]} tokens, more than text_len={c.text_len}"
            )
        context = F.pad(context, (0, 0, 0, c.text_len - context.shape[1]))
        return self.text_embedding(context.to(self.dtype))

    @torch.inference_mode()
    def fill_cross_cache(
        self, context: Tensor, cross: CrossAttentionCache, layers: range | None = None
    ) -> None:
        """Encode the prompt into the cross-attention cache of ``layers`` (default: all)."""
        layers = self.all_layers if layers is None else layers
        ctx = self.embed_text(context)
        blocks = self.layers()
        for j, i in enumerate(layers):
            k, v = blocks[i].cross_attn.context_kv(ctx)
            cross.k[j].copy_(k)
            cross.v[j].copy_(v)
        cross.mark_filled()

    def unpatchify(self, tokens: Tensor, frames: int, h: int, w: int) -> Tensor:
        """[B, F*h*w, C*pt*ph*pw] -> float32 [B, F, C, h*ph, w*pw]."""
        c = self.config
        _, ph, pw = c.patch_size
        b = tokens.shape[0]
        u = tokens.float().view(b, frames, h, w, ph, pw, c.out_dim)
        u = torch.einsum("bfhwqrc->bfchqwr", u)
        return u.reshape(b, frames, c.out_dim, h * ph, w * pw)

    def init_weights(self, seed: int = 0, zero_head: bool = False) -> CausalWanModel:
        """Wan's initialisation, seeded. Wan zeroes the output head to train from scratch;
        random-weight runs keep it non-zero (std 0.02) so outputs depend on the input."""
        g = torch.Generator().manual_seed(seed)

        def fill(p: Tensor, fn: Callable[[Tensor], Tensor]) -> None:
            with torch.no_grad():
                p.copy_(fn(torch.empty(p.shape, dtype=torch.float32)).to(p.dtype))

        def xavier(p: Tensor, fan_in: int, fan_out: int) -> None:
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            fill(p, lambda t: t.uniform_(-bound, bound, generator=g))

        for m in self.modules():
            if isinstance(m, nn.Linear):
                xavier(m.weight, m.in_features, m.out_features)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        pw = self.patch_embedding.weight
        xavier(pw, pw[0].numel(), pw.shape[0])
        assert self.patch_embedding.bias is not None
        nn.init.zeros_(self.patch_embedding.bias)
        if self.prompt_embedding is not None:
            # zero-initialised output (adaLN-Zero style): training starts from the
            # time-only model and grows the prompt's influence
            out_layer = self.prompt_embedding[2]
            assert isinstance(out_layer, nn.Linear)
            nn.init.zeros_(out_layer.weight)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    fill(m.weight, lambda t: t.normal_(0.0, 0.02, generator=g))
        for mod in [b.modulation for b in self.layers()] + [self.head.modulation]:
            fill(mod, lambda t: t.normal_(0.0, 1.0, generator=g) / self.config.dim**0.5)
        if zero_head:
            nn.init.zeros_(self.head.head.weight)
        else:
            fill(self.head.head.weight, lambda t: t.normal_(0.0, 0.02, generator=g))
        return self
