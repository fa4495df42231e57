"""The rolling (Rolling Forcing) loop: determinism, the 1-step reference, forward counts,
bounded memory, prompt switches, and the ways a session picks it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from engine.cache import BlockPlan, CacheConfig, CacheError, CrossAttentionCache, KVCache
from engine.denoisers import DENOISERS, make_loop
from engine.loop import DenoisingLoop, LoopConfig, SeededNoise
from engine.protocols import GeneratorWrapper
from engine.rolling import RollingLoop
from engine.schedule import FlowSchedule
from engine.stream import Stream, StreamConfig
from models.decoders import LatentPreviewDecoder
from models.text import HashingPromptEncoder
from models.wan.model import CausalWanModel

HW = (4, 4)


def rolling(
    model: object,
    seed: int = 0,
    block_frames: int = 1,
    cache: CacheConfig | None = None,
    **sched: object,
) -> RollingLoop:
    return RollingLoop(
        model,  # type: ignore[arg-type]
        FlowSchedule(**sched),  # type: ignore[arg-type]
        LoopConfig(block_frames=block_frames, latent_hw=HW),
        cache or CacheConfig.rolling_window(block_frames, 3 * block_frames),
        SeededNoise(seed),
    )


def prompt(model: CausalWanModel, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, model.config.text_dim, generator=g)


def run(loop: RollingLoop | DenoisingLoop, blocks: int) -> list[Tensor]:
    return [loop.next_block() for _ in range(blocks)]


@dataclass(frozen=True)
class Forward:
    frames: int
    frame_index: int
    commit: bool
    timesteps: tuple[float, ...]  # per frame, batch row 0
    positions: tuple[int, ...]
    sink_position: int | None


class CountingModel(GeneratorWrapper):
    """A real generator that records every forward it runs."""

    def __init__(self, inner: CausalWanModel) -> None:
        super().__init__(inner)
        self.forwards: list[Forward] = []

    def predict_flow(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        cross: CrossAttentionCache,
        cache: KVCache,
        plan: BlockPlan,
    ) -> Tensor:
        self.forwards.append(
            Forward(
                plan.num_frames,
                plan.frame_index,
                plan.commit,
                tuple(timesteps[0].tolist()),
                tuple(plan.positions.tolist()),
                plan.sink_position,
            )
        )
        return self.inner.predict_flow(x, timesteps, context, cross, cache, plan)


@pytest.mark.parametrize("sampler", ["renoise", "euler"])
def test_same_seed_same_video_other_seed_other_video(tiny: CausalWanModel, sampler: str) -> None:
    outs = []
    for seed in (0, 0, 1):
        loop = rolling(tiny, seed, sampler=sampler)
        loop.set_context(prompt(tiny, 0))
        outs.append(torch.cat(run(loop, 6), dim=1))
    assert torch.equal(outs[0], outs[1])
    assert (outs[0] - outs[2]).abs().max() > 0.1
    assert torch.isfinite(outs[0]).all()


@pytest.mark.parametrize(("block_frames", "context_step"), [(1, 0), (1, 100), (2, 0)])
def test_one_step_schedule_is_exactly_the_plain_loop(
    tiny: CausalWanModel, block_frames: int, context_step: int
) -> None:
    """With one denoising step the window is one block: the plain loop, bit for bit."""
    cache = CacheConfig.rolling_window(block_frames, 2 * block_frames)
    sched = {"steps": (1000,), "context_step": context_step}
    plain = DenoisingLoop(
        tiny,
        FlowSchedule(**sched),  # type: ignore[arg-type]
        LoopConfig(block_frames=block_frames, latent_hw=HW),
        cache,
        SeededNoise(0),
    )
    roll = rolling(tiny, 0, block_frames, cache, **sched)
    for loop in (plain, roll):
        loop.set_context(prompt(tiny, 0))
    for a, b in zip(run(plain, 6), run(roll, 6), strict=True):
        assert torch.equal(a, b)
    region = slice(plain.cache.scratch_tokens, None)
    assert torch.equal(plain.cache.k[..., region, :], roll.cache.k[..., region, :])


def test_several_steps_differ_from_the_plain_loop(tiny: CausalWanModel) -> None:
    """With k > 1 steps the window is an approximation, not a reordering."""
    plain = DenoisingLoop(
        tiny,
        FlowSchedule(steps=(1000, 500)),
        LoopConfig(block_frames=1, latent_hw=HW),
        CacheConfig.rolling_window(1, 3),
        SeededNoise(0),
    )
    roll = rolling(tiny, 0, steps=(1000, 500))
    for loop in (plain, roll):
        loop.set_context(prompt(tiny, 0))
    diff = torch.cat(run(plain, 4), 1) - torch.cat(run(roll, 4), 1)
    assert diff.abs().max() > 1e-3


def test_warm_up_then_one_window_forward_and_one_commit_per_block(
    tiny: CausalWanModel,
) -> None:
    steps = (1000, 750, 500)
    model = CountingModel(tiny)
    loop = rolling(model, 0, steps=steps)
    loop.set_context(prompt(tiny, 0))
    t = FlowSchedule(steps=steps).timesteps
    run(loop, 1)
    # warm-up: windows of 1, 2, 3 blocks, block j at step (forward - j); then the commit
    assert [(f.frames, f.commit) for f in model.forwards] == [
        (1, False),
        (2, False),
        (3, False),
        (1, True),
    ]
    assert model.forwards[0].timesteps == pytest.approx((t[0],))
    assert model.forwards[1].timesteps == pytest.approx((t[1], t[0]))
    assert model.forwards[2].timesteps == pytest.approx((t[2], t[1], t[0]))
    assert loop.window_forwards == 3

    for block in range(1, 9):
        before = len(model.forwards)
        out = loop.next_block()
        window, commit = model.forwards[before:]  # exactly two forwards per block
        assert out.shape == (1, 1, 16, *HW)
        assert (window.frames, window.commit) == (3, False)
        assert (commit.frames, commit.commit) == (1, True)
        # the window covers frames block .. block + 2 at their true positions,
        # the oldest at the last step, the newest at step 0
        assert window.frame_index == block and commit.frame_index == block
        assert window.positions == (block, block + 1, block + 2)
        assert window.timesteps == pytest.approx((t[2], t[1], t[0]))
    assert loop.window_forwards == 3 + 8 and loop.blocks_done == 9


def test_window_attends_to_itself_both_ways(tiny: CausalWanModel) -> None:
    """The oldest block's last step sees the newest block of the window: scaling the newest
    block's noise changes the oldest block's output (block-causal attention would not)."""
    outs = []
    for scale in (1.0, 2.0):
        loop = rolling(tiny, 0, steps=(1000, 500))
        loop.set_context(prompt(tiny, 0))
        loop.next_block()  # block 0 out; block 1 waits in the window at step 1
        seeded = loop.noise

        def scaled(shape: tuple[int, ...], seeded: object = seeded, scale: float = scale) -> Tensor:
            return seeded(shape) * scale  # type: ignore[operator]

        loop.noise = scaled
        outs.append(loop.next_block())  # block 1, denoised next to block 2 (fresh noise)
    assert (outs[0] - outs[1]).abs().max() > 1e-4


@torch.inference_mode()
def test_memory_and_positions_stay_bounded_over_a_long_stream(nano: CausalWanModel) -> None:
    sinks, window, steps = 1, 2, (1000, 500)
    model = CountingModel(nano)
    loop = rolling(model, 0, cache=CacheConfig.rolling_window(sinks, window), steps=steps)
    loop.set_context(prompt(nano, 0))
    cache = loop.cache
    nbytes, k_ptr = cache.nbytes, cache.k.data_ptr()
    window_frames = len(steps)
    for _ in range(200):
        out = loop.next_block()
        assert torch.isfinite(out).all()
        assert cache.nbytes == nbytes and cache.k.data_ptr() == k_ptr
        assert cache.frames_kept <= sinks + window
    assert cache.next_frame == 200 and cache.frames_kept == sinks + window
    # every attended position lies in one span of sinks + window + the rolling window,
    # whatever the stream's length (relative positions re-align the sinks)
    spans = [
        f.positions[-1] - f.sink_position + 1
        for f in model.forwards
        if not f.commit and f.sink_position is not None
    ]
    assert len(spans) > 190 and max(spans) == sinks + window + window_frames


@pytest.mark.parametrize("mode", ["recache", "cut", "keep"])
def test_prompt_switch_keeps_output_finite_and_changes_it(tiny: CausalWanModel, mode: str) -> None:
    def video(switch: bool) -> tuple[list[Tensor], RollingLoop]:
        loop = rolling(tiny, 0)
        loop.set_context(prompt(tiny, 0))
        out = run(loop, 5)
        if switch:
            fills = loop.cross.fills
            if mode == "recache":
                kept = loop.cache.kept_frames()
                loop.recache(prompt(tiny, 1))
                after = loop.cache.kept_frames()
                assert [f for f, _ in after] == [f for f, _ in kept]
                assert loop.cross.fills == fills + 1  # re-encoded under the new prompt
            elif mode == "cut":
                loop.hard_cut(prompt(tiny, 1))
                assert loop.cache.frames_kept == 0
            else:
                loop.set_context(prompt(tiny, 1))
            assert loop.cache.next_frame == 5
        return out + run(loop, 4), loop

    base, _ = video(False)
    switched, loop = video(True)
    assert all(torch.equal(a, b) for a, b in zip(base[:5], switched[:5], strict=True))
    after = torch.cat(switched[5:], 1)
    assert torch.isfinite(after).all()
    assert (after - torch.cat(base[5:], 1)).abs().max() > 1e-2
    assert loop.cache.next_frame == 9


def test_make_loop_builds_the_rolling_loop(nano: CausalWanModel) -> None:
    loop = make_loop(
        "rolling",
        nano,
        FlowSchedule(steps=(1000, 750, 500, 250)),
        LoopConfig(block_frames=1, latent_hw=HW),
        CacheConfig.rolling_window(1, 4),
        SeededNoise(0),
    )
    assert isinstance(loop, RollingLoop)
    # the scratch region holds the whole window (4 steps x 1 frame); commits stay one block
    assert loop.cache.scratch_tokens == 4 * loop.cache.tokens_per_frame
    loop.set_context(prompt(nano, 0))
    out = loop.next_block()
    assert out.shape == (1, 1, 16, *HW) and torch.isfinite(out).all()
    assert loop.cache.frames_kept == 1 and loop.blocks_done == 1


def test_stream_with_the_rolling_denoiser_produces_frames(nano: CausalWanModel) -> None:
    def frames(denoiser: str) -> list[np.ndarray]:
        config = StreamConfig(
            block_frames=1,
            latent_hw=HW,
            schedule=FlowSchedule(steps=(1000, 500)),
            cache=CacheConfig.rolling_window(1, 3),
            denoiser=denoiser,  # type: ignore[arg-type]
        )
        encoder = HashingPromptEncoder(nano.config.text_dim, nano.config.text_len)
        with Stream(nano, LatentPreviewDecoder(16), encoder, config) as stream:
            stream.start("a red circle")
            if denoiser == "rolling":
                assert isinstance(stream.loop, RollingLoop)
            out = [f.data for f in stream.frames(max_frames=12)]
            stream.switch_prompt("a blue square", mode="recache")
            out += [f.data for f in stream.frames(max_frames=4)]
        return out

    got = frames("rolling")
    assert len(got) == 16 and all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in got)
    plain = frames("plain")
    assert any(not np.array_equal(a, b) for a, b in zip(got, plain, strict=True))


def test_cache_scratch_holds_a_window_but_commits_stay_one_block(nano: CausalWanModel) -> None:
    one, _ = nano.new_caches(HW, 2, CacheConfig.rolling_window(2, 4))
    cache, _ = nano.new_caches(HW, 2, CacheConfig.rolling_window(2, 4, scratch_frames=6))
    tpf = cache.tokens_per_frame
    assert cache.scratch_tokens == 6 * tpf and one.scratch_tokens == 2 * tpf
    assert cache.nbytes > one.nbytes
    plan = cache.plan(6)  # a window of three 2-frame blocks, at its frames 0..5
    assert plan.positions.tolist() == list(range(6))
    assert (plan.scratch_start, plan.scratch_end) == (0, 6 * tpf)
    with pytest.raises(ValueError, match=r"1\.\.6"):
        cache.plan(7)
    with pytest.raises(ValueError, match=r"1\.\.2"):
        cache.plan(4, commit=True)
    with pytest.raises(ValueError, match=r"1\.\.2"):
        one.plan(3)
    # a commit writes one block at the end of the scratch region, like any block
    commit = cache.plan(2, commit=True)
    assert (commit.scratch_start, commit.scratch_end) == (4 * tpf, 6 * tpf)
    with pytest.raises(ValueError, match="scratch_frames"):
        nano.new_caches(HW, 2, CacheConfig.rolling_window(2, 4, scratch_frames=1))


def test_global_cache_admits_a_window_while_the_next_block_fits(nano: CausalWanModel) -> None:
    """A full-window forward on a global cache with room for one more block is fine: only
    its oldest block will be committed next."""
    loop = rolling(nano, 0, cache=CacheConfig.global_attention(max_frames=4), steps=(1000, 500))
    loop.set_context(prompt(nano, 0))
    run(loop, 4)
    assert loop.cache.frames_kept == 4
    with pytest.raises(CacheError, match="global cache is full"):
        loop.next_block()


@pytest.mark.parametrize("context_step", [0, 100])
def test_with_one_step_every_denoiser_gives_the_same_video(
    tiny: CausalWanModel, context_step: int
) -> None:
    assert DENOISERS == ("plain", "stream_batch", "rolling")
    videos = []
    for denoiser in DENOISERS:
        loop = make_loop(
            denoiser,
            tiny,
            FlowSchedule(steps=(1000,), context_step=context_step),
            LoopConfig(block_frames=1, latent_hw=HW),
            CacheConfig.rolling_window(1, 3),
            SeededNoise(0),
        )
        loop.set_context(prompt(tiny, 0))
        videos.append(torch.cat([loop.next_block() for _ in range(6)], 1))
    plain, stream_batch, rolling_ = videos
    assert torch.equal(plain, rolling_)
    # stream batch runs each commit in one batch with the next block: batched matmuls
    # round differently, nothing else
    torch.testing.assert_close(plain, stream_batch, rtol=0, atol=1e-5)
