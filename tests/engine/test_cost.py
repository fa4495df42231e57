"""The pipeline cost model: properties of predict() that a wrong replay or split would
break, the transfer fit, and a real (fast) measurement on the nano preset."""

from __future__ import annotations

import dataclasses
import math
import random
import time

import pytest
import torch

from engine.cache import CacheConfig
from engine.denoisers import Denoiser
from engine.loop import LoopConfig
from engine.parallel.cost import (
    StageTimes,
    TransferTimes,
    fill_cache,
    fit_transfer,
    measure_block_times,
    measure_driver_time,
    measure_transfer,
    predict,
)
from engine.schedule import FlowSchedule
from models.wan.model import CausalWanModel

DENOISERS: tuple[Denoiser, ...] = ("plain", "stream_batch")
ZERO = TransferTimes.zero()


def times(blocks: list[float], **kw: float) -> StageTimes:
    values: dict[str, float] = {"embed_s": 0.0, "head_s": 0.0, "stage_overhead_s": 0.0}
    values.update(kw)
    return StageTimes(
        block_s=tuple(blocks),
        commit_block_s=tuple(0.9 * b for b in blocks),
        latent_bytes=16_384,
        activation_bytes=49_152,
        timestep_bytes=4,
        **values,
    )


def random_times(rng: random.Random, layers: int = 8) -> StageTimes:
    return times(
        [rng.uniform(0.5e-3, 5e-3) for _ in range(layers)],
        embed_s=rng.uniform(0, 2e-3),
        head_s=rng.uniform(0, 2e-3),
        stage_overhead_s=rng.uniform(0, 3e-4),
        stage_plan_s=rng.uniform(0, 1e-4),
        driver_s=rng.uniform(0, 2e-4),
    )


@pytest.mark.parametrize("denoiser", DENOISERS)
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_one_stage_is_the_sum_of_its_parts(denoiser: Denoiser, steps: int) -> None:
    t = times([1e-3, 2e-3, 3e-3], embed_s=4e-4, head_s=5e-4, stage_overhead_s=1e-4, driver_s=5e-5)
    commit = t.stage_overhead_s + t.embed_s + sum(t.commit_block_s)
    expected = steps * t.forward_s + commit + (steps + 1) * t.driver_s
    base = predict(t, ZERO, 1, steps=steps, denoiser=denoiser, in_process=True)
    assert base.block_s == pytest.approx(expected, rel=1e-9)
    assert base.utilisation[0] == pytest.approx(1 - (steps + 1) * t.driver_s / expected)
    one = predict(t, ZERO, 1, steps=steps, denoiser=denoiser)  # one stage, free transfers
    assert one.block_s <= expected * (1 + 1e-9)
    if denoiser == "plain":  # the loop waits for every forward: nothing overlaps
        assert one.block_s == pytest.approx(expected, rel=1e-9)
        assert one.ttfb_s == pytest.approx(expected, rel=1e-9)


def test_transfers_add_to_every_plain_forward() -> None:
    t = times([2e-3] * 4)
    link = TransferTimes(1e-4, 1e9)
    msg = link.message_s
    hop_in = [msg(256) + msg(16_384) + msg(4), msg(256) + msg(49_152) + msg(4)]
    back = [msg(256) + msg(16_384), msg(256)]
    p = predict(t, link, 2, split="even", steps=3, denoiser="plain")
    compute = 3 * sum(t.block_s) + sum(t.commit_block_s)
    assert p.block_s == pytest.approx(compute + 4 * sum(hop_in) + 3 * back[0] + back[1])
    assert p.layers == ((0, 2), (2, 4))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("denoiser", DENOISERS)
