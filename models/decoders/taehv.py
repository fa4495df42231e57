"""A tiny causal video autoencoder with the TAEHV architecture, and its streaming decoder.

Layouts: frames are NTCHW RGB in [0, 1]; latents are NTCHW with ``latent_channels``
channels. Space is compressed 8x (three stride-2 stages) and time 4x (two of the
three stages halve / double the frame rate). Every layer is causal in time: a
memory block sees its own input at this step and at the previous step, and
nothing later, so one latent frame can be decoded as soon as it exists.

Design facts carried over from madebyollin/taehv (``taehv.py``, read at commit
115aaa7 and rechecked against commit 1f14a56; the layer structure, shapes and
parameter names, not its code):

- ``MemBlock``: three 3x3 convs (ReLU between) over ``cat([x_t, x_{t-1}])``, plus a
  1x1 skip of ``x_t`` (identity when widths match), then ReLU. The memory of a
  block is its *input* at the previous time step; zeros before the first step.
- ``TPool``: stack ``stride`` consecutive frames on channels, 1x1 conv back to C.
  ``TGrow``: 1x1 conv C -> stride*C, split the channels into ``stride`` frames.
- Decoder input ``Clamp``: ``3 * tanh(x / 3)`` soft-limits the latents to +-3.
- Encoder: conv(3->64), ReLU, 3 x [TPool, stride-2 conv (no bias), 3 MemBlocks],
  conv(64->latents); temporal pooling in the first two stages (2x, 2x, 1x).
- Decoder: Clamp, conv(latents->256), ReLU, 3 x [3 MemBlocks, 2x nearest upsample,
  TGrow, conv (no bias) to the next width], ReLU, conv(->3); widths
  (256, 128, 64, 64); temporal growth in the last two stages (1x, 2x, 2x); the
  output is clamped to [0, 1].
- Latents are the diffusion model's own (for Wan 2.1: 16 channels, already
  normalised); no scale or shift is applied on either side.
- The clip encoder pads the end of a clip with copies of its last frame to a
  multiple of 4 frames.
- ``decode_video`` trims the first ``t_upscale - 1 = 3`` decoded frames, so F
  latents give 4F - 3 frames (the Wan VAE's 1 + 4(F - 1) frame count). Here that is
  ``TAEHVConfig.trim_start_frames``: 3 in the ``wan2_1()`` preset (for the public
  ``taew2_1`` weights), 0 elsewhere, so that every latent frame gives exactly 4
  video frames with no look-ahead.
- A checkpoint whose TGrow conv has more output channels than a stride-1 TGrow
  needs keeps the last ones (the last time step's), see ``load_taehv_state_dict``.
- The parameter names here follow the public checkpoints (``encoder.<i>...`` and
  ``decoder.<i>...`` map to ``layers.<i>...``), so those weights load unchanged.
- The reference picks a variant from substrings of the checkpoint's file name;
  ``taew2_1`` matches none of them, so it is the default build: patch size 1,
  16 latent channels, the time flags above, base (not "super") decoder. Here that
  is the explicit ``TAEHVConfig.wan2_1()`` preset, and ``load_taew2_1`` reads the
  public file with a strict check of its 128 keys.

Parity with the reference is tested in tests/models/test_taehv_reference.py against
outputs recorded from the reference code itself (tests/fixtures/reference/make_taehv.py).

Streaming equals batch decoding: the batch path feeds each memory block its input
shifted one step in time (zeros first); the streaming path feeds it the same shift
with the first row taken from the block's memory of the previous push. TGrow is
time-local and the decoder has no TPool, so cutting the latents into pushes of any
sizes changes nothing but float rounding.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FRAMES_PER_LATENT = 4  # video frames per latent frame (temporal compression)
UPSCALE = 8  # pixels per latent pixel along each side (spatial compression)


@dataclass(frozen=True)
class TAEHVConfig:
    """Shape of a TAEHV-style autoencoder; defaults are the public ``taew2_1`` layout."""

    latent_channels: int = 16  # Wan 2.1 latents
    image_channels: int = 3  # RGB
    encoder_width: int = 64  # every encoder stage has this width
    decoder_widths: tuple[int, int, int, int] = (256, 128, 64, 64)  # 3 stages + output head
    blocks_per_stage: int = 3  # memory blocks per stage (encoder and decoder)
    encoder_time_downscale: tuple[bool, bool, bool] = (True, True, False)  # 2x pool per stage
    decoder_time_upscale: tuple[bool, bool, bool] = (False, True, True)  # 2x grow per stage
    trim_start_frames: int = 0  # decoded frames dropped at the start of every stream

    def __post_init__(self) -> None:
        if self.latent_channels < 1 or self.image_channels < 1 or self.encoder_width < 1:
            raise ValueError(f"channel counts must be positive: {self}")
        if len(self.decoder_widths) != 4 or min(self.decoder_widths) < 1:
            raise ValueError(f"decoder_widths needs 4 positive widths, got {self.decoder_widths}")
        if self.blocks_per_stage < 1:
            raise ValueError(f"blocks_per_stage must be >= 1, got {self.blocks_per_stage}")
        for name in ("encoder_time_downscale", "decoder_time_upscale"):
            flags = getattr(self, name)
            if len(flags) != 3 or 2 ** sum(flags) != FRAMES_PER_LATENT:
                raise ValueError(f"{name} must enable exactly 2 of 3 stages (4x), got {flags}")
        if not 0 <= self.trim_start_frames < FRAMES_PER_LATENT:
            raise ValueError(f"trim_start_frames must be in [0, 4), got {self.trim_start_frames}")

    @classmethod
    def wan2_1(cls) -> TAEHVConfig:
        """The public ``taew2_1`` weights: full widths, first 3 frames trimmed (4F - 3 out)."""
        return cls(trim_start_frames=3)

    @classmethod
    def tiny(cls) -> TAEHVConfig:
        """CPU real-time widths (about 1/4 of taew2_1's per stage), 4 frames per latent."""
        return cls(encoder_width=32, decoder_widths=(64, 32, 16, 16))


# ---------------------------------------------------------------- layers


def _conv3(c_in: int, c_out: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """3 * tanh(x / 3): identity near 0, smoothly bounded to (-3, 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3.0) * 3.0


class MemoryBlock(nn.Module):
    """Residual conv block over (this frame, previous frame): [N, C, H, W] x 2 -> [N, C', H, W]."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv3(2 * c_in, c_out),
            nn.ReLU(inplace=True),
            _conv3(c_out, c_out),
            nn.ReLU(inplace=True),
            _conv3(c_out, c_out),
        )
        self.skip: nn.Module = (
            nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        # Channel order [current, past] is the checkpoints' layout.
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + self.skip(x))


class TimePool(nn.Module):
    """[B, T, C, H, W] -> [B, T / stride, C, H, W]: consecutive frames stacked, 1x1 conv."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels * stride, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c, h, w = x.shape
        assert t % self.stride == 0, f"{x.shape=} not divisible by stride {self.stride}"
        y = x.reshape(b * t // self.stride, self.stride * c, h, w)
        return self.conv(y).unflatten(0, (b, t // self.stride))


class TimeGrow(nn.Module):
    """[B, T, C, H, W] -> [B, T * stride, C, H, W]: 1x1 conv, channels split into frames."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c, h, w = x.shape
        return self.conv(x.flatten(0, 1)).reshape(b, t * self.stride, c, h, w)


def _per_frame(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2-D layer to every frame of [B, T, C, H, W]."""
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def _run_clip(layers: nn.Sequential, x: Tensor) -> Tensor:
    """Whole clip at once (the reference path): memory blocks see zeros before frame 0."""
    for layer in layers:
        if isinstance(layer, MemoryBlock):
            past = F.pad(x, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]  # shift right in time by one
            x = layer(x.flatten(0, 1), past.flatten(0, 1)).unflatten(0, x.shape[:2])
        elif isinstance(layer, (TimePool, TimeGrow)):
            x = layer(x)
        else:
            x = _per_frame(layer, x)
    return x


def _init_weights(module: nn.Module, layers: nn.Sequential, seed: int, out_gain: float) -> None:
    """Seeded init that keeps activations in range through the residual stack.

    He-normal convs, zero biases; the last conv of each memory block's residual
    branch is scaled by 0.2 so the stack does not blow up, and the head by
    ``out_gain``. Untrained, the decoder then gives mid-grey frames with visible
    structure (not all 0 or 1 after the clamp), which tests and demos need.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                p.zero_()
        for m in module.modules():
            if isinstance(m, MemoryBlock):
                last = m.conv[-1]
                assert isinstance(last, nn.Conv2d)
                last.weight.mul_(0.2)
        head = layers[-1]
        assert isinstance(head, nn.Conv2d)
        head.weight.mul_(out_gain)


def load_taehv_state_dict(
    module: TinyVideoEncoder | TinyVideoDecoder, state_dict: Mapping[str, Tensor]
) -> None:
    """Load a public TAEHV checkpoint's ``encoder.*`` or ``decoder.*`` weights (strict).

    ``state_dict`` is the whole checkpoint (both halves); the half that matches
    ``module`` is taken. A stride-1 TimeGrow keeps the last output channels of a
    checkpoint that stores more (as the reference loader does). ``load_taew2_1``
    reads the public Wan 2.1 file with a stricter, named layout check.
    """
    module.load_state_dict(_own_names(module, state_dict), strict=True)


def _prefix(module: TinyVideoEncoder | TinyVideoDecoder) -> str:
    return "encoder." if isinstance(module, TinyVideoEncoder) else "decoder."


def _wider_time_grow(
    module: TinyVideoEncoder | TinyVideoDecoder, name: str, got: torch.Size, want: torch.Size
) -> bool:
    """A TimeGrow conv stored with more output frames than ``module`` grows (loadable)."""
    index = name.split(".")[1]
    return (
        name.endswith(".conv.weight")
        and index.isdigit()
        and int(index) < len(module.layers)
        and isinstance(module.layers[int(index)], TimeGrow)
        and got[1:] == want[1:]
        and got[0] > want[0]
    )


def _own_names(
    module: TinyVideoEncoder | TinyVideoDecoder, state_dict: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """This module's half of a checkpoint, renamed ``<half>.<i>...`` -> ``layers.<i>...``.

    A wider TimeGrow keeps its last output channels: those of the last time step.
    """
    prefix, own = _prefix(module), module.state_dict()
    sd: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = "layers." + key[len(prefix) :]
        if name in own and _wider_time_grow(module, name, value.shape, own[name].shape):
            value = value[-own[name].shape[0] :]
        sd[name] = value
    return sd


# ---------------------------------------------------------------- encoder


class TinyVideoEncoder(nn.Module):
    """Frames [B, T, 3, H, W] in [0, 1] -> latents [B, ceil(T / 4), C, H / 8, W / 8].

    Causal: latent k depends on frames 0 .. 4k + 3 only. A clip whose length is not
    a multiple of 4 is padded at the end with copies of its last frame.

    Usage::

        enc = TinyVideoEncoder(TAEHVConfig.tiny())
        z = enc(frames)            # gradients flow; wrap in torch.no_grad() to just encode
    """

    def __init__(self, config: TAEHVConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = c = config
        w = c.encoder_width
        layers: list[nn.Module] = [_conv3(c.image_channels, w), nn.ReLU(inplace=True)]
        for pool in c.encoder_time_downscale:
            layers += [TimePool(w, 2 if pool else 1), _conv3(w, w, stride=2, bias=False)]
            layers += [MemoryBlock(w, w) for _ in range(c.blocks_per_stage)]
        layers.append(_conv3(w, c.latent_channels))
        self.layers = nn.Sequential(*layers)
        self.init_weights(seed)

    def init_weights(self, seed: int = 0) -> TinyVideoEncoder:
        """Seeded random weights; latents come out with roughly unit scale."""
        _init_weights(self, self.layers, seed, out_gain=0.4)
        return self

    def forward(self, frames: Tensor) -> Tensor:
        return self.encode(frames)

    def encode(self, frames: Tensor) -> Tensor:
        c = self.config
        assert frames.ndim == 5 and frames.shape[2] == c.image_channels, f"{frames.shape=}"
        assert frames.shape[-2] % UPSCALE == 0 and frames.shape[-1] % UPSCALE == 0, (
            f"H and W must be multiples of {UPSCALE}: {frames.shape=}"
        )
        pad = -frames.shape[1] % FRAMES_PER_LATENT
        if pad:
            frames = torch.cat([frames, frames[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
        return _run_clip(self.layers, frames)


# ---------------------------------------------------------------- decoder

_StreamKey = tuple[int, int, int, int, torch.dtype, torch.device]  # B, C, h, w, dtype, device


class TinyVideoDecoder(nn.Module):
    """Latents [B, F, C, h, w] -> frames [B, 4F - trim, 3, 8h, 8w] in [0, 1].

    Two paths with the same result (to float rounding):

    - ``decode(latents)`` / ``forward``: the whole clip at once, gradients allowed.
    - ``push`` / ``flush`` / ``reset``: engine.protocols.StreamingDecoder. Each push
      decodes its latents in parallel over time, with one frame of features per
      memory block carried over from the previous push (bounded: it does not grow
      with the stream). Buffers are allocated on the first push and overwritten in
      place afterwards; ``reset()`` zeroes them, which is exactly a fresh stream.
      Runs under ``torch.inference_mode``.

    Every push of F latent frames returns 4F frames (no look-ahead, nothing held
    back, ``flush()`` is empty), except that with ``trim_start_frames = n`` (the
    ``wan2_1()`` preset) the first n frames of each stream are dropped.

    One decoder instance carries one stream; give each session its own instance.

    Usage::

        dec = TinyVideoDecoder(TAEHVConfig.tiny()).eval()
        dec.reset()
        for latents in blocks:            # [1, F, 16, h, w]
            rgb = dec.push(latents)       # [1, 4F, 3, 8h, 8w]
        rgb = dec.flush()                 # [1, 0, 3, 8h, 8w]: nothing is held back
    """

    frames_per_latent = FRAMES_PER_LATENT
    upscale = UPSCALE

    def __init__(self, config: TAEHVConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = c = config
        n = c.decoder_widths
        layers: list[nn.Module] = [
            SoftClamp(),
            _conv3(c.latent_channels, n[0]),
            nn.ReLU(inplace=True),
        ]
        for i, grow in enumerate(c.decoder_time_upscale):
            layers += [MemoryBlock(n[i], n[i]) for _ in range(c.blocks_per_stage)]
            layers += [nn.Upsample(scale_factor=2), TimeGrow(n[i], 2 if grow else 1)]
            layers.append(_conv3(n[i], n[i + 1], bias=False))
        layers += [nn.ReLU(inplace=True), _conv3(n[3], c.image_channels)]
        self.layers = nn.Sequential(*layers)
        self.init_weights(seed)
        # Stream state (plain attributes: not parameters, not in the state dict).
        self._memory: list[Tensor] = []  # per memory block: its input at the last step
        self._key: _StreamKey | None = None  # the shape, dtype and device of this stream
        self._started = False  # a push happened since the last reset
        self._to_trim = c.trim_start_frames

    def init_weights(self, seed: int = 0) -> TinyVideoDecoder:
        """Seeded random weights; untrained output is mid-grey with visible structure."""
        _init_weights(self, self.layers, seed, out_gain=0.1)
        head = self.layers[-1]
        assert isinstance(head, nn.Conv2d) and head.bias is not None
        with torch.no_grad():
            head.bias.fill_(0.5)
        return self

    # ---- batch path

    def forward(self, latents: Tensor) -> Tensor:
        return self.decode(latents)

    def decode(self, latents: Tensor) -> Tensor:
        """The whole clip at once: [B, F, C, h, w] -> [B, 4F - trim, 3, 8h, 8w]."""
        self._check(latents)
        rgb = _run_clip(self.layers, latents).clamp(0, 1)
        return rgb[:, self.config.trim_start_frames :]

    # ---- streaming path (engine.protocols.StreamingDecoder)

    def reset(self) -> None:
        """Start a new stream: zero the memory in place (the same as a fresh decoder)."""
        with torch.inference_mode():
            for m in self._memory:
                m.zero_()
        self._started = False
        self._to_trim = self.config.trim_start_frames

    def push(self, latents: Tensor) -> Tensor:
        """[B, F, C, h, w] -> [B, 4F, 3, 8h, 8w] (fewer at the start when trimming)."""
        self._check(latents)
        b, _, c, h, w = latents.shape
        key: _StreamKey = (b, c, h, w, latents.dtype, latents.device)
        if key != self._key:
            if self._started:
                raise ValueError(f"stream shape changed mid-stream ({self._key} -> {key}); reset()")
            self._memory, self._key = [], key  # new shape: allocate on this push
        self._started = True
        with torch.inference_mode():
            rgb = self._stream(latents).clamp_(0, 1)
        if self._to_trim:
            cut = min(self._to_trim, rgb.shape[1])
            rgb, self._to_trim = rgb[:, cut:], self._to_trim - cut
        return rgb

    def flush(self) -> Tensor:
        """Nothing is held back, so this is always empty ([B, 0, 3, H, W] once streaming)."""
        if self._key is None:
            return torch.empty(0)
        b, _, h, w, dtype, device = self._key
        return torch.zeros(
            b, 0, self.config.image_channels, h * UPSCALE, w * UPSCALE, dtype=dtype, device=device
        )

    def memory_bytes(self) -> int:
        """Bytes held between pushes (constant for a given stream shape)."""
        return sum(m.numel() * m.element_size() for m in self._memory)

    def _stream(self, x: Tensor) -> Tensor:
        allocate = not self._memory
        slot = 0
        for layer in self.layers:
            if isinstance(layer, MemoryBlock):
                if allocate:
                    self._memory.append(torch.zeros_like(x[:, 0]))
                mem = self._memory[slot]
                slot += 1
                past = torch.cat([mem.unsqueeze(1), x[:, :-1]], dim=1)
                mem.copy_(x[:, -1])
                x = layer(x.flatten(0, 1), past.flatten(0, 1)).unflatten(0, x.shape[:2])
            elif isinstance(layer, TimeGrow):
                x = layer(x)
            else:
                x = _per_frame(layer, x)
        return x

    def _check(self, latents: Tensor) -> None:
        assert latents.ndim == 5 and latents.shape[2] == self.config.latent_channels, (
            f"expected [B, F, {self.config.latent_channels}, h, w] latents, got {latents.shape=}"
        )
        assert latents.shape[1] >= 1, f"no latent frames: {latents.shape=}"


# ---------------------------------------------------------------- the public taew2_1 weights

TAEW2_1_SOURCE = "taew2_1.pth (or safetensors/taew2_1.safetensors) from madebyollin/taehv"


def _read_checkpoint(path: Path) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` or ``torch.save`` file, on CPU."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        loaded: object = load_file(path, device="cpu")
    else:
        # mmap needs the zip format of torch.save (every file since torch 1.6).
        loaded = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()
    ):
        raise ValueError(
            f"{path} is not a flat state dict of tensors ({type(loaded).__name__}); "
            f"expected {TAEW2_1_SOURCE}"
        )
    return dict(loaded)


def _layout_problems(
    state_dict: Mapping[str, Tensor], modules: tuple[TinyVideoEncoder | TinyVideoDecoder, ...]
) -> list[str]:
    """Every key that is missing, unexpected or mis-shaped, named as in the checkpoint."""
    expected: dict[str, tuple[TinyVideoEncoder | TinyVideoDecoder, str, torch.Size]] = {}
    for module in modules:
        for name, t in module.state_dict().items():
            expected[_prefix(module) + name[len("layers.") :]] = (module, name, t.shape)
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    problems = [f"missing {k} {tuple(expected[k][2])}" for k in missing]
    problems += [f"unexpected {k} {tuple(state_dict[k].shape)}" for k in unexpected]
    for key in sorted(expected.keys() & state_dict.keys()):
        module, name, want = expected[key]
        got = state_dict[key].shape
        if got != want and not _wider_time_grow(module, name, got, want):
            problems.append(f"mis-shaped {key}: {tuple(got)} in the file, {tuple(want)} expected")
    return problems


@overload
def load_taew2_1(
    path: str | Path,
    *,
    device: torch.device | str = ...,
    dtype: torch.dtype = ...,
    encoder: Literal[False] = ...,
) -> TinyVideoDecoder: ...


@overload
def load_taew2_1(
    path: str | Path,
    *,
    device: torch.device | str = ...,
    dtype: torch.dtype = ...,
    encoder: Literal[True],
) -> tuple[TinyVideoDecoder, TinyVideoEncoder]: ...


def load_taew2_1(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    encoder: bool = False,
) -> TinyVideoDecoder | tuple[TinyVideoDecoder, TinyVideoEncoder]:
    """The public Wan 2.1 tiny autoencoder: ``taew2_1.pth`` or ``taew2_1.safetensors``.

    Returns the streaming decoder on ``TAEHVConfig.wan2_1()`` (F latents -> 4F - 3
    frames, like the reference's ``decode_video``), in eval mode on ``device`` with
    ``dtype``; with ``encoder=True``, ``(decoder, encoder)``. The whole file is checked
    first, both halves, whichever is returned: a missing, unexpected or mis-shaped key
    raises ValueError naming it. Hunyuan's ``taehv.pth`` has the same layout and would
    pass the check; only the file tells the latent spaces apart.

    The modules are built on the meta device and take the file's tensors (converted
    to ``dtype``) as their parameters, so nothing is initialised and then overwritten.

    Usage::

        dec = load_taew2_1("taew2_1.pth", device="cuda", dtype=torch.float16)
        dec.reset()
        rgb = dec.push(latents)           # [1, F, 16, h, w] -> [1, 4F - 3, 3, 8h, 8w]
    """
    path = Path(path)
    state_dict = _read_checkpoint(path)
    config = TAEHVConfig.wan2_1()
    with torch.device("meta"):
        dec, enc = TinyVideoDecoder(config), TinyVideoEncoder(config)
    problems = _layout_problems(state_dict, (enc, dec))
    if problems:
        raise ValueError(
            f"{path} does not have the taew2_1 layout (expected {TAEW2_1_SOURCE}): "
            + "; ".join(problems)
        )
    for module in (dec, enc) if encoder else (dec,):
        sd = _own_names(module, state_dict)
        sd = {k: v.to(device=device, dtype=dtype).contiguous() for k, v in sd.items()}
        module.load_state_dict(sd, strict=True, assign=True)
        module.eval()
    return (dec, enc) if encoder else dec
