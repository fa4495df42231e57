"""The Wan2.1 VAE (a causal 3-D convolutional autoencoder) and its streaming decoder.

Layouts: the public methods take and give NTCHW (``[B, T, C, H, W]``, the engine's layout);
inside, every layer works on NCTHW (``[B, C, T, H, W]``, what Conv3d wants). Pixels are on
the VAE's own scale, about [-1, 1]; the streaming decoder maps them to [0, 1]. Latents at
the public boundary are *normalised* (``(mu - mean) / std`` per channel): what the Wan DiT
denoises and what Self-Forcing's ``WanVAEWrapper`` passes to ``decode``. Space is compressed
8x and time 4x: a clip of ``1 + 4k`` frames has ``1 + k`` latent frames.

Facts carried over from Wan-Video/Wan2.1 ``wan/modules/vae.py`` at commit 9737cba (the layer
structure, parameter names, the released configuration and the latent statistics; not its
code):

- Released shape (``_video_vae``): base width 96, 16 latent channels, width multipliers
  (1, 2, 4, 4), 2 residual blocks per encoder stage (3 per decoder stage), no attention in
  the stages, temporal downsampling in encoder transitions (False, True, True) and
  upsampling in decoder transitions (True, True, False). 126,892,531 parameters in 194
  tensors, stored flat (no wrapper key) in ``Wan2.1_VAE.pth``.
- Causal conv: time padding ``2 * pad`` on the past side only, zeros at the start of a clip.
- RMS norm: ``normalize(x, over channels) * sqrt(C) * gamma``, no bias.
- Residual block: ``residual = [norm, SiLU, conv3, norm, SiLU, dropout, conv3]`` (parameter
  indices 0, 2, 3, 6), ``shortcut`` a 1x1x1 conv when the width changes.
- Attention block: per frame, one head over all pixels, width C; 1x1 ``to_qkv`` (q, k, v
  in that channel order) and ``proj``; RMS norm first; residual.
- Encoder: ``conv1`` (3 -> 96), stages of residual blocks each followed (except the last)
  by a ``Resample`` (``resample.1`` a stride-2 3x3 conv after zero padding right/bottom;
  with ``time_conv`` a (3, 1, 1) stride-2 unpadded conv in time), ``middle`` =
  [res, attention, res], ``head`` = [norm, SiLU, conv3 -> 2 * z_dim]; then the VAE's
  ``conv1`` (1x1x1, 2z -> 2z) whose first z channels are the mean.
- Decoder: the VAE's ``conv2`` (1x1x1, z -> z), ``conv1`` (z -> 384), ``middle``, stages of
  3 residual blocks each followed (except the last) by a ``Resample`` (``resample.1`` a 3x3
  conv halving the width after 2x nearest upsampling; with ``time_conv`` a (3, 1, 1) causal
  conv doubling the channels, read as two frames interleaved in time), ``head`` = [norm,
  SiLU, conv3 -> 3]. A stage after an upsample starts at half the previous width.
- The reference decodes one latent frame at a time with a per-conv cache of the last two
  input frames, and encodes the first frame alone, then 4 frames at a time. The temporal
  resample layers treat the first frame of a clip on its own: the decoder passes it through
  without the time conv (1 frame out, not 2), the encoder passes it through without the
  stride-2 time conv. So F latent frames decode to ``1 + 4(F - 1)`` frames.
- Latent statistics (``WanVAE.__init__``): the 16 means and standard deviations below;
  ``decode`` takes ``z * std + mean``, ``encode`` gives ``(mu - mean) / std``.
- The reference wrapper clamps decoded pixels to [-1, 1]; Self-Forcing then maps them with
  ``x * 0.5 + 0.5`` to [0, 1].

Streaming equals whole-clip decoding: every causal conv sees its input with its last
frames from the previous push prepended (zeros before the first push), and the temporal
resample layers know from the cache whether the first frame of the stream has gone by.
Cutting the latents into pushes of any size changes nothing but float rounding.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.wan.loader import CheckpointError

log = logging.getLogger(__name__)

# Per-channel statistics of Wan2.1 latents (Wan-Video/Wan2.1 wan/modules/vae.py at commit
# 9737cba, class WanVAE); Self-Forcing's WanVAEWrapper uses the same numbers.
WAN21_LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

RELEASE_FILE = "Wan2.1_VAE.pth from the Wan2.1-T2V-1.3B release (Wan-AI/Wan2.1-T2V-1.3B)"
_LIST_LIMIT = 12  # key names shown per category in a load error


@dataclass(frozen=True)
class WanVAEConfig:
    """Shape of a Wan2.1-style VAE; the defaults are the released ``Wan2.1_VAE.pth``."""

    dim: int = 96  # width of the first encoder stage (and of the last decoder stage)
    z_dim: int = 16  # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # stage widths are dim * mult
    num_res_blocks: int = 2  # per encoder stage; decoder stages have one more
    # Stage scales (1 at full resolution, halving per downsample; the decoder's first stage
    # counts as 1 / 2**(stages - 2), as in the reference) that get an attention block after
    # every residual block. Empty in the release: only the middle blocks attend.
    attn_scales: tuple[float, ...] = ()
    # Per encoder stage transition: does it halve time too? The decoder mirrors this.
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latent_mean: tuple[float, ...] = WAN21_LATENT_MEAN  # per latent channel
    latent_std: tuple[float, ...] = WAN21_LATENT_STD  # per latent channel

    def __post_init__(self) -> None:
        if self.dim < 1 or self.z_dim < 1 or self.num_res_blocks < 1:
            raise ValueError(f"dim, z_dim and num_res_blocks must be positive: {self}")
        if len(self.dim_mult) < 2 or min(self.dim_mult) < 1:
            raise ValueError(f"dim_mult needs >= 2 positive multipliers, got {self.dim_mult}")
        if any(self.dim * m % 2 for m in self.dim_mult):
            raise ValueError(f"decoder upsampling halves widths; dim * mult must be even: {self}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs one flag per stage transition "
                f"({len(self.dim_mult) - 1}), got {self.temporal_downsample}"
            )
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise ValueError(f"latent_mean and latent_std need z_dim={self.z_dim} values each")
        if min(self.latent_std) <= 0:
            raise ValueError(f"latent_std must be positive, got {self.latent_std}")

    @classmethod
    def wan2_1(cls) -> WanVAEConfig:
        """The released ``Wan2.1_VAE.pth`` (Wan2.1 T2V/I2V, 1.3B and 14B; Self-Forcing, ...)."""
        return cls()

    @classmethod
    def tiny(cls) -> WanVAEConfig:
        """Test widths (4..8 channels), same layer layout and latents as the release."""
        return cls(dim=4, dim_mult=(1, 2, 2, 2))

    @property
    def frames_per_latent(self) -> int:
        """Video frames per latent frame (after the first, which gives one)."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def upscale(self) -> int:
        """Pixels per latent pixel along each side."""
        return 2 ** (len(self.dim_mult) - 1)

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------- stream memory


