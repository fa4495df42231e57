"""Choosing the training precision on the machine at hand, by measuring it.

Our CPUs differ: one ran bf16 matmuls 7x faster than float32 (native AMX/AVX512-
BF16), another 100x slower (emulated). So ``autocast="auto"`` times one GEMM of
the generator's shape in both dtypes and trains in bf16 autocast only where bf16
is clearly faster. A whole training step gains less than the GEMM does (1.2-1.3x
on the 7x machine; docs/models/world.md), because much of a step is not GEMM.
"""

from __future__ import annotations

import statistics
import time
from typing import Literal

import torch

Autocast = Literal["off", "bf16", "auto"]
AUTOCAST_CHOICES: tuple[str, ...] = ("off", "bf16", "auto")
BF16_MIN_SPEEDUP = 1.5  # GEMM speed-up that "auto" needs before it turns bf16 on


def gemm_seconds(
    dtype: torch.dtype, device: torch.device, m: int = 6144, k: int = 192, n: int = 768
) -> float:
    """Median seconds of an [m, k] @ [k, n] product (the generator's FFN at patch 2)."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    times = []
    for i in range(12):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bf16_speedup(device: torch.device) -> float:
    """How many times faster a bf16 GEMM runs than a float32 one here."""
    return gemm_seconds(torch.float32, device) / gemm_seconds(torch.bfloat16, device)


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast the training forward to, or None for float32."""
    if setting not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast must be one of {AUTOCAST_CHOICES}, got {setting!r}")
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if bf16_speedup(device) >= BF16_MIN_SPEEDUP else None
