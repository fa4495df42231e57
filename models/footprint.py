"""Weight memory of a public model's components, counted on the meta device (no memory).

What a user needs before downloading tens of gigabytes: will the DiT, its decoder and
its text encoder fit the GPU at a given dtype, and which one to offload.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.decoders.taehv import TAEHVConfig, TinyVideoDecoder
from models.decoders.wan_vae import WanVAE, WanVAEConfig
from models.profiles import ModelProfile
from models.umt5 import umt5_size
from models.wan.config import preset
from models.wan.loader import count_parameters


@dataclass(frozen=True)
class ComponentSize:
    name: str
    params: int
    bytes: int


def _params(module: nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


def profile_footprint(
    profile: ModelProfile, dtype: torch.dtype = torch.bfloat16
) -> list[ComponentSize]:
    """DiT, Wan VAE (decoder and encoder halves), TAEHV decoder and UMT5-XXL encoder."""
    size = torch.empty((), dtype=dtype).element_size()
    with torch.device("meta"):
        vae = WanVAE(WanVAEConfig.wan2_1())
        taehv = TinyVideoDecoder(TAEHVConfig.wan2_1())
    counts = [
        (f"DiT ({profile.wan_preset})", count_parameters(preset(profile.wan_preset))),
        ("Wan VAE decoder", _params(vae, "decoder.") + _params(vae, "conv2.")),
        ("Wan VAE encoder", _params(vae, "encoder.") + _params(vae, "conv1.")),
        ("TAEHV decoder (taew2_1)", _params(taehv)),
        ("UMT5-XXL encoder", umt5_size(dtype=dtype).params),
    ]
    return [ComponentSize(name, n, n * size) for name, n in counts]


def format_footprint(rows: list[ComponentSize], dtype: torch.dtype) -> str:
    lines = [f"{'component':<26} {'parameters':>15} {str(dtype).removeprefix('torch.'):>10}"]
    for r in rows:
        lines.append(f"{r.name:<26} {r.params:>15,d} {r.bytes / 2**30:>7.2f} GiB")
    return "\n".join(lines)