def test_balanced_split_is_never_worse_than_even(seed: int, denoiser: Denoiser) -> None:
    rng = random.Random(seed)
    t = random_times(rng)
    link = TransferTimes(rng.uniform(0, 2e-4), rng.uniform(1e8, 1e10))
    for stages in (2, 3, 4):
        for steps in (1, 2, 4):
            kw = {"steps": steps, "denoiser": denoiser}
            balanced = predict(t, link, stages, split="balanced", **kw)  # type: ignore[arg-type]
            even = predict(t, link, stages, split="even", **kw)  # type: ignore[arg-type]
            assert balanced.blocks_per_s >= even.blocks_per_s * (1 - 1e-9), (stages, steps)
            assert max(balanced.stage_s) <= max(even.stage_s) + 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_stream_batch_is_never_slower_than_plain(seed: int) -> None:
    rng = random.Random(seed)
    t = random_times(rng)
    link = TransferTimes(rng.uniform(0, 5e-4), rng.uniform(1e8, 1e10))
    for stages in (1, 2, 3, 4):
        for steps in (1, 2, 4):
            for cores in (None, 1, 2):
                kw = {"steps": steps, "cores": cores}
                sb = predict(t, link, stages, denoiser="stream_batch", **kw)  # type: ignore[arg-type]
                plain = predict(t, link, stages, denoiser="plain", **kw)  # type: ignore[arg-type]
                assert sb.blocks_per_s >= plain.blocks_per_s * (1 - 1e-9), (stages, steps, cores)


def test_stream_batch_scales_with_balanced_stages_and_free_transfers() -> None:
    t = times([2e-3] * 8)
    base = predict(t, ZERO, 1, steps=4, denoiser="stream_batch", in_process=True)
    for stages in (2, 4):
        p = predict(t, ZERO, stages, steps=4, denoiser="stream_batch")
        assert p.blocks_per_s >= 0.9 * stages * base.blocks_per_s, stages
        assert min(p.utilisation) >= 0.9
        assert p.ttfb_s < base.ttfb_s * 1.5  # filling the pipe is cheap when it is balanced
    # one step: two forwards per tick, and each tick waits for a full round trip
    one = predict(t, ZERO, 1, steps=1, denoiser="stream_batch", in_process=True)
    four = predict(t, ZERO, 4, steps=1, denoiser="stream_batch")
    assert 1.2 * one.blocks_per_s < four.blocks_per_s < 2.0 * one.blocks_per_s


def test_plain_loop_gains_nothing_from_stages() -> None:
    t = times([2e-3] * 8, stage_overhead_s=1e-4)
    one = predict(t, ZERO, 1, steps=4, denoiser="plain")
    for stages in (2, 4, 8):
        p = predict(t, ZERO, stages, steps=4, denoiser="plain")
        assert p.blocks_per_s < one.blocks_per_s  # only more per-stage overhead
        assert max(p.utilisation) < 1.5 / stages


def test_stages_sharing_one_core_do_not_beat_one_process() -> None:
    t = times([2e-3] * 6, stage_overhead_s=1e-4)
    base = predict(t, ZERO, 1, steps=4, denoiser="stream_batch", in_process=True)
    for stages in (2, 3):
        shared = predict(t, ZERO, stages, steps=4, denoiser="stream_batch", cores=1)
        assert shared.blocks_per_s <= base.blocks_per_s * (1 + 1e-9)
        own = predict(t, ZERO, stages, steps=4, denoiser="stream_batch")
        assert own.blocks_per_s > 1.5 * shared.blocks_per_s
    # three stages pinned to two cores: stages 1 and 3 share core 0
    two = predict(t, ZERO, 3, steps=4, denoiser="stream_batch", cores=2)
    assert two.blocks_per_s < predict(t, ZERO, 3, steps=4, denoiser="stream_batch").blocks_per_s


def test_slower_links_never_help() -> None:
    t = times([2e-3] * 4)
    last = math.inf
    for latency in (0.0, 1e-4, 1e-3, 1e-2):
        p = predict(t, TransferTimes(latency, 1e9), 2, steps=4, denoiser="stream_batch")
        assert p.blocks_per_s <= last
        last = p.blocks_per_s


def test_prediction_fields_are_consistent() -> None:
    t = dataclasses.replace(times([1e-3] * 4), block_frames=3)
    p = predict(t, TransferTimes(1e-4, 1e9), 2, steps=2, denoiser="stream_batch")
    assert p.blocks_per_s == pytest.approx(1 / p.block_s)
    assert p.latent_fps == pytest.approx(3 * p.blocks_per_s)
    assert p.video_fps == pytest.approx(4 * p.latent_fps)
    assert len(p.utilisation) == len(p.stage_s) == len(p.transfer_in_s) == 2
    assert p.round_trip_s > sum(p.stage_s)
    with pytest.raises(ValueError):
        predict(t, ZERO, 2, in_process=True)
    with pytest.raises(ValueError):
        predict(t, ZERO, 2, split=[range(0, 1), range(2, 4)])
    with pytest.raises(ValueError):
        predict(t, ZERO, 1, denoiser="rolling")


