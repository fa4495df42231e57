"""Which transformer blocks each pipeline stage owns."""

from __future__ import annotations

from collections.abc import Sequence


def split_layers(num_layers: int, stages: int) -> list[range]:
    """Contiguous ranges of as equal size as possible (earlier stages get the extra block)."""
    if not 1 <= stages <= num_layers:
        raise ValueError(f"cannot split {num_layers} blocks over {stages} stages (1..{num_layers})")
    base, extra = divmod(num_layers, stages)
    ranges, start = [], 0
    for s in range(stages):
        size = base + (1 if s < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def balance_layers(
    block_seconds: Sequence[float],
    stages: int,
    *,
    first_extra: float = 0.0,
    last_extra: float = 0.0,
) -> list[range]:
    """Contiguous ranges that minimise the slowest stage, from measured per-block times.

    first_extra / last_extra: time the first stage spends embedding and the last
    one in the output head. Exact (dynamic programming over split points)."""
    n = len(block_seconds)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot split {n} blocks over {stages} stages (1..{n})")
    prefix = [0.0]
    for t in block_seconds:
        prefix.append(prefix[-1] + t)

    def cost(a: int, b: int, s: int) -> float:
        extra = (first_extra if s == 0 else 0.0) + (last_extra if s == stages - 1 else 0.0)
        return prefix[b] - prefix[a] + extra

    inf = float("inf")
    # best[s][i]: the slowest stage when stages 0..s-1 cover blocks 0..i-1
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        for i in range(s, n + 1):
            for j in range(s - 1, i):
                value = max(best[s - 1][j], cost(j, i, s - 1))
                if value < best[s][i]:
                    best[s][i], cut[s][i] = value, j
    ranges, i = [], n
    for s in range(stages, 0, -1):
        j = cut[s][i]
        ranges.append(range(j, i))
        i = j
    return ranges[::-1]
