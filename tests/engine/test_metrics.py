"""Block timing statistics against numpy, and BlockClock's bookkeeping on a scripted clock."""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from engine import metrics
from engine.metrics import BlockClock, block_stats, segment_means_ms, trend_ms_per_1000


def test_block_stats_match_numpy_in_ms() -> None:
    times_s = np.random.default_rng(0).gamma(2.0, 0.01, size=257)  # skewed, like block times
    stats = block_stats(list(times_s))
    ms = times_s * 1e3
    for q in (50, 90, 99):
        assert stats[f"p{q}_ms"] == pytest.approx(np.percentile(ms, q), rel=1e-12)
    assert stats["count"] == 257
    assert stats["mean_ms"] == pytest.approx(ms.mean(), rel=1e-12)
    assert stats["std_ms"] == pytest.approx(ms.std(), rel=1e-12)
    assert (stats["min_ms"], stats["max_ms"]) == (pytest.approx(ms.min()), pytest.approx(ms.max()))
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    assert stats["p99_ms"] <= stats["max_ms"]


def test_block_stats_known_values_and_order_independence() -> None:
    times_s = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    stats = block_stats(times_s[::-1])
    # linear interpolation: p50 of 1..100 is 50.5, p90 is 90.1, p99 is 99.01
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats == block_stats(times_s)


def test_block_stats_single_and_empty() -> None:
    one = block_stats([0.02])
    assert one["count"] == 1 and one["std_ms"] == 0.0
    assert one["min_ms"] == one["p50_ms"] == one["p99_ms"] == one["max_ms"] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="at least one"):
        block_stats([])


def test_segment_means() -> None:
    times_s = [i / 1000 for i in range(1, 11)]  # 1..10 ms
    assert segment_means_ms(times_s, 5) == [1.5, 3.5, 5.5, 7.5, 9.5]
    assert segment_means_ms(times_s[:3], 10) == [1.0, 2.0, 3.0]  # fewer blocks than parts
    uneven = segment_means_ms(times_s, 3)  # numpy puts the extra block in the first part
    assert uneven == [2.5, 6.0, 9.0]
    with pytest.raises(ValueError):
        segment_means_ms([], 10)


def test_trend_is_the_slope_after_warmup() -> None:
    # 5 ms + 2 µs per block, after two huge warm-up blocks that must not count
    times_s = [1.0, 1.0] + [(5.0 + 0.002 * i) / 1e3 for i in range(2, 200)]
    assert trend_ms_per_1000(times_s, warmup=2) == pytest.approx(2.0, rel=1e-6)
    assert trend_ms_per_1000(times_s, warmup=0) < 0  # the warm-up would read as a speed-up
    assert trend_ms_per_1000([0.01, 0.02], warmup=1) == 0.0


def _scripted_time(wall: list[float], cpu: list[float]) -> SimpleNamespace:
    walls: Iterator[float] = iter(wall)
    cpus: Iterator[float] = iter(cpu)
    return SimpleNamespace(perf_counter=lambda: next(walls), process_time=lambda: next(cpus))


def test_block_clock_windows_and_neighbour_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # three blocks of 10, 20, 30 ms wall; this process uses 10, 10, 30 ms CPU;
    # the machine is busy 20, 5 (less than us: coarse ticks) and 90 ms
    monkeypatch.setattr(
        metrics, "time", _scripted_time([0, 0.01, 1, 1.02, 2, 2.03], [0, 0.01, 1, 1.01, 2, 2.03])
    )
    busy = iter([0, 0.02, 1, 1.005, 2, 2.09])
    clock = BlockClock(machine_busy=lambda: next(busy))
    for _ in range(3):
        clock.start()
        clock.stop()
    assert len(clock) == 3
    assert clock.times_ms() == [10.0, 20.0, 30.0]
    assert clock.recent_ms(2) == pytest.approx(25.0)
    assert clock.other_cores_busy() == [1.0, 0.0, 2.0]  # (busy - own) / wall, clamped at 0
    w = clock.window(1, 3)
    assert w["blocks"] == [1, 3] and w["count"] == 2
    assert w["mean_ms"] == pytest.approx(25.0) and w["median_ms"] == pytest.approx(25.0)
    assert w["cpu_mean_ms"] == pytest.approx(20.0)
    assert w["other_processes_cores_busy"] == pytest.approx((0.095 - 0.04) / 0.05)


def test_block_clock_without_probe_reports_unknown_not_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "time", _scripted_time([0, 0.01], [0, 0.01]))
    clock = BlockClock()
    clock.start()
    clock.stop()
    assert clock.window(0, 1)["mean_ms"] == pytest.approx(10.0)
    assert math.isnan(clock.window(0, 1)["other_processes_cores_busy"])
    assert math.isnan(clock.other_cores_busy()[0])
