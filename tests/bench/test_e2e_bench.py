"""The end-to-end benchmark runs on a tiny random model and its timing proxies change nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.e2e import SpanTimer, TimedDecoder, TimedGenerator, main
from bench.stream import default_out
from engine.protocols import StreamingDecoder
from models.decoders import LatentPreviewDecoder, TAEHVConfig, TinyVideoDecoder
from models.resolve import ModelOptions, build_stream

NANO = ["--preset", "nano", "--height", "32", "--width", "32", "--seed", "1"]
FRAMES, WARMUP = 24, 12  # nano streams 3-frame blocks: 12 video frames per block


def test_e2e_bench_nano(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e2e.json"
    argv = [*NANO, "--frames", str(FRAMES), "--warmup-frames", str(WARMUP), "--out", str(out)]
    assert main(argv) == 0  # the default: the resolution runs in a fresh process
    saved = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == saved

    for key in ("timestamp", "environment", "config", "notes", "results"):
        assert key in saved, key
    for key in ("device_name", "torch", "python", "platform", "threads"):
        assert saved["environment"][key], key
    assert saved["config"]["frames"] == FRAMES and "random" in saved["config"]["weights"]
    acc = saved["results"]["acceptance"]
    assert acc["meets"] is None  # the real-time target is set at 128x128, not measured here

    (r,) = saved["results"]["resolutions"]
    assert (r["height"], r["width"]) == (32, 32)
    c = r["config"]
    assert (
        c["latent_hw"] == [4, 4] and c["block_frames"] == 3 and c["steps"] == [1000, 750, 500, 250]
    )
    assert (c["sinks"], c["window"], c["dtype"]) == (3, 12, "float32")
    assert r["environment"]["threads"] >= 1 and r["load"]["total_s"] > 0

    ss = r["steady_state"]
    assert ss["frames"] == ss["frames_requested"] == FRAMES
    assert ss["video_fps"] > 0 and ss["ms_per_frame"] == pytest.approx(1e3 / ss["video_fps"])
    assert 0 < ss["p50_ms"] <= ss["p99_ms"] <= ss["max_ms"]
    assert r["warmup"] == {"blocks": 1, "frames": WARMUP, "window_fill_blocks": 5}
    first, end = ss["blocks"]
    assert sum(r["block_frames_out"][first:end]) == FRAMES and ss["count"] == end - first == 2

    t = r["ttff"]
    assert t["ttff_s"] > 0 and t["blocks_to_first_frame"] == 1
    assert t["ttff_s"] >= t["first_blocks_s"] > 0 and t["second_session"]["ttff_s"] > 0
    # warm-up, the timed blocks, then the second session's first block
    assert len(r["block_times_ms"]) == len(r["block_decode_ms"]) == end + 1

    split = r["split_ms_per_block"]
    assert split["denoise"]["mean_ms"] > 0 and split["decode"]["mean_ms"] > 0
    shares = split["denoise_share"] + split["decode_share"] + split["other_share"]
    assert shares == pytest.approx(1.0)
    assert r["realtime"]["meets"] == (ss["video_fps"] >= 24 and t["ttff_s"] <= 0.5)


def test_e2e_bench_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*NANO, "--frames", "0", "--in-process"]) == 2
    assert "--frames must be >= 1" in capsys.readouterr().err
    name = default_out("bundle", "AMD EPYC 7B13", kind="e2e").name
    assert name.startswith("e2e_bundle_amd-epyc-7b13_") and name.endswith(".json")


@pytest.mark.parametrize(
    "make",
    [
        lambda: TinyVideoDecoder(TAEHVConfig.tiny(), seed=3).eval(),
        lambda: LatentPreviewDecoder(16, seed=3),
    ],
    ids=["taehv", "preview"],
)
def test_timed_decoder_passes_frames_through(make: Callable[[], StreamingDecoder]) -> None:
    plain, inner = make(), make()
    timed = TimedDecoder(inner, SpanTimer(torch.device("cpu")))
    assert (timed.frames_per_latent, timed.upscale) == (plain.frames_per_latent, plain.upscale)
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(1, 2, 16, 2, 2, generator=g) for _ in range(2)]
    for _ in range(2):  # a stream, then a reset and the same stream again
        plain.reset()
        timed.reset()
        for latents in blocks:
            expected = plain.push(latents)
            assert torch.equal(timed.push(latents), expected)
            assert timed.timer.take_ms() > 0
        assert torch.equal(timed.flush(), plain.flush())
    assert timed.timer.spans == 2 * (len(blocks) + 1)


def test_timed_stream_makes_the_same_frames() -> None:
    """Both proxies in a real Stream: identical frames, and every block's work is timed."""
    opts = ModelOptions(model="nano", height=32, width=32, seed=2)
    plain, timed = build_stream(opts), build_stream(opts)
    cpu = torch.device("cpu")
    den, dec = SpanTimer(cpu), SpanTimer(cpu)
    timed.generator = TimedGenerator(timed.generator, den)
    timed.decoder = TimedDecoder(timed.decoder, dec)
    plain.start("a red ball")
    timed.start("a red ball")
    for _ in range(2):
        a, b = plain.next_block(), timed.next_block()
        assert [f.pts for f in a] == [f.pts for f in b]
        for fa, fb in zip(a, b, strict=True):
            np.testing.assert_array_equal(fa.data, fb.data)
        assert den.take_ms() > 0 and dec.take_ms() > 0
    assert den.spans == 2 * 5 and dec.spans == 2  # 4 steps + 1 commit forward per block
    plain.close()
    timed.close()
