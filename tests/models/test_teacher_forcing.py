"""Teacher-forcing training forward against the inference path it must imitate."""

from __future__ import annotations

import pytest
import torch

from engine.cache import CacheConfig
from models.wan.model import CausalWanModel, teacher_forcing_mask

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
