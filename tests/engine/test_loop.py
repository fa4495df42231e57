"""The denoising loop: determinism, noise injection, prompt switching."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from engine.cache import CacheConfig
from engine.loop import DenoisingLoop, LoopConfig, SeededNoise
from engine.schedule import FlowSchedule
from models.wan.model import CausalWanModel

HW = (4, 4)


def make_loop(
    model: CausalWanModel, seed: int = 0, noise: object = None, **sched: object
) -> DenoisingLoop:
    return DenoisingLoop(
        model,
        FlowSchedule(**sched),  # type: ignore[arg-type]
        LoopConfig(block_frames=1, latent_hw=HW),
        CacheConfig.rolling_window(1, 3),
        noise or SeededNoise(seed),  # type: ignore[arg-type]
    )


def prompt(model: CausalWanModel, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, model.config.text_dim, generator=g)


def run(loop: DenoisingLoop, blocks: int) -> list[Tensor]:
    return [loop.next_block() for _ in range(blocks)]


def test_same_seed_same_video_other_seed_other_video(tiny: CausalWanModel) -> None:
    outs = []
    for seed in (0, 0, 1):
        loop = make_loop(tiny, seed)
        loop.set_context(prompt(tiny, 0))
        outs.append(torch.cat(run(loop, 6), dim=1))
    assert torch.equal(outs[0], outs[1])
    assert (outs[0] - outs[2]).abs().max() > 0.1


def test_caller_supplied_noise_is_used(tiny: CausalWanModel) -> None:
    """Replaying recorded noise reproduces a seeded run exactly."""
    recorded: list[Tensor] = []
    seeded = SeededNoise(3)

    def recording(shape: tuple[int, ...]) -> Tensor:
        recorded.append(seeded(shape))
        return recorded[-1]

    loop = make_loop(tiny, noise=recording)
    loop.set_context(prompt(tiny, 0))
    first = run(loop, 4)
    replay = iter(list(recorded))
    loop2 = make_loop(tiny, noise=lambda shape: next(replay))
    loop2.set_context(prompt(tiny, 0))
    assert all(torch.equal(a, b) for a, b in zip(first, run(loop2, 4), strict=True))
    assert len(recorded) == 4 * 4  # 4 blocks x (1 initial + 3 re-noise) with 4 steps


def test_context_noise_renoises_only_what_is_committed(tiny: CausalWanModel) -> None:
    loops = []
    for context_step in (0, 100):
        loop = make_loop(tiny, steps=(1000,), context_step=context_step)
        loop.set_context(prompt(tiny, 0))
        loops.append((loop, loop.next_block()))
    (clean, out_clean), (noisy, out_noisy) = loops
    assert torch.equal(out_clean, out_noisy)  # the block itself is unchanged
    region = slice(clean.cache.scratch_tokens, None)
    diff = (clean.cache.k[..., region, :] - noisy.cache.k[..., region, :]).abs().max()
    assert diff > 1e-3  # but the cache holds the re-noised block


def _run_with_switch(
    model: CausalWanModel, mode: str | None, at: int = 5, total: int = 9
) -> tuple[list[Tensor], DenoisingLoop]:
    loop = make_loop(model, 0)
    loop.set_context(prompt(model, 0))
    out = run(loop, at)
    if mode == "recache":
        loop.recache(prompt(model, 1))
    elif mode == "keep":
        loop.set_context(prompt(model, 1))
    elif mode == "cut":
        loop.hard_cut(prompt(model, 1))
    return out + run(loop, total - at), loop


@torch.inference_mode()
def test_prompt_switch_recache_rebuilds_caches(tiny: CausalWanModel) -> None:
    loop = make_loop(tiny, 0)
    loop.set_context(prompt(tiny, 0))
    run(loop, 6)
    cache, cross = loop.cache, loop.cross
    kept_before = cache.kept_frames()
    k_before = cache.k.clone()
    cross_before, fills = cross.k.clone(), cross.fills
    loop.recache(prompt(tiny, 1))
    # the prompt cache was rebuilt under the new prompt
    assert cross.fills == fills + 1 and cross.valid
    assert (cross.k - cross_before).abs().max() > 1e-3
    # the same frames are kept, at the same positions
    kept_after = cache.kept_frames()
    assert [f for f, _ in kept_after] == [f for f, _ in kept_before]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(kept_before, kept_after, strict=True))
    assert cache.next_frame == 6
    # ... and their keys were re-encoded: equal to committing those latents under the new prompt
    assert (cache.k - k_before).abs().max() > 1e-3
    fresh = make_loop(tiny, 0)
    fresh.set_context(prompt(tiny, 1))
    for first, lat in kept_after:
        for j in range(lat.shape[1]):
            fresh._commit(lat[:, j : j + 1], first + j)
    region = slice(cache.scratch_tokens, None)
    torch.testing.assert_close(cache.k[..., region, :], fresh.cache.k[..., region, :])


def test_prompt_switch_changes_only_later_output(tiny: CausalWanModel) -> None:
    base, _ = _run_with_switch(tiny, None)
    for mode in ("recache", "keep", "cut"):
        switched, _ = _run_with_switch(tiny, mode)
        assert all(torch.equal(a, b) for a, b in zip(base[:5], switched[:5], strict=True)), mode
        after = torch.cat(switched[5:], 1) - torch.cat(base[5:], 1)
        assert after.abs().max() > 1e-2, f"{mode}: output after the switch did not change"


def test_hard_cut_forgets_frames_but_keeps_time(tiny: CausalWanModel) -> None:
    _, loop = _run_with_switch(tiny, "cut", at=5, total=5)
    assert loop.cache.frames_kept == 0 and loop.cache.next_frame == 5


@pytest.mark.parametrize("steps", [(1000,), (1000, 500), (1000, 750, 500, 250)])
def test_output_shape(nano: CausalWanModel, steps: tuple[int, ...]) -> None:
    loop = make_loop(nano, steps=steps)
    loop.set_context(torch.randn(1, 3, nano.config.text_dim))
    out = loop.next_block()
    assert out.shape == (1, 1, 16, *HW) and torch.isfinite(out).all()


def test_euler_sampler_is_the_flow_ode_and_draws_noise_once_per_block(
    tiny: CausalWanModel,
) -> None:
    """Euler: x += (sigma_next - sigma) * flow, then x0 = x - sigma_last * flow; only the
    block's starting noise is drawn (renoise draws again at every step)."""
    draws: list[tuple[int, ...]] = []
    seeded = SeededNoise(3)

    def counting(shape: tuple[int, ...]) -> Tensor:
        draws.append(shape)
        return seeded(shape)

    loop = make_loop(tiny, noise=counting, sampler="euler")
    ctx = prompt(tiny, 0)
    loop.set_context(ctx)
    out = loop.next_block()
    assert len(draws) == 1

    # the same block by hand, against a fresh cache
    ref = make_loop(tiny, sampler="euler")
    x = SeededNoise(3)(ref.block_shape)
    s, plan = ref.schedule, ref.cache.plan(1)
    for i, (t, sigma) in enumerate(zip(s.timesteps, s.sigmas, strict=True)):
        flow = tiny.predict_flow(x, torch.full((1, 1), t), ctx, ref.cross, ref.cache, plan)
        x0 = x - sigma * flow
        if i + 1 < len(s.sigmas):
            x = x + (s.sigmas[i + 1] - sigma) * flow
    assert torch.allclose(out, x0, atol=1e-5)

    renoise = make_loop(tiny, seed=3)
    renoise.set_context(ctx)
    assert (renoise.next_block() - out).abs().max() > 1e-3  # a different sampler


def test_unknown_sampler_is_rejected() -> None:
    with pytest.raises(ValueError, match="sampler"):
        FlowSchedule(sampler="ddim")  # type: ignore[arg-type]
