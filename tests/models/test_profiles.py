"""Model profiles: the reference's settings in the engine's terms, and streams that never
run out of positions. (Parity with the reference code: test_dit_reference.py.)"""

from __future__ import annotations

import pytest
import torch

from engine.loop import DenoisingLoop, LoopConfig, SeededNoise
from models.profiles import GLOBAL_CACHE_FRAMES, PROFILES, ModelProfile, profile
from models.wan.config import PRESETS, preset
from models.wan.model import CausalWanModel


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_attends_to_as_many_frames_as_its_reference(name: str) -> None:
    p = profile(name)
    c = p.cache_config()
    attended = c.sink_frames + c.ring_frames + p.block_frames
    expected = GLOBAL_CACHE_FRAMES if p.local_attn_size == -1 else p.local_attn_size
    assert attended == expected
    assert c.positions == "absolute"
    assert p.wan_preset in PRESETS
    preset(p.wan_preset)
    p.schedule()  # valid steps
    assert name in p.describe() and str(p.steps[0]) in p.describe()


def test_longlive_counts_sinks_window_and_block_inside_local_attn_size() -> None:
    c = profile("longlive").cache_config()
    assert (c.sink_frames, c.window_frames) == (3, 6)  # 3 + 6 + 3-frame block = 12
    assert (c.recache, c.recache_frames, c.recache_keep_sinks) == ("span", 12, True)


def test_unknown_profile_and_impossible_window_are_named() -> None:
    with pytest.raises(ValueError, match="longlive"):
        profile("longlife")
    with pytest.raises(ValueError, match="no window"):
        ModelProfile(name="x", summary="", source="", local_attn_size=6, sink_size=3)


@pytest.mark.slow
def test_a_public_profile_streams_past_the_rope_table() -> None:
    """LongLive's settings for 1,035 latent frames: no failure, the last block's queries
    keep their frame index, and the sinks slide so no distance exceeds the table."""
    p = profile("longlive")
    model = CausalWanModel(PRESETS["nano"]).init_weights(0).eval()
    cache = p.cache_config()
    loop = DenoisingLoop(
        model, p.schedule(), LoopConfig(p.block_frames, (2, 2)), cache, SeededNoise(0)
    )
    loop.set_context(torch.randn(1, 8, 32))
    frames = 0
    while frames < 1035:
        x0 = loop.next_block()
        assert torch.isfinite(x0).all()
        frames += p.block_frames
    plan = loop.cache.plan(p.block_frames)
    assert plan.positions.tolist() == [1035, 1036, 1037]
    assert plan.sink_position == 1038 - cache.rope_max_positions
    loop.recache(torch.randn(1, 8, 32))  # a switch past the table works too
    assert torch.isfinite(loop.next_block()).all()
