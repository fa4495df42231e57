"""Stream batch: a reordering of its own schedule (batched = one at a time), the plain
loop when there is one step, one batched forward per block after the pipe fills."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from engine.cache import CacheConfig
from engine.executor import BatchingExecutor, SequentialExecutor
from engine.loop import DenoisingLoop, LoopConfig, SeededNoise
from engine.schedule import FlowSchedule
from engine.stream_batch import StreamBatchLoop
from models.wan.model import CausalWanModel

HW = (4, 4)


def prompt(model: CausalWanModel, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, model.config.text_dim, generator=g)


def script(loop: StreamBatchLoop | DenoisingLoop, model: CausalWanModel) -> Tensor:
    """8 blocks, recache switch, 5 blocks, hard cut, 5 blocks: the window evicts."""
    loop.set_context(prompt(model, 0))
    out = [loop.next_block() for _ in range(8)]
    loop.recache(prompt(model, 1))
    out += [loop.next_block() for _ in range(5)]
    loop.hard_cut(prompt(model, 2))
    out += [loop.next_block() for _ in range(5)]
    return torch.cat(out, dim=1)


SCHEDULES = {
    "euler-4": (FlowSchedule(sampler="euler", shift=3.0), CacheConfig.rolling_window(1, 3), 1),
    "renoise-ctx-3": (
        FlowSchedule(steps=(1000, 700, 300), context_step=100),
        CacheConfig.rolling_window(2, 4),
        2,
    ),
    "global-2": (FlowSchedule(steps=(1000, 500)), CacheConfig.global_attention(40), 1),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_batched_is_a_reordering_of_one_at_a_time(tiny: CausalWanModel, name: str) -> None:
    schedule, cache, bf = SCHEDULES[name]
    outs = []
    for batched in (False, True):
        loop = StreamBatchLoop(
            tiny, schedule, LoopConfig(bf, HW), cache, SeededNoise(5), batched=batched
        )
        outs.append(script(loop, tiny))
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-5
    assert outs[0].abs().max() > 0.1


@pytest.mark.parametrize("batched", [False, True])
def test_one_step_is_the_plain_loop(tiny: CausalWanModel, batched: bool) -> None:
    schedule, cache = FlowSchedule(steps=(1000,), context_step=50), CacheConfig.rolling_window(1, 3)
    plain = script(DenoisingLoop(tiny, schedule, LoopConfig(1, HW), cache, SeededNoise(2)), tiny)
    sb = StreamBatchLoop(tiny, schedule, LoopConfig(1, HW), cache, SeededNoise(2), batched=batched)
    got = script(sb, tiny)
    tolerance = 1e-5 if batched else 0.0
    assert (got - plain).abs().max().item() <= tolerance


def test_several_steps_differ_from_the_plain_loop(tiny: CausalWanModel) -> None:
    """The lagged context is an approximation of Self-Forcing's, not the same thing."""
    schedule, cache = FlowSchedule(sampler="euler"), CacheConfig.rolling_window(1, 3)
    plain = script(DenoisingLoop(tiny, schedule, LoopConfig(1, HW), cache, SeededNoise(2)), tiny)
    sb = script(StreamBatchLoop(tiny, schedule, LoopConfig(1, HW), cache, SeededNoise(2)), tiny)
    assert (sb - plain).abs().max().item() > 1e-3


def test_one_batched_forward_per_block_after_the_pipe_fills(tiny: CausalWanModel) -> None:
    steps = (1000, 750, 500, 250)
    loop = StreamBatchLoop(
        tiny, FlowSchedule(steps=steps), LoopConfig(1, HW), CacheConfig(1, 3), SeededNoise(0)
    )
    assert isinstance(loop.executor, BatchingExecutor)
    loop.set_context(prompt(tiny, 0))
    loop.next_block()
    assert loop.executor.batches == len(steps)  # the first block leaves after k forwards
    for _ in range(10):
        loop.next_block()
    # each later block: one batch holding the commit, k - 1 later steps and a new block
    assert loop.executor.batches == len(steps) + 10


def test_sequential_executor_runs_every_request_alone(tiny: CausalWanModel) -> None:
    calls: list[int] = []

    class Counting:
        def __init__(self, inner: CausalWanModel) -> None:
            self.inner = inner
            self.latent_channels, self.device = inner.latent_channels, inner.device

        def new_caches(self, *a: object, **k: object) -> object:
            return self.inner.new_caches(*a, **k)  # type: ignore[arg-type]

        def predict_flow(self, *a: object) -> Tensor:
            calls.append(1)
            return self.inner.predict_flow(*a)  # type: ignore[arg-type]

    loop = StreamBatchLoop(
        Counting(tiny),  # type: ignore[arg-type]
        FlowSchedule(steps=(1000, 500)),
        LoopConfig(1, HW),
        CacheConfig(1, 3),
        SeededNoise(0),
    )
    assert isinstance(loop.executor, SequentialExecutor)  # no predict_flow_many
    loop.set_context(prompt(tiny, 0))
    for _ in range(6):
        loop.next_block()
    # the first block: 1 + 2 forwards (the pipe fills); then per block a tick of the
    # previous block's commit and 2 denoising forwards, each run alone
    assert len(calls) == 3 + 5 * 3
