"""The streaming benchmark runs end to end and reports consistent numbers (no speed limits)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from bench.stream import add_bench_arguments, main, run_bench

SMALL = [
    "--preset", "nano", "--latent-hw", "4", "4", "--block-frames", "3",
    "--sinks", "3", "--window", "6", "--seed", "1",
]  # fmt: skip


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(argv)


def test_run_bench_small_stream(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "bench.json"
    args = _args([*SMALL, "--blocks", "40", "--baseline-blocks", "10", "--out", str(out)])
    result = run_bench(args)

    saved = json.loads(out.read_text())
    for key in ("timestamp", "environment", "config", "notes", "results"):
        assert key in saved, key
    env = saved["environment"]
    for key in ("device_name", "torch", "python", "platform", "threads"):
        assert env[key], key
    assert "random" in saved["notes"]["weights"]
    assert saved["config"]["window"] == 6 and saved["config"]["blocks"] == 40
    assert saved["results"] == json.loads(json.dumps(result["results"]))

    cached = saved["results"]["cached"]
    assert len(cached["block_times_ms"]) == 40
    cache = cached["cache"]
    # the window (3 sinks + 6 frames) is full after 3 blocks, and it stays full
    assert cache["after_window_fill"]["frames_kept"] == 9
    assert cache["end"]["frames_kept"] == 9
    assert cache["after_window_fill"]["bytes"] == cache["end"]["bytes"] > 0
    assert cache["buffers_not_reallocated"]

    ss = cached["steady_state"]
    assert ss["count"] == 40 - cached["warmup_blocks"]
    assert 0 < ss["p50_ms"] <= ss["p90_ms"] <= ss["p99_ms"] <= ss["max_ms"]
    assert ss["video_fps"] == pytest.approx(4 * ss["latent_fps"])
    assert cached["ttff_ms"] >= cached["block_times_ms"][0] > 0
    drift = cached["first_vs_last"]
    assert drift["first"]["blocks"] == [0, 20] and drift["last"]["blocks"] == [20, 40]
    assert math.isfinite(drift["ratio_last_over_first"]) and drift["ratio_last_over_first"] > 0
    acc = saved["results"]["acceptance"]
    assert acc["raw_first_vs_last_ratio"] == drift["ratio_last_over_first"]
    assert acc["paired_within_10pct"] in (True, False) and acc["segment_spread_pct"] >= 0
    paired = cached["paired_fresh_vs_aged"]
    assert paired["fresh"]["blocks"] == [0, 20] and paired["aged"]["blocks"] == [40, 60]
    assert math.isfinite(paired["ratio_aged_over_fresh"]) and paired["ratio_aged_over_fresh"] > 0
    assert len(cached["segments_mean_ms"]) == 10
    assert cached["rss"]["after_warmup_bytes"] > 0 and math.isfinite(cached["rss"]["growth_pct"])

    base = saved["results"]["baseline"]
    assert len(base["block_times_ms"]) == 10
    assert base["steady_state"]["context_frames"] == 9
    speedup = saved["results"]["speedup_vs_baseline"]
    assert math.isfinite(speedup) and speedup > 0
    # cached blocks interleaved with the baseline's steady state (blocks 5..9) continue the stream
    inter = base["interleaved_cached"]
    assert inter["count"] == 5 and inter["blocks"] == [65, 70]
    assert math.isfinite(inter["speedup"]) and inter["speedup"] > 0


def test_main_prints_json_and_rejects_bad_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.json"
    assert main([*SMALL, "--blocks", "12", "--no-baseline", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert (
        printed["results"]["baseline"] is None and printed["results"]["speedup_vs_baseline"] is None
    )

    # a window that is not a multiple of the block is a clear error, not a crash
    assert main([*SMALL, "--window", "5", "--blocks", "12", "--out", str(out)]) == 2
    assert "multiples of --block-frames" in capsys.readouterr().err


def test_naive_baseline_matches_cached_stream_before_eviction() -> None:
    """Until the window starts evicting, recomputing the whole context every step is the
    same computation as the cache: the baseline is a fair (same-work) comparison."""
    import torch

    from bench.baseline import NaiveStream
    from engine.cache import CacheConfig
    from engine.loop import DenoisingLoop, LoopConfig, SeededNoise
    from engine.schedule import FlowSchedule
    from models.wan.config import PRESETS
    from models.wan.loader import build_model

    model = build_model(PRESETS["nano"], seed=3)
    schedule, lc = FlowSchedule(), LoopConfig(block_frames=3, latent_hw=(4, 4))
    cc = CacheConfig.rolling_window(3, 6)
    context = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(0))
    loop = DenoisingLoop(model, schedule, lc, cc, SeededNoise(7))
    loop.set_context(context)
    naive = NaiveStream(model, schedule, lc, cc, context, SeededNoise(7))
    for _ in range(3):  # 3 sinks + 6 window frames: full, nothing evicted yet
        torch.testing.assert_close(naive.next_block(), loop.next_block(), rtol=0, atol=1e-5)
    assert naive.context_frames == 9
