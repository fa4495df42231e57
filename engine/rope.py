"""Rotary position embedding over (time, height, width) for video tokens.

The causal Wan DiT splits each head's dimension into three parts, rotated by
the frame index, the row and the column of a token. The public checkpoints
were trained with a 1024-entry table of temporal positions, and the reference
code indexes that table directly, so a stream crashes past frame 1024. Here
the angles are computed from the positions themselves (in float64, so that
even position 10**7 keeps sub-microradian precision), which lets the cache
choose positions freely: see engine.cache for how they stay bounded.

Layout: pairs are interleaved, (x0, x1), (x2, x3), ... as the reference's
``view_as_complex(x.reshape(..., -1, 2))`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor


def wan_rope_split(head_dim: int) -> tuple[int, int, int]:
    """Per-axis rotary dims (t, h, w) as in Wan: d - 4*(d//6), 2*(d//6), 2*(d//6)."""
    assert head_dim % 2 == 0, f"{head_dim=} must be even"
    third = 2 * (head_dim // 6)
    return head_dim - 2 * third, third, third


class Rope3D:
    """Computes cos/sin tables for a frame-major token grid.

    Usage::

        rope = Rope3D(head_dim=128)
        cos, sin = rope.cos_sin(frame_positions, h=30, w=52)  # [F*h*w, 1, 64] each
        q = apply_rope(q, cos, sin)                            # q: [B, F*h*w, H, 128]
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        self.head_dim = head_dim
        self.split = wan_rope_split(head_dim)
        # One inverse-frequency vector per axis, each normalised by its own dim
        # (Wan's rope_params(1024, dim_axis)). Built on the CPU explicitly: models are
        # constructed under torch.device("meta") for loading, and these are not buffers.
        cpu = torch.device("cpu")
        self.inv_freq = [
            1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=cpu) / d)
            for d in self.split
        ]
        self._temporal: dict[str, Tensor] = {}
        self._spatial: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}

    def _temporal_freq(self, device: torch.device) -> Tensor:
        """Per-device copy, so the hot path never copies from the host."""
        key = str(device)
        if key not in self._temporal:
            self._temporal[key] = self.inv_freq[0].to(device)
        return self._temporal[key]

    def _spatial_angles(self, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (h, w, str(device))
        if key not in self._spatial:
            cpu = torch.device("cpu")
            ah = torch.outer(torch.arange(h, dtype=torch.float64, device=cpu), self.inv_freq[1])
            aw = torch.outer(torch.arange(w, dtype=torch.float64, device=cpu), self.inv_freq[2])
            self._spatial[key] = (ah.to(device), aw.to(device))
        return self._spatial[key]

    def cos_sin(self, frame_positions: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        """cos, sin of shape [F*h*w, 1, head_dim/2] (float32) for frames at the given positions.

        frame_positions: int64 [F] on the target device (no host sync needed).
        """
        assert frame_positions.ndim == 1, f"{frame_positions.shape=}"
        device = frame_positions.device
        f = frame_positions.shape[0]
        at = torch.outer(frame_positions.to(torch.float64), self._temporal_freq(device))
        ah, aw = self._spatial_angles(h, w, device)
        angles = torch.cat(
            [
                at.view(f, 1, 1, -1).expand(f, h, w, -1),
                ah.view(1, h, 1, -1).expand(f, h, w, -1),
                aw.view(1, 1, w, -1).expand(f, h, w, -1),
            ],
            dim=-1,
        ).reshape(f * h * w, 1, -1)
        return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of x [..., D] by cos/sin broadcastable to [..., D/2].

    For tokens laid out [B, N, H, D] pass cos/sin as [N, 1, D/2]; for the cache's
    [L, B, H, N, D] layout pass [N, D/2].
    """
    assert cos.shape[-1] * 2 == x.shape[-1], f"{x.shape=} {cos.shape=}"
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
