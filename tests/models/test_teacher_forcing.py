"""Teacher-forcing training forward against the inference path it must imitate."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.cache import CacheConfig
from engine.protocols import FlowRequest
from models.wan.config import PRESETS
from models.wan.loader import build_model
from models.wan.model import CausalWanModel, pooled_prompt, teacher_forcing_mask

TOL = 1e-4


@pytest.mark.parametrize("block_frames", [1, 2])
@torch.inference_mode()
def test_teacher_forcing_equals_denoising_against_committed_clean_blocks(
    tiny: CausalWanModel, block_frames: int
) -> None:
    """Noisy block b's flow equals predict_flow with blocks < b committed clean to the cache:
    training sees exactly what a streaming block sees."""
    blocks, hw = 3, (8, 8)
    frames = blocks * block_frames
    clean = torch.randn(2, frames, 16, *hw)
    noisy = torch.randn(2, frames, 16, *hw)
    t_noisy = (torch.rand(2, blocks) * 1000).repeat_interleave(block_frames, dim=1)
    t_clean = torch.full((2, frames), 30.0)  # lightly noised context, as training uses
    ctx = torch.randn(2, 5, tiny.config.text_dim)
    trained = tiny.forward_teacher(noisy, t_noisy, clean, t_clean, ctx, block_frames=block_frames)

    cache, cross = tiny.new_caches(
        hw, block_frames, CacheConfig.global_attention(max_frames=frames), batch=2
    )
    flows = []
    for b in range(blocks):
        s = slice(b * block_frames, (b + 1) * block_frames)
        flows.append(
            tiny.predict_flow(
                noisy[:, s], t_noisy[:, s], ctx, cross, cache, cache.plan(block_frames)
            )
        )
        plan = cache.plan(block_frames, commit=True)
        tiny.predict_flow(clean[:, s], t_clean[:, s], ctx, cross, cache, plan)
        cache.commit(plan, clean[:, s])
    streamed = torch.cat(flows, dim=1)
    assert streamed.abs().max() > 0.1
    err = (trained - streamed).abs().max().item()
    assert err <= TOL, f"teacher forcing vs streaming: max abs error {err:.2e}"


def test_teacher_forcing_mask_pattern() -> None:
    m = teacher_forcing_mask(
        frames=4, tokens_per_frame=1, block_frames=2, device=torch.device("cpu")
    )
    clean_clean, clean_noisy = m[:4, :4], m[:4, 4:]
    noisy_clean, noisy_noisy = m[4:, :4], m[4:, 4:]
    assert not clean_noisy.any()  # the cache never sees noisy frames
    assert clean_clean.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert noisy_clean.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert noisy_noisy.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


# ------------------------------------------------- pooled prompt in the modulation


def _prompt_modulated() -> CausalWanModel:
    """tiny-p4 at test size, with the zero-initialised prompt projection made non-zero
    (a trained model's), so the prompt really moves the modulation."""
    config = replace(PRESETS["tiny-p4"], dim=64, ffn_dim=128, num_heads=2, num_layers=2)
    model = build_model(config, seed=3)
    assert model.prompt_embedding is not None
    with torch.no_grad():
        model.prompt_embedding[2].weight.normal_(0.0, 0.5)
    return model.eval()


@torch.inference_mode()
def test_prompt_modulation_streams_as_it_trains() -> None:
    """With the pooled prompt in adaLN, teacher forcing still equals the cached stream,
    and batching several streams (predict_flow_many) still equals each alone."""
    model = _prompt_modulated()
    blocks, hw = 3, (8, 8)
    g = torch.Generator().manual_seed(1)
    clean, noisy = torch.randn(2, 2, blocks, 16, *hw, generator=g)
    t_noisy = torch.rand(2, blocks, generator=g) * 1000
    t_clean = torch.full((2, blocks), 30.0)
    ctx = torch.randn(2, 5, model.config.text_dim, generator=g)
    trained = model.forward_teacher(noisy, t_noisy, clean, t_clean, ctx, block_frames=1)

    cache, cross = model.new_caches(hw, 1, CacheConfig.global_attention(max_frames=blocks), batch=2)
    flows = []
    for b in range(blocks):
        s = slice(b, b + 1)
        flows.append(
            model.predict_flow(noisy[:, s], t_noisy[:, s], ctx, cross, cache, cache.plan(1))
        )
        plan = cache.plan(1, commit=True)
        model.predict_flow(clean[:, s], t_clean[:, s], ctx, cross, cache, plan)
        cache.commit(plan, clean[:, s])
    streamed = torch.cat(flows, dim=1)
    err = (trained - streamed).abs().max().item()
    assert err <= TOL, f"teacher forcing vs streaming with prompt modulation: {err:.2e}"

    # two single-stream sessions with different prompts, batched into one forward
    requests, alone = [], []
    for i in range(2):
        c, x = model.new_caches(hw, 1, CacheConfig.global_attention(max_frames=blocks))
        args = (noisy[i : i + 1, :1], t_noisy[i : i + 1, :1], ctx[i : i + 1], x, c, c.plan(1))
        alone.append(model.predict_flow(*args))
        x.invalidate()
        requests.append(FlowRequest(*args))
    for got, want in zip(model.predict_flow_many(requests), alone, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_prompt_reaches_the_modulation_only_when_enabled() -> None:
    model = _prompt_modulated()
    t = torch.full((1, 2), 500.0)
    a, b = torch.randn(2, 1, 5, model.config.text_dim)
    assert not torch.allclose(model.embed_modulation(t, a), model.embed_modulation(t, b))
    # padding rows (all zero) do not change the pooled prompt
    padded = torch.cat([a, torch.zeros(1, 7, model.config.text_dim)], dim=1)
    torch.testing.assert_close(pooled_prompt(padded), pooled_prompt(a))
    torch.testing.assert_close(model.embed_modulation(t, padded), model.embed_modulation(t, a))
    # freshly initialised, the projection is zero: the model starts time-only
    fresh = build_model(replace(model.config), seed=3)
    torch.testing.assert_close(fresh.embed_modulation(t, a), fresh.embed_time(t)[1])
    # the public layout has no prompt projection at all (strict checkpoint keys)
    assert not any(
        k.startswith("prompt_embedding") for k in build_model(PRESETS["nano"]).state_dict()
    )
