"""Pipeline parallelism with real processes over gloo: same frames as one process,
memory freed with the session, failures reported within a bounded time."""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from engine.cache import CacheConfig
from engine.denoisers import BlockLoop, Denoiser, make_loop
from engine.loop import LoopConfig, SeededNoise
from engine.parallel import Pipeline, PipelineConfig, PipelineError, balance_layers, split_layers
from engine.protocols import CausalGenerator
from engine.schedule import FlowSchedule
from models.resolve import GeneratorSpec, ModelOptions
from models.wan.model import CausalWanModel

SPEC = GeneratorSpec(ModelOptions(model="tiny", seed=0))  # 4 blocks, random weights
HW = (4, 4)


def prompts(n: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(1, 5, 384, generator=g) for _ in range(n)]


def run_script(
    generator: CausalGenerator,
    denoiser: Denoiser,
    schedule: FlowSchedule,
    cache: CacheConfig,
    block_frames: int,
) -> Tensor:
    """10 blocks, a recache switch, 6 blocks, a hard cut, 6 blocks (the window evicts)."""
    a, b, c = prompts(3)
    loop = make_loop(
        denoiser,
        generator,
        schedule,
        LoopConfig(block_frames, HW),
        cache,
        SeededNoise(3),
    )
    loop.set_context(a)
    out = [loop.next_block() for _ in range(10)]
    loop.recache(b)
    out += [loop.next_block() for _ in range(6)]
    loop.hard_cut(c)
    out += [loop.next_block() for _ in range(6)]
    return torch.cat(out, dim=1)


def started_plain_loop(generator: CausalGenerator) -> BlockLoop:
    """A plain loop on ``generator`` with a prompt set, ready for next_block()."""
    loop = make_loop(
        "plain",
        generator,
        FlowSchedule(),
        LoopConfig(1, HW),
        CacheConfig(1, 3),
        SeededNoise(0),
    )
    loop.set_context(prompts(1)[0])
    return loop


@pytest.fixture(scope="module")
def reference() -> CausalWanModel:
    return SPEC(range(4))


@pytest.fixture(scope="module", params=[2, 3], ids=["2-stage", "3-stage"])
def pipeline(request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    pipe = Pipeline.spawn(
        SPEC, PipelineConfig(stages=request.param, threads_per_stage=1, timeout_s=30)
    )
    yield pipe
    pipe.close()


CASES = {
    # denoiser, schedule, cache, block frames
    "plain-euler-sink": (
        "plain",
        FlowSchedule(sampler="euler"),
        CacheConfig.rolling_window(1, 3),
        1,
    ),
    "plain-renoise-ctxnoise": (
        "plain",
        FlowSchedule(context_step=100),
        CacheConfig.rolling_window(2, 4),
        2,
    ),
    "stream_batch-euler": (
        "stream_batch",
        FlowSchedule(sampler="euler", shift=3.0),
        CacheConfig.rolling_window(1, 3),
        1,
    ),
    "stream_batch-renoise-blocks2": (
        "stream_batch",
        FlowSchedule(steps=(1000, 500), context_step=50),
        CacheConfig.rolling_window(2, 4),
        2,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_gives_the_single_process_frames(
    pipeline: Pipeline, reference: CausalWanModel, case: str
) -> None:
    denoiser, schedule, cache, bf = CASES[case]
    expected = run_script(reference, denoiser, schedule, cache, bf)  # type: ignore[arg-type]
    got = run_script(pipeline.generator, denoiser, schedule, cache, bf)  # type: ignore[arg-type]
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    assert expected.abs().max() > 0.1  # not trivially zero


def test_every_stage_did_work_and_freed_closed_streams(pipeline: Pipeline) -> None:
    gc.collect()  # streams of earlier tests are freed with the next request
    before = pipeline.stage_stats()
    assert [s["stage"] for s in before] == list(range(1, pipeline.stages + 1))
    held_before = before[0]["caches"]
    loop = started_plain_loop(pipeline.generator)
    loop.next_block()
    during = pipeline.stage_stats()
    assert all(s["caches"] == held_before + 1 for s in during)
    assert all(d["forwards"] >= b["forwards"] + 5 for d, b in zip(during, before, strict=True))
    del loop
    gc.collect()
    after = pipeline.stage_stats()  # the free travels ahead of the stats request
    assert all(s["caches"] == held_before for s in after)


def test_killed_stage_fails_waiting_and_new_requests_quickly() -> None:
    pipe = Pipeline.spawn(SPEC, PipelineConfig(stages=2, threads_per_stage=1, timeout_s=30))
    try:
        loop = started_plain_loop(pipe.generator)
        loop.next_block()
        victim = pipe.processes[1]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PipelineError, match=r"stage 2 .*exit"):
            for _ in range(1000):  # bounded: fails within a few blocks
                loop.next_block()
        assert time.monotonic() - t0 < 10
        assert not pipe.healthy
        with pytest.raises(PipelineError):
            pipe.generator.new_caches(HW, 1, CacheConfig(1, 3))
    finally:
        pipe.close()
    assert all(not p.is_alive() for p in pipe.processes)


def test_hung_stage_is_detected_by_the_timeout() -> None:
    pipe = Pipeline.spawn(SPEC, PipelineConfig(stages=2, threads_per_stage=1, timeout_s=2))
    stopped = pipe.processes[0]
    try:
        loop = started_plain_loop(pipe.generator)
        loop.next_block()
        assert stopped.pid is not None
        os.kill(stopped.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(PipelineError, match=r"hung or died|no reply"):
            loop.next_block()
        assert time.monotonic() - t0 < 10
    finally:
        if stopped.pid is not None and stopped.is_alive():
            os.kill(stopped.pid, signal.SIGCONT)
        pipe.close()


def test_layer_splits() -> None:
    assert split_layers(4, 3) == [range(0, 2), range(2, 3), range(3, 4)]
    assert split_layers(30, 4)[-1] == range(23, 30)
    with pytest.raises(ValueError, match="cannot split"):
        split_layers(2, 3)
    # one slow block gets a stage of its own; the head's cost moves work off the last stage
    assert balance_layers([1, 1, 6, 1, 1], 3) == [range(0, 2), range(2, 3), range(3, 5)]
    assert balance_layers([1, 1, 1, 1], 2, last_extra=2.0) == [range(0, 3), range(3, 4)]
    with pytest.raises(ValueError, match="cover blocks"):
        PipelineConfig(stages=2, layers=((0, 1), (2, 4))).layer_ranges(4)
