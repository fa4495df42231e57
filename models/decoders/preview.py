"""A minimal streaming latent-to-RGB decoder (a placeholder until trained decoders land).

Each latent frame is projected to RGB by a fixed linear map, upsampled 8x in
space, and expanded to 4 video frames by interpolating from the previous
latent frame, so motion is smooth across block boundaries. Its only memory is
the last latent frame's RGB. With the default seeded random projection it
shows the structure of the latents, not a trained image: label it as such.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class LatentPreviewDecoder:
    """[B, F, C, h, w] latents -> [B, 4F, 3, 8h, 8w] RGB in [0, 1].

    Usage::

        dec = LatentPreviewDecoder(latent_channels=16)
        rgb = dec.push(latents)   # frames for these latents, no look-ahead
        dec.reset()               # before a new stream / after a hard cut
    """

    frames_per_latent = 4
    upscale = 8

    def __init__(
        self,
        latent_channels: int = 16,
        *,
        seed: int = 0,
        weight: Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if weight is None:
            g = torch.Generator().manual_seed(seed)
            weight = torch.randn(3, latent_channels, generator=g) / latent_channels**0.5
        assert weight.shape == (3, latent_channels), f"{weight.shape=}"
        self.weight = weight.to(device)
        self._last: Tensor | None = None  # RGB [B, 3, H, W] of the previous latent frame

    def reset(self) -> None:
        self._last = None

    def push(self, latents: Tensor) -> Tensor:
        assert latents.ndim == 5 and latents.shape[2] == self.weight.shape[1], f"{latents.shape=}"
        b, f = latents.shape[:2]
        rgb = torch.einsum("oc,bfchw->bfohw", self.weight, latents.float())
        rgb = torch.sigmoid(2.0 * rgb)
        rgb = F.interpolate(rgb.flatten(0, 1), scale_factor=self.upscale, mode="bilinear")
        rgb = rgb.unflatten(0, (b, f))  # [B, F, 3, H, W]
        prev = rgb[:, 0] if self._last is None else self._last
        out: list[Tensor] = []
        k = self.frames_per_latent
        for i in range(f):
            cur = rgb[:, i]
            out.extend(torch.lerp(prev, cur, (j + 1) / k) for j in range(k))
            prev = cur
        self._last = prev
        return torch.stack(out, dim=1)

    def flush(self) -> Tensor:
        """Nothing is held back: every pushed latent has already been decoded."""
        return torch.empty(0)