class FeatureCache:
    """One stream's memory for one half (encoder or decoder) of a WanVAE.

    ``tails[slot]``: the last input frames ``[B, C, n, H, W]`` of stateful layer ``slot``
    (a causal conv keeps ``kernel_t - 1`` frames, the encoder's stride-2 time conv 1). They
    start as zeros, which is exactly the causal zero padding at the start of a clip, are
    allocated on first use and then overwritten in place, so memory does not grow with the
    stream. ``started``: the first frame of the stream has gone through (the temporal
    resample layers treat it on its own).
    """

    def __init__(self, slots: int) -> None:
        self.tails: list[Tensor | None] = [None] * slots
        self.started = False

    def reset(self) -> None:
        """A fresh stream, keeping the allocations."""
        for tail in self.tails:
            if tail is not None:
                tail.zero_()
        self.started = False

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tails if t is not None)

    def prepend(self, slot: int, x: Tensor, frames: int) -> Tensor:
        """``cat([tail, x])`` along time ([B, C, n + T, H, W]); keeps its last n frames."""
        tail = self.tails[slot]
        if tail is None:
            tail = x.new_zeros((x.shape[0], x.shape[1], frames, *x.shape[3:]))
            self.tails[slot] = tail
        assert tail.shape[:2] == x.shape[:2] and tail.shape[3:] == x.shape[3:], (
            f"stream shape changed: {tail.shape=} {x.shape=}"
        )
        out = torch.cat([tail, x], dim=2)
        tail.copy_(out[:, :, -frames:])
        return out