def test_repeat_layers() -> None:
    one = times([2e-3], head_s=1e-3)
    many = one.repeat_layers(30)
    assert many.num_layers == 30 and many.commit_block_s == (0.9 * 2e-3,) * 30
    assert many.forward_s == pytest.approx(30 * 2e-3 + 1e-3)
    with pytest.raises(ValueError):
        many.repeat_layers(2)


def test_fit_transfer_recovers_latency_and_bandwidth() -> None:
    samples = [(n, 5e-5 + n / 2e9) for n in (256, 65_536, 1 << 20, 8 << 20)]
    fit = fit_transfer(samples)
    assert fit.latency_s == pytest.approx(5e-5, rel=1e-6)
    assert fit.bytes_per_s == pytest.approx(2e9, rel=1e-6)
    assert fit.message_s(4 << 20) == pytest.approx(5e-5 + (4 << 20) / 2e9)
    flat = fit_transfer([(256, 1e-4), (4096, 9e-5)])  # noise: no positive slope
    assert math.isinf(flat.bytes_per_s) and flat.latency_s > 0


def test_real_measurement_on_nano(nano: CausalWanModel) -> None:
    """Real timings of the nano preset and a real gloo link; fast (< 10 s)."""
    start = time.perf_counter()
    hw, bf = (4, 4), 1
    config = CacheConfig.rolling_window(1, 2)
    t = measure_block_times(nano, hw, bf, config, repeats=3, warmup=1)
    assert t.num_layers == nano.num_layers
    assert all(s >= 0 for s in t.block_s + t.commit_block_s)
    assert t.forward_s > 0 and t.embed_s > 0 and t.head_s > 0
    tokens_per_frame = (hw[0] // 2) * (hw[1] // 2)
    assert t.tokens == bf * tokens_per_frame
    assert t.kv_tokens == (1 + 2 + bf) * tokens_per_frame  # the window is full
    assert t.activation_bytes == t.tokens * nano.token_dim * 4
    assert t.latent_bytes == bf * nano.latent_channels * hw[0] * hw[1] * 4

    schedule = FlowSchedule(steps=(1000, 500), shift=3.0, sampler="euler")
    driver = measure_driver_time(nano, schedule, LoopConfig(bf, hw), config, "stream_batch", 5)
    assert 0 < driver < 0.05

    link = measure_transfer([256, 65_536], repeats=3, warmup=1)
    assert len(link.samples) == 2 and all(s > 0 for _, s in link.samples)
    assert link.latency_s >= 0 and link.message_s(1024) > 0

    t = dataclasses.replace(t, driver_s=driver)
    for denoiser in DENOISERS:
        base = predict(t, link, 1, steps=2, denoiser=denoiser, in_process=True)
        piped = predict(t, link, 2, steps=2, denoiser=denoiser, cores=2)
        assert base.blocks_per_s > 0 and piped.blocks_per_s > 0
        assert piped.ttfb_s > 0
    assert time.perf_counter() - start < 10.0


def test_fill_cache_looks_like_a_full_window(nano: CausalWanModel) -> None:
    config = CacheConfig.rolling_window(1, 2)
    cache, cross = nano.new_caches((4, 4), 1, config)
    fill_cache(cache, cross)
    assert cross.valid and cache.frames_kept == 3
    plan = cache.plan(1, commit=True)
    assert plan.commit_start is not None and plan.sink_raw_start is None  # a ring slot
    assert float(cache.k.abs().sum()) > 0
    glob = CacheConfig.global_attention(max_frames=4)
    cache, cross = nano.new_caches((4, 4), 1, glob)
    fill_cache(cache, cross)
    cache.plan(1, commit=True)  # one block of room left: no CacheError
    assert cache.frames_kept == 3
    with torch.inference_mode():
        fill_cache(cache, cross)  # also fine inside inference mode
