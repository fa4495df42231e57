"""Per-block timing and the statistics every stream report needs.

A benchmark, a session or a server all ask the same questions of a stream's
block times: how long does a block take (percentiles, not just the mean), does
it get slower as the stream ages (segment means, trend), and was the machine
busy with something else meanwhile (a noisy neighbour looks like a slowdown).
Times go in as seconds, per block, in order; results come out in ms.

Usage::

    clock = BlockClock(machine_busy=probe)  # probe: machine busy CPU seconds, optional
    for _ in range(n):
        clock.start()
        loop.next_block()
        synchronize(device)  # CUDA sync: the block's work is done when the clock is read
        clock.stop()
    stats = block_stats(clock.wall[warmup:])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

MachineBusy = Callable[[], float]  # CPU seconds all cores have spent busy, any process


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it times compute.

    CUDA kernels run asynchronously: without this a block's time would be its
    launch time, not its compute time. A no-op on CPU.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # host sync, on purpose: the timing boundary


def block_stats(times_s: Sequence[float]) -> dict[str, float]:
    """Per-block time statistics in ms: count, mean, std, min, p50, p90, p99, max.

    Percentiles are numpy's default (linear interpolation), so they match
    ``numpy.percentile`` on the same data. Raises ValueError on no blocks: there
    is no meaningful time of zero blocks, and numpy would only warn or fail later.
    """
    if len(times_s) == 0:
        raise ValueError("block_stats needs at least one block time")
    a = np.asarray(times_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "count": len(a),
        "mean_ms": float(a.mean()),
        "std_ms": float(a.std()),
        "min_ms": float(a.min()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(a.max()),
    }


def segment_means_ms(times_s: Sequence[float], n: int) -> list[float]:
    """Mean block time (ms, rounded to µs) of n consecutive, near-equal parts of the run.

    Fewer blocks than parts gives one part per block. A slowdown that grows with
    the stream's age shows as rising segment means; noise shows as scatter.
    Raises ValueError on no blocks (numpy cannot split into zero parts).
    """
    parts = np.array_split(np.asarray(times_s, dtype=np.float64), min(n, len(times_s)))
    return [round(float(p.mean() * 1e3), 3) for p in parts]


def trend_ms_per_1000(times_s: Sequence[float], warmup: int) -> float:
    """Least-squares slope of block time (ms) per 1000 blocks, over blocks from ``warmup`` on.

    The warm-up blocks are left out because their one-off costs (allocation,
    window fill) would read as a downward trend. Fewer than two blocks: 0.0.
    """
    y = np.asarray(times_s[warmup:], dtype=np.float64) * 1e3
    if len(y) < 2:
        return 0.0
    x = np.arange(warmup, warmup + len(y), dtype=np.float64)
    return float(np.polyfit(x, y, 1)[0] * 1000)


class BlockClock:
    """Per-block wall time, plus what else the machine was doing meanwhile.

    For each block it records wall time, this process's CPU time (all its threads)
    and, given a ``machine_busy`` probe, the machine's busy CPU time (all processes).
    Over a window of blocks, ``(machine busy - own CPU) / wall`` is how many cores
    other processes kept busy: the honest way to tell a slowdown of the stream from
    a noisy neighbour. Without a probe those figures are NaN (unknown, not zero).
    """

    def __init__(self, machine_busy: MachineBusy | None = None) -> None:
        self.wall: list[float] = []  # seconds per block
        self.cpu: list[float] = []  # this process's CPU seconds per block
        self.busy: list[float] = []  # the machine's busy CPU seconds per block (NaN: no probe)
        self._machine_busy = machine_busy
        self._t0 = self._cpu0 = self._busy0 = 0.0

    def _busy_now(self) -> float:
        return math.nan if self._machine_busy is None else self._machine_busy()

    def start(self) -> float:
        """Start timing a block; returns the perf_counter reading."""
        self._busy0 = self._busy_now()
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self._t0

    def stop(self) -> float:
        """End the block started last; returns the perf_counter reading."""
        t1 = time.perf_counter()
        self.wall.append(t1 - self._t0)
        self.cpu.append(time.process_time() - self._cpu0)
        self.busy.append(self._busy_now() - self._busy0)
        return t1

    def __len__(self) -> int:
        return len(self.wall)

    def recent_ms(self, n: int) -> float:
        """Mean wall time (ms) of the last n blocks, for progress lines."""
        recent = self.wall[-n:]
        return 1e3 * sum(recent) / len(recent)

    def window(self, start: int, end: int) -> dict[str, Any]:
        """Mean/median block time over blocks [start, end), with CPU time and neighbour load."""
        a = np.asarray(self.wall[start:end], dtype=np.float64)
        own = float(np.sum(self.cpu[start:end]))
        machine = float(np.sum(self.busy[start:end]))
        return {
            "blocks": [start, end],
            "count": len(a),
            "mean_ms": float(a.mean() * 1e3),
            "median_ms": float(np.median(a) * 1e3),
            "cpu_mean_ms": 1e3 * own / len(a),
            "other_processes_cores_busy": _others(machine, own) / float(a.sum()),
        }

    def times_ms(self) -> list[float]:
        """Wall time per block in ms, rounded to 0.1 µs (for JSON)."""
        return [round(1e3 * t, 4) for t in self.wall]

    def other_cores_busy(self) -> list[float]:
        """Per block: cores other processes kept busy (coarse: /proc/stat counts 10 ms ticks)."""
        return [
            round(_others(b, c) / w, 2)
            for w, c, b in zip(self.wall, self.cpu, self.busy, strict=True)
        ]


def _others(machine: float, own: float) -> float:
    # Clamp at 0: the machine's tick counter is coarser than process_time, so a quiet
    # machine can read slightly below this process alone. NaN (no probe) stays NaN,
    # which max() would silently turn into 0.0.
    return machine if math.isnan(machine) else max(0.0, machine - own)