# ---------------------------------------------------------------- layers (NCTHW)


class CausalConv3d(nn.Conv3d):
    """Conv3d that sees only the past in time: [B, C, T, H, W] -> [B, C', T', H, W].

    Spatial padding is "same"; in time the ``kernel_t - 1`` past frames come from the
    stream's cache (zeros at the start). ``pad_time=False`` (the encoder's stride-2 time
    conv) pads nothing: its owner supplies the past frame.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int | tuple[int, int, int],
        *,
        time_stride: int = 1,
        pad_time: bool = True,
    ) -> None:
        kt, kh, kw = (kernel, kernel, kernel) if isinstance(kernel, int) else kernel
        super().__init__(
            c_in, c_out, (kt, kh, kw), stride=(time_stride, 1, 1), padding=(0, kh // 2, kw // 2)
        )
        self.tail_frames = kt - 1 if pad_time else 0
        self.slot = -1  # index into a FeatureCache, set by the encoder / decoder

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        if self.tail_frames:
            if cache is None:  # a whole clip from its first frame: zeros before it
                x = F.pad(x, (0, 0, 0, 0, self.tail_frames, 0))
            else:
                x = cache.prepend(self.slot, x, self.tail_frames)
        return super().forward(x)


class RMSNorm(nn.Module):
    """``normalize(x over channels) * sqrt(C) * gamma`` at every position; x is [B, C, ...]."""

    def __init__(self, dim: int, *, image: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        # The checkpoint stores gamma as [C, 1, 1, 1] for video norms, [C, 1, 1] for the
        # attention block's image norm.
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if image else torch.ones(dim, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        gamma = self.gamma.view(-1, *([1] * (x.ndim - 2)))
        return F.normalize(x, dim=1) * self.scale * gamma


class ResidualBlock(nn.Module):
    """Two causal 3x3x3 convs after RMS norm + SiLU, plus a (1x1x1 when widths differ) skip."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        # Sequential only for the checkpoint's indices (0, 2, 3, 6); slot 5 was dropout.
        self.residual = nn.Sequential(
            RMSNorm(c_in),
            nn.SiLU(),
            CausalConv3d(c_in, c_out, 3),
            RMSNorm(c_out),
            nn.SiLU(),
            nn.Identity(),
            CausalConv3d(c_out, c_out, 3),
        )
        self.shortcut: nn.Module = CausalConv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        r = self.residual
        h = r[2](F.silu(r[0](x)), cache)
        h = r[6](F.silu(r[3](h)), cache)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (time-local), residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, image=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        # ``cache`` is unused (nothing crosses frames); taken so every block has one signature.
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)
        qkv = F.linear(tokens, self.to_qkv.weight.flatten(1), self.to_qkv.bias)
        q, k, v = qkv.chunk(3, dim=-1)  # channel order q, k, v: the checkpoint's
        y = F.scaled_dot_product_attention(q, k, v)  # [B*T, 1, H*W, C]
        y = F.linear(y, self.proj.weight.flatten(1), self.proj.bias)
        return x + y.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


ResampleMode = Literal["up2d", "up3d", "down2d", "down3d"]


