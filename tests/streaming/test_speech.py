"""SessionSpeech and PacedAudio: a voice on the session clock, paced 20 ms frames, barge-in."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
from fakes import ToneSpeaker
from live import run

from streaming.speech import FRAME_RATE, FRAME_SAMPLES, PacedAudio, SessionSpeech, SpeechConfig

CONFIG = SpeechConfig(lead=0.06, generate_ahead=0.3)


def test_frames_leave_on_the_clock_never_more_than_lead_early() -> None:
    async def body() -> list[tuple[int, float, bool]]:
        speech = SessionSpeech("t", ToneSpeaker(), CONFIG)
        paced = PacedAudio(speech, silence=False)
        try:
            speech.say("one two three four five six seven eight", final=True)
            out = []
            for _ in range(40):  # 0.8 s of speech
                frame = await paced.next_frame()
                out.append((frame.pts, speech.clock_seconds(), frame.discontinuity))
            return out
        finally:
            paced.close()
            await speech.close()

    frames = run(body(), timeout=10)
    for pts, released, _ in frames:
        assert released >= pts / FRAME_RATE - CONFIG.lead - 0.005  # not earlier than lead
    # back to back within the utterance, one discontinuity at its start
    assert [b[0] - a[0] for a, b in itertools.pairwise(frames)] == [FRAME_SAMPLES] * 39
    assert [d for *_, d in frames] == [True] + [False] * 39
    # the clock paced them: 0.8 s of audio took about 0.8 s, not a burst
    assert frames[-1][1] - frames[0][1] > 0.6


def test_generation_runs_at_most_generate_ahead_of_the_clock() -> None:
    async def body() -> float:
        speech = SessionSpeech("t", ToneSpeaker(), CONFIG)
        try:
            speech.say(" ".join(["word"] * 50), final=True)  # 5 s of tone
            await asyncio.sleep(0.5)
            made = speech.stream.stats.seconds
            return made - speech.clock_seconds()
        finally:
            await speech.close()

    ahead = run(body(), timeout=10)
    assert ahead <= CONFIG.generate_ahead + 0.1 + 1e-9  # one 0.1 s piece past the limit at most


def test_silence_fills_gaps_and_cancel_drops_held_audio() -> None:
    async def body() -> tuple[list[tuple[int, bool, bool]], int]:
        speech = SessionSpeech("t", ToneSpeaker(), CONFIG)
        paced = PacedAudio(speech, silence=True)
        try:
            frames = [await paced.next_frame() for _ in range(5)]  # nothing said: silence
            speech.say(" ".join(["word"] * 30), final=True)
            for _ in range(10):
                frames.append(await paced.next_frame())
            epoch = speech.cancel()
            for _ in range(10):
                frames.append(await paced.next_frame())
            return [(f.pts, f.silent, f.discontinuity) for f in frames], epoch
        finally:
            paced.close()
            await speech.close()

    frames, epoch = run(body(), timeout=10)
    assert epoch == 1
    assert all(silent for _, silent, _ in frames[:5])
    spoken = [i for i, (_, silent, _) in enumerate(frames) if not silent]
    assert spoken and spoken[0] >= 5
    pts = [p for p, *_ in frames]
    assert all(b > a for a, b in itertools.pairwise(pts))  # the RTP clock only moves on
    # after the cancel: at most the frame in flight, then silence again
    after = frames[15:]
    assert sum(not silent for _, silent, _ in after) <= 1
    assert any(d for *_, d in after[:2])


@pytest.mark.parametrize("final", [True, False])
def test_a_short_utterance_is_padded_and_sent(final: bool) -> None:
    async def body() -> np.ndarray:
        speech = SessionSpeech("t", ToneSpeaker(), CONFIG)
        paced = PacedAudio(speech, silence=False)
        try:
            speech.say("hi", final=final)
            frames = [await asyncio.wait_for(paced.next_frame(), 2) for _ in range(5)]
            return np.concatenate([f.samples[:, 0] for f in frames])
        finally:
            paced.close()
            await speech.close()

    audio = run(body(), timeout=10)
    assert len(audio) == 5 * FRAME_SAMPLES  # 100 ms of tone = 5 frames after resampling
    assert np.abs(audio[: 4 * FRAME_SAMPLES]).max() > 1000


def test_say_after_close_is_refused() -> None:
    async def body() -> None:
        speech = SessionSpeech("t", ToneSpeaker(), CONFIG)
        await speech.close()
        with pytest.raises(Exception, match="closed"):
            speech.say("late")

    run(body(), timeout=5)
