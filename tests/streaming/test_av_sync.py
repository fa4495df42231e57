"""A session's audio and video share one clock at a real client (issue 14: A/V sync).

A real server on 127.0.0.1 with the packaged Piper voice and the nano video
model, and a real websockets client (bench/av_sync.py's, the one the 5-minute
benchmark uses). Each unit's offset is its arrival time minus its pts; the skew
is the difference of the two streams' median offsets. Pauses move the video's
timeline against the voice's unless the video's pts follow the session clock,
so the test pauses twice; the long measurement is `framecast bench-av-sync`.
"""

from __future__ import annotations

import pytest
from live import run, serving

from apps.server import SharedStreamFactory, load_voice
from bench.av_sync import Received, receive, skew_windows
from models.resolve import ModelOptions
from streaming.session import PacingClock, SessionClock

SKEW_BOUND_MS = 40.0  # issue 14's acceptance bound


@pytest.fixture(scope="module")
def received() -> Received:
    factory = SharedStreamFactory(ModelOptions(model="nano", height=64, width=64, fps=16))
    voice = load_voice("default", threads=1)
    assert voice is not None

    async def body() -> Received:
        async with serving(factory, voice) as server:
            return await receive(
                server.ws_url, seconds=9.0, prompt="a red circle", pause_every=3.0, pause_s=0.7
            )

    try:
        return run(body(), timeout=60)
    finally:
        factory.close()


def test_audio_and_video_stay_in_sync_across_pauses(received: Received) -> None:
    assert received.pauses == 2 and received.says >= 1
    assert len(received.audio) > 100 and len(received.video) > 50  # both streams flowed
    windows = skew_windows(received.video, received.audio, window=1.0)
    assert len(windows) >= 6, windows
    worst = max(abs(w.skew_ms) for w in windows)
    assert worst <= SKEW_BOUND_MS, [w.skew_ms for w in windows]


def test_video_pts_are_session_time_not_a_frame_count(received: Received) -> None:
    """The first frame is stamped with the session time it was sent at, and every pause
    moves the video's pts on by about the pause (the voice's clock never stops)."""
    first_pts = received.video[0][1]
    assert first_pts > 0  # the session opened before the first frame was made
    gaps = [
        (b[1] - a[1], b[0] - a[0])
        for a, b in zip(received.video, received.video[1:], strict=False)
        if b[0] - a[0] > 0.5
    ]
    assert len(gaps) >= 2, gaps  # the two pauses
    for pts_gap, arrival_gap in gaps:
        assert abs(pts_gap - arrival_gap) < 0.1, (pts_gap, arrival_gap)
    # both streams are sent the same time (the voice's lead) before their pts
    offsets = sorted(a - p for a, p in received.video)
    audio_offsets = sorted(a - p for a, p in received.audio)
    assert abs(offsets[len(offsets) // 2] - audio_offsets[len(audio_offsets) // 2]) < 0.04


def test_session_clock_maps_media_time_to_send_time() -> None:
    clock = SessionClock(origin=100.0, lead=0.06)
    assert clock.media_time(100.0) == pytest.approx(0.06)
    assert clock.send_time(clock.media_time(123.4)) == pytest.approx(123.4)


def test_pacing_clock_lets_its_owner_place_the_anchor() -> None:
    clock = PacingClock(max_late=0.1)
    assert clock.needs_anchor(0.0, now=10.0)
    clock.anchor(10.05, 0.0)  # the owner waits for the next frame tick
    assert not clock.needs_anchor(0.5, now=10.2)
    assert clock.due(0.5, now=10.2) == pytest.approx(10.55)
    assert clock.needs_anchor(1.0, now=12.0) and clock.reanchors == 1


def test_skew_windows_see_a_constant_offset_as_skew() -> None:
    video = [(t / 16 + 0.5, t / 16) for t in range(160)]  # late by 0.5 s
    audio = [(t / 50, t / 50) for t in range(500)]
    windows = skew_windows(video, audio, window=2.0)
    assert windows and all(abs(w.skew_ms - 500) < 1 for w in windows)
    assert skew_windows([], audio, 1.0) == []