class Resample(nn.Module):
    """2x up or down in space, and (``*3d``) 2x in time, on [B, C, T, H, W].

    The spatial convs are stored as Conv2d (the checkpoint's shapes) and run as (1, k, k)
    Conv3d on every frame, which avoids moving time into the batch dimension.

    Time: ``up3d`` turns every frame but the stream's first into two (a causal time conv
    to 2C channels, read as [frame a | frame b]); ``down3d`` keeps the stream's first frame
    and then makes one frame from each window (previous, this, next) with stride 2, so
    ``1 + 2n`` frames become ``1 + n``.
    """

    def __init__(self, dim: int, mode: ResampleMode) -> None:
        super().__init__()
        self.mode = mode
        self.tail_frames = 1 if mode == "down3d" else 0
        self.slot = -1
        # Sequentials only for the checkpoint's index 1 (index 0 was upsample / zero pad).
        if mode in ("up2d", "up3d"):
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.Identity(), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "up3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1))
        elif mode == "down3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), time_stride=2, pad_time=False)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        started = cache is not None and cache.started
        conv = self.resample[1]
        assert isinstance(conv, nn.Conv2d)
        weight = conv.weight.unsqueeze(2)  # [C', C, 1, 3, 3]
        if self.mode in ("up2d", "up3d"):
            if self.mode == "up3d":
                x = self._double_time(x, cache, started)
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
            return F.conv3d(x, weight, conv.bias, padding=(0, 1, 1))
        x = F.conv3d(F.pad(x, (0, 1, 0, 1)), weight, conv.bias, stride=(1, 2, 2))
        if self.mode == "down3d":
            x = self._halve_time(x, cache, started)
        return x

    def _double_time(self, x: Tensor, cache: FeatureCache | None, started: bool) -> Tensor:
        b, c, _, h, w = x.shape
        first, rest = (x[:, :, :0], x) if started else (x[:, :, :1], x[:, :, 1:])
        if rest.shape[2] == 0:
            return first
        y = self.time_conv(rest, cache)  # [B, 2C, T, H, W]: channels [frame a | frame b]
        y = y.unflatten(1, (2, c)).permute(0, 2, 3, 1, 4, 5).reshape(b, c, -1, h, w)
        return torch.cat([first, y], dim=2)

    def _halve_time(self, x: Tensor, cache: FeatureCache | None, started: bool) -> Tensor:
        # Windows start at the stream's first frame; the cache keeps the frame that a
        # window starting in the next push needs (the last one of this push).
        if cache is None:
            hist = x
        else:
            hist = cache.prepend(self.slot, x, 1)
            if not started:
                hist = hist[:, :, 1:]  # no past before the first frame
        assert hist.shape[2] % 2 == 1, f"need 1 + 2n frames at the start, 2n later: {x.shape=}"
        out = [] if started else [x[:, :, :1]]
        if hist.shape[2] >= 3:
            out.append(self.time_conv(hist))
        return torch.cat(out, dim=2)


def _assign_slots(module: nn.Module) -> int:
    """Number the layers that keep frames between pushes; returns how many there are."""
    slots = 0
    for m in module.modules():
        if isinstance(m, (CausalConv3d, Resample)) and m.tail_frames > 0:
            m.slot = slots
            slots += 1
    return slots


