"""Stream sessions with real (tiny) parts: timestamps, async, switches, cleanup."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import Tensor

from engine.cache import CacheConfig
from engine.media import VideoFrame
from engine.stream import Stream, StreamClosedError, StreamConfig
from models.decoders import LatentPreviewDecoder
from models.text import HashingPromptEncoder
from models.wan.model import CausalWanModel

CONFIG = StreamConfig(
    block_frames=1, latent_hw=(4, 4), cache=CacheConfig.rolling_window(1, 3), fps=12
)


class ThreadRecordingDecoder(LatentPreviewDecoder):
    def __init__(self) -> None:
        super().__init__(16)
        self.threads: set[str] = set()

    def push(self, latents: Tensor) -> Tensor:
        self.threads.add(threading.current_thread().name)
        return super().push(latents)


def make_stream(model: CausalWanModel, decoder: LatentPreviewDecoder | None = None) -> Stream:
    encoder = HashingPromptEncoder(model.config.text_dim, model.config.text_len)
    return Stream(model, decoder or LatentPreviewDecoder(16), encoder, CONFIG)


def test_frames_are_timestamped_on_the_output_clock(nano: CausalWanModel) -> None:
    with make_stream(nano) as stream:
        stream.start("a red circle")
        frames = list(stream.frames(max_frames=10))
    assert [f.pts for f in frames] == list(range(10))
    assert all(f.time_base == Fraction(1, 12) for f in frames)
    assert frames[9].time == pytest.approx(9 / 12)
    assert all(f.data.shape == (32, 32, 3) and f.data.dtype == np.uint8 for f in frames)
    assert stream.stats.time_to_first_frame is not None and stream.stats.time_to_first_frame > 0


def test_async_frames_match_sync_and_run_off_the_event_loop(nano: CausalWanModel) -> None:
    with make_stream(nano) as stream:
        stream.start("a red circle")
        expected = [f.data for f in stream.frames(max_frames=12)]

    decoder = ThreadRecordingDecoder()
    stream = make_stream(nano, decoder)
    stream.start("a red circle")

    async def consume() -> tuple[list[VideoFrame], str]:
        frames = [f async for f in stream.aframes(max_frames=12)]
        return frames, threading.current_thread().name

    frames, loop_thread = asyncio.run(consume())
    stream.close()
    assert all(np.array_equal(a, f.data) for a, f in zip(expected, frames, strict=True))
    assert loop_thread not in decoder.threads and len(decoder.threads) == 1


def _collect(
    model: CausalWanModel, switch_at: int | None, mode: str = "recache"
) -> tuple[list[np.ndarray], Stream]:
    stream = make_stream(model)
    stream.start("a red circle moving left")
    out = []
    for frame in stream.frames(max_frames=24):
        out.append(frame.data)
        if switch_at is not None and frame.pts == switch_at:
            stream.switch_prompt("a blue square moving up", mode=mode)  # type: ignore[arg-type]
    return out, stream


def test_switch_prompt_takes_effect_at_the_next_block(tiny: CausalWanModel) -> None:
    base, s0 = _collect(tiny, None)
    switched, s1 = _collect(tiny, switch_at=9)  # 4 frames per block: blocks end at 3, 7, 11...
    assert s1.stats.prompt_switches == 1 and s1.stats.recaches == 1
    assert s1.stats.prompt == "a blue square moving up"
    assert all(np.array_equal(a, b) for a, b in zip(base[:12], switched[:12], strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(base[12:], switched[12:], strict=True))
    s0.close()
    s1.close()


def test_bad_control_input_is_refused_and_stream_continues(nano: CausalWanModel) -> None:
    with make_stream(nano) as stream:
        stream.start("a red circle")
        first = list(stream.frames(max_frames=4))
        with pytest.raises(ValueError, match="switch mode"):
            stream.switch_prompt("a blue square", mode="sideways")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="empty"):
            stream.switch_prompt("   ")
        more = list(stream.frames(max_frames=4))
        assert len(first) == len(more) == 4 and more[0].pts == 4


def test_close_frees_the_caches(nano: CausalWanModel) -> None:
    stream = make_stream(nano)
    stream.start("a red circle")
    list(stream.frames(max_frames=8))
    assert stream.cache_bytes > 0
    k_ref = weakref.ref(stream.loop.cache.k)
    cross_ref = weakref.ref(stream.loop.cross.k)
    stream.close()
    gc.collect()
    assert k_ref() is None and cross_ref() is None
    assert stream.cache_bytes == 0
    with pytest.raises(StreamClosedError):
        list(stream.frames(max_frames=1))
    stream.close()  # idempotent


def test_same_seed_reproduces_stream(nano: CausalWanModel) -> None:
    runs = []
    for _ in range(2):
        with make_stream(nano) as stream:
            stream.start("a green triangle")
            runs.append(np.stack([f.data for f in stream.frames(max_frames=8)]))
    assert np.array_equal(runs[0], runs[1])
    torch.manual_seed(123)  # global RNG state must not matter
    with make_stream(nano) as stream:
        stream.start("a green triangle")
        assert np.array_equal(runs[0], np.stack([f.data for f in stream.frames(max_frames=8)]))
