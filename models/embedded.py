"""The embedded default models: weights trained by this project, shipped in the repository.

A bundle is a directory under ``models/weights/`` holding::

    generator.safetensors   causal Wan DiT (EMA weights), loaded strictly
    decoder.safetensors     TAEHV-style streaming decoder
    encoder.safetensors     its encoder (training and evaluation only)
    bundle.json             configs, latent statistics, stream defaults, training record

The generator samples *normalised* latents ((z - mean) / std per channel, the
statistics of the encoder's output over the training clips); ``DenormalisingDecoder``
undoes that before decoding, so the engine never needs to know.

Usage::

    bundle = load_bundle("world")               # or a directory path
    model = bundle.generator()                  # CausalWanModel, eval mode
    decoder = bundle.decoder()                  # a StreamingDecoder for engine.Stream
    bundle.defaults                             # block_frames, sinks, window, steps, ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from models.decoders.taehv import TAEHVConfig, TinyVideoDecoder, TinyVideoEncoder
from models.wan.config import WanConfig
from models.wan.loader import build_model
from models.wan.model import CausalWanModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLES = ("world",)  # names that resolve to WEIGHTS_DIR / name
BUNDLE_FILE = "bundle.json"


class BundleError(ValueError):
    """A bundle directory is missing, incomplete or does not match its description."""


class DenormalisingDecoder:
    """A streaming decoder that takes normalised latents: decodes ``z * std + mean``."""

    def __init__(self, decoder: TinyVideoDecoder, mean: Tensor, std: Tensor) -> None:
        self.inner = decoder
        self.mean = mean.view(1, 1, -1, 1, 1)
        self.std = std.view(1, 1, -1, 1, 1)
        self.frames_per_latent: int = decoder.frames_per_latent
        self.upscale: int = decoder.upscale

    def reset(self) -> None:
        self.inner.reset()

    def push(self, latents: Tensor) -> Tensor:
        z = latents.to(self.mean.device, torch.float32) * self.std + self.mean
        return self.inner.push(z)

    def flush(self) -> Tensor:
        return self.inner.flush()


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@dataclass(frozen=True)
class Bundle:
    path: Path
    meta: dict[str, Any]

    @property
    def wan_config(self) -> WanConfig:
        return WanConfig(**_tuples(self.meta["wan"]))

    @property
    def taehv_config(self) -> TAEHVConfig:
        return TAEHVConfig(**_tuples(self.meta["taehv"]))

    @property
    def defaults(self) -> dict[str, Any]:
        """Stream settings the generator was trained for (block, cache, schedule, size)."""
        return dict(self.meta["defaults"])

    @property
    def latent_stats(self) -> tuple[Tensor, Tensor]:
        return (
            torch.tensor(self.meta["latent_mean"], dtype=torch.float32),
            torch.tensor(self.meta["latent_std"], dtype=torch.float32),
        )

    def _state(self, name: str, device: str) -> dict[str, Tensor]:
        f = self.path / name
        if not f.is_file():
            raise BundleError(f"bundle {self.path} has no {name}")
        return load_file(str(f), device=device)

    def generator(self, device: str = "cpu", dtype: torch.dtype = torch.float32) -> CausalWanModel:
        f = self.path / "generator.safetensors"
        if not f.is_file():
            raise BundleError(f"bundle {self.path} has no generator.safetensors")
        # build_model loads strictly and names every missing / unexpected key
        model = build_model(self.wan_config, checkpoint=f, device=device, dtype=dtype)
        return model.eval().requires_grad_(False)

    def decoder(self, device: str = "cpu") -> DenormalisingDecoder:
        dec = TinyVideoDecoder(self.taehv_config)
        dec.load_state_dict(self._state("decoder.safetensors", device), strict=True)
        mean, std = self.latent_stats
        return DenormalisingDecoder(dec.to(device).eval(), mean.to(device), std.to(device))

    def encoder(self, device: str = "cpu") -> TinyVideoEncoder:
        enc = TinyVideoEncoder(self.taehv_config)
        enc.load_state_dict(self._state("encoder.safetensors", device), strict=True)
        return enc.to(device).eval()


def load_bundle(name_or_path: str | Path) -> Bundle:
    """A bundle by name (``BUNDLES``) or directory path."""
    path = WEIGHTS_DIR / str(name_or_path) if str(name_or_path) in BUNDLES else Path(name_or_path)
    meta_file = path / BUNDLE_FILE
    if not meta_file.is_file():
        raise BundleError(
            f"no embedded model at {path} (missing {BUNDLE_FILE}); "
            f"names: {', '.join(BUNDLES)}, or a directory written by `framecast train bundle`"
        )
    return Bundle(path, json.loads(meta_file.read_text()))