class Encoder3d(nn.Module):
    """Pixels [B, 3, 1 + 4k, H, W] -> [B, 2 * z_dim, 1 + k, H / 8, W / 8] (mean | log-var)."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3)
        blocks: list[nn.Module] = []
        scale = 1.0
        for i, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(c_in, c_out))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(c_out))
                c_in = c_out
            if i < len(cfg.dim_mult) - 1:
                blocks.append(Resample(c_out, "down3d" if cfg.temporal_downsample[i] else "down2d"))
                scale /= 2
        self.downsamples = nn.Sequential(*blocks)
        c = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        self.head = nn.Sequential(RMSNorm(c), nn.SiLU(), CausalConv3d(c, 2 * cfg.z_dim, 3))
        self.num_slots = _assign_slots(self)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        x = self.conv1(x, cache)
        for block in (*self.downsamples, *self.middle):
            x = block(x, cache)
        x = self.head[2](F.silu(self.head[0](x)), cache)
        if cache is not None:
            cache.started = True
        return x


class Decoder3d(nn.Module):
    """Latents [B, z_dim, F, h, w] -> pixels [B, 3, 1 + 4(F - 1), 8h, 8w] (4F once started)."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dim * m for m in (mult[-1], *reversed(mult))]
        temporal_upsample = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3)
        c = dims[0]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        blocks: list[nn.Module] = []
        scale = 1.0 / 2 ** (len(mult) - 2)
        for i, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
            if i > 0:
                c_in //= 2  # the previous stage's upsample conv halved the width
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(c_in, c_out))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(c_out))
                c_in = c_out
            if i < len(mult) - 1:
                blocks.append(Resample(c_out, "up3d" if temporal_upsample[i] else "up2d"))
                scale *= 2
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3))
        self.num_slots = _assign_slots(self)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        x = self.conv1(x, cache)
        for block in (*self.middle, *self.upsamples):
            x = block(x, cache)
        x = self.head[2](F.silu(self.head[0](x)), cache)
        if cache is not None:
            cache.started = True
        return x


# ---------------------------------------------------------------- the VAE


class WanVAE(nn.Module):
    """The Wan2.1 VAE: weights and stateless clip functions (streams keep a FeatureCache).

    Parameter names match ``Wan2.1_VAE.pth``: ``encoder.*``, ``conv1.*`` (encoder side),
    ``conv2.*`` (decoder side), ``decoder.*``. Inference only where a cache is used (the
    cache is overwritten in place).

    Usage::

        vae = load_wan_vae("Wan2.1_VAE.pth", device="cuda", dtype=torch.bfloat16)
        video = vae.decode(latents)       # [B, F, 16, h, w] -> [B, 1 + 4(F-1), 3, 8h, 8w]
        latents = vae.encode(video)       # [B, 1 + 4k, 3, H, W] in [-1, 1] -> [B, 1 + k, ...]
    """

    def __init__(self, config: WanVAEConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = Encoder3d(c)
        self.conv1 = CausalConv3d(2 * c.z_dim, 2 * c.z_dim, 1)
        self.conv2 = CausalConv3d(c.z_dim, c.z_dim, 1)
        self.decoder = Decoder3d(c)
        self.latent_mean: Tensor
        self.latent_std: Tensor
        self._init_latent_stats()

    def _init_latent_stats(self) -> None:
        """(Re)make the normalisation buffers (not in the checkpoint; real after a meta build)."""
        c = self.config
        device = None if self.conv2.weight.is_meta else self.conv2.weight.device
        dtype = self.conv2.weight.dtype
        for name, values in (("latent_mean", c.latent_mean), ("latent_std", c.latent_std)):
            t = torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1, 1)
            self.register_buffer(name, t, persistent=False)

    def new_decoder_cache(self) -> FeatureCache:
        return FeatureCache(self.decoder.num_slots)

    def new_encoder_cache(self) -> FeatureCache:
        return FeatureCache(self.encoder.num_slots)

    # ---- decoding

    def decode_step(self, latents: Tensor, cache: FeatureCache | None) -> Tensor:
        """Normalised latents [B, F, z, h, w] -> pixels [B, T, 3, 8h, 8w], about [-1, 1].

        T is ``1 + 4(F - 1)`` for the stream's first step (or ``cache=None``: a whole clip)
        and 4F afterwards. Not clamped.
        """
        c = self.config
        assert latents.ndim == 5 and latents.shape[2] == c.z_dim, (
            f"expected [B, F, {c.z_dim}, h, w] latents, got {latents.shape=}"
        )
        assert latents.shape[1] >= 1, f"no latent frames: {latents.shape=}"
        z = latents.transpose(1, 2).to(self.latent_std)  # [B, z, F, h, w], the VAE's dtype
        z = z * self.latent_std + self.latent_mean
        return self.decoder(self.conv2(z), cache).transpose(1, 2)

    def decode(self, latents: Tensor, *, latents_per_step: int | None = 1) -> Tensor:
        """A whole clip: normalised latents [B, F, z, h, w] -> [B, 1 + 4(F - 1), 3, 8h, 8w].

        Pixels on the VAE's scale (about [-1, 1], not clamped). ``latents_per_step`` bounds
        memory as the reference does (1: one latent frame at a time with a cache); None
        decodes all frames in one pass (no cache, gradients allowed).
        """
        if latents_per_step is None:
            return self.decode_step(latents, None)
        cache = self.new_decoder_cache()
        steps = latents.split(latents_per_step, dim=1)
        return torch.cat([self.decode_step(z, cache) for z in steps], dim=1)

    # ---- encoding

    def encode_step(self, video: Tensor, cache: FeatureCache | None) -> Tensor:
        """Pixels [B, T, 3, H, W] in [-1, 1] -> normalised latent means [B, F, z, H/8, W/8].

        T is ``1 + 4k`` for the stream's first step (or ``cache=None``) and 4k afterwards.
        """
        c = self.config
        n = c.frames_per_latent
        assert video.ndim == 5 and video.shape[2] == 3, f"expected [B, T, 3, H, W]: {video.shape=}"
        assert video.shape[-2] % c.upscale == 0 and video.shape[-1] % c.upscale == 0, (
            f"H and W must be multiples of {c.upscale}: {video.shape=}"
        )
        first = cache is None or not cache.started
        assert video.shape[1] % n == (1 if first else 0), (
            f"need {'1 + ' if first else ''}{n}k frames in this step: {video.shape=}"
        )
        x = video.transpose(1, 2).to(self.latent_std)  # [B, 3, T, H, W], the VAE's dtype
        mu = self.conv1(self.encoder(x, cache))[:, : c.z_dim]
        return ((mu - self.latent_mean) / self.latent_std).transpose(1, 2)

    def encode(self, video: Tensor, *, latents_per_step: int | None = 1) -> Tensor:
        """A whole clip: [B, 1 + 4k, 3, H, W] in [-1, 1] -> normalised means [B, 1 + k, z, ...].

        ``latents_per_step=1`` encodes the first frame, then 4 frames at a time, with a
        cache (the reference's chunking); None encodes all frames in one pass.
        """
        if latents_per_step is None:
            return self.encode_step(video, None)
        cache = self.new_encoder_cache()
        rest = video[:, 1:]
        steps = [video[:, :1]]
        if rest.shape[1]:
            steps += list(rest.split(latents_per_step * self.config.frames_per_latent, dim=1))
        return torch.cat([self.encode_step(x, cache) for x in steps], dim=1)


# ---------------------------------------------------------------- streaming decoder

_StreamKey = tuple[int, int, int, torch.dtype, torch.device]  # B, h, w, dtype, device


class WanVAEStreamingDecoder:
    """engine.protocols.StreamingDecoder over a WanVAE: normalised latents in, RGB out.

    Each push decodes its latent frames in one pass over time (or ``latents_per_step`` at
    a time), with every causal conv's last input frames kept from the previous push in a
    FeatureCache: allocated on the first push, overwritten in place afterwards (memory does
    not grow with the stream). ``reset()`` zeroes it, which is exactly a fresh stream.

    The first push of F latent frames gives ``1 + 4(F - 1)`` frames (the Wan VAE's frame
    count, like the TAEHV ``wan2_1`` preset's trim), every later push 4F; nothing is held
    back, so ``flush()`` is empty. Output is float32 RGB in [0, 1]: the reference's
    ``clamp(-1, 1) * 0.5 + 0.5``. Several decoders can share one WanVAE (one per stream).

    Usage::

        dec = WanVAEStreamingDecoder(load_wan_vae(path, device="cuda", dtype=torch.bfloat16))
        dec.reset()
        for latents in blocks:            # [1, F, 16, h, w], normalised (the DiT's)
            rgb = dec.push(latents)       # [1, 4F, 3, 8h, 8w] (1 + 4(F - 1) the first time)
        rgb = dec.flush()                 # [1, 0, 3, 8h, 8w]
    """

    def __init__(self, vae: WanVAE, *, latents_per_step: int | None = None) -> None:
        self.vae = vae
        self.frames_per_latent = vae.config.frames_per_latent
        self.upscale = vae.config.upscale
        self.latents_per_step = latents_per_step
        self._cache = vae.new_decoder_cache()
        self._key: _StreamKey | None = None

    def reset(self) -> None:
        """Start a new stream: zero the cache in place (the same as a fresh decoder)."""
        with torch.inference_mode():
            self._cache.reset()

    def push(self, latents: Tensor) -> Tensor:
        """[B, F, z, h, w] -> [B, 4F, 3, 8h, 8w] float32 in [0, 1] (1 + 4(F - 1) at first)."""
        assert latents.ndim == 5, f"expected [B, F, C, h, w] latents, got {latents.shape=}"
        b, _, _, h, w = latents.shape
        key: _StreamKey = (b, h, w, latents.dtype, latents.device)
        if key != self._key:
            if self._cache.started:
                raise ValueError(f"stream shape changed mid-stream ({self._key} -> {key}); reset()")
            self._cache, self._key = self.vae.new_decoder_cache(), key
        n = self.latents_per_step or latents.shape[1]
        with torch.inference_mode():
            out = [self.vae.decode_step(z, self._cache) for z in latents.split(n, dim=1)]
            x = out[0] if len(out) == 1 else torch.cat(out, dim=1)
            return x.float().clamp_(-1, 1).mul_(0.5).add_(0.5).contiguous()

    def flush(self) -> Tensor:
        """Nothing is held back: always empty ([B, 0, 3, H, W] once streaming)."""
        if self._key is None:
            return torch.empty(0)
        b, h, w, _, device = self._key
        s = self.upscale
        return torch.zeros(b, 0, 3, h * s, w * s, device=device)

    def memory_bytes(self) -> int:
        """Bytes held between pushes (constant for a given stream shape)."""
        return self._cache.nbytes()


# ---------------------------------------------------------------- loading


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = len(keys) - _LIST_LIMIT
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


def check_wan_vae_state_dict(vae: WanVAE, sd: Mapping[str, Tensor], *, source: str) -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped key."""
    own = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    missing = sorted(own.keys() - sd.keys())
    unexpected = sorted(sd.keys() - own.keys())
    wrong = [
        f"{k} (file {tuple(sd[k].shape)}, model {own[k]})"
        for k in sorted(own.keys() & sd.keys())
        if tuple(sd[k].shape) != own[k]
    ]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"missing keys {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_names(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_names(wrong)}")
    raise CheckpointError(
        f"{source} does not fit the Wan VAE {vae.config.to_dict()}: {'; '.join(problems)}. "
        f"Expected {RELEASE_FILE} (or the same tensors as .safetensors)."
    )


def read_wan_vae_file(path: str | Path) -> dict[str, Tensor]:
    """The flat state dict of a ``.pth`` (memory-mapped) or ``.safetensors`` file, on CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Wan VAE file not found: {path} (expected {RELEASE_FILE})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path))
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old zip-less pickle cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    # The release stores the bare state dict (the reference loads it unwrapped).
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict (expected {RELEASE_FILE})")
    return obj


def load_wan_vae(
    path: str | Path,
    *,
    config: WanVAEConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WanVAE:
    """Build on the meta device, check every key strictly, load with assign, move, eval."""
    sd = read_wan_vae_file(path)
    with torch.device("meta"):
        vae = WanVAE(config or WanVAEConfig.wan2_1())
    check_wan_vae_state_dict(vae, sd, source=str(path))
    vae.load_state_dict(sd, strict=True, assign=True)
    vae._init_latent_stats()
    log.info("loaded Wan VAE from %s (%s, %s)", path, device, dtype)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
