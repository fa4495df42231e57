"""AudioStream: generator pieces on a session clock (pts, first audio, underruns, cancel)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio import AudioGenerator, AudioPiece, AudioStream
from engine.media import PhonemeMark

RATE = 1000  # Hz: small numbers to check by hand


class ToneSpeaker:
    """A text-in generator: each word becomes 100 ms of tone (one piece), one mark per word."""

    channels = 1
    sample_rate = RATE

    def __init__(self) -> None:
        self.words: list[str] = []

    def feed_text(self, text: str) -> None:
        self.words += text.split()

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        raise TypeError("text only")

    def end_input(self) -> None:
        pass

    def next_piece(self) -> AudioPiece | None:
        if not self.words:
            return None
        word = self.words.pop(0)
        t = np.arange(100) / RATE
        samples = (0.1 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
        return AudioPiece(samples, (PhonemeMark(word, 10, 90),), not self.words)

    def cancel(self) -> None:
        self.words.clear()

    def reset(self) -> None:
        self.cancel()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tone_speaker_is_an_audio_generator() -> None:
    assert isinstance(ToneSpeaker(), AudioGenerator)


def test_pieces_follow_back_to_back_and_marks_move_to_the_timeline() -> None:
    clock = Clock()
    stream = AudioStream(ToneSpeaker(), clock=clock)
    clock.now = 0.5
    stream.feed_text("one two")
    clock.now = 0.52
    a = stream.next_chunk()
    b = stream.next_chunk()
    assert a is not None and b is not None and stream.next_chunk() is None
    assert (a.pts, b.pts) == (520, 620)  # starts at the clock's now when made, then follows on
    assert a.time_base.denominator == RATE and a.samples.shape == (100, 1)
    assert b.marks == (PhonemeMark("two", 630, 710),)
    assert stream.stats.first_audio_s == pytest.approx(0.02)
    assert stream.stats.underruns == 0


def test_late_piece_within_an_utterance_is_an_underrun_and_restarts_at_now() -> None:
    clock = Clock()
    stream = AudioStream(ToneSpeaker(), clock=clock)
    stream.feed_text("one two three")
    assert stream.next_chunk() is not None  # plays 0.0 - 0.1
    clock.now = 0.3  # the next piece is made after that played out
    late = stream.next_chunk()
    assert late is not None and late.pts == 300
    assert stream.stats.underruns == 1
    assert stream.next_chunk() is not None and stream.next_chunk() is None

    # a new utterance after silence is not an underrun, and measures first audio again
    clock.now = 2.0
    stream.feed_text("four")
    clock.now = 2.05
    chunk = stream.next_chunk()
    assert chunk is not None and chunk.pts == 2050
    assert stream.stats.underruns == 1
    assert stream.stats.first_audio_history == [pytest.approx(0.0), pytest.approx(0.05)]


def test_cancel_forgets_pending_audio_and_pulls_the_timeline_back() -> None:
    clock = Clock()
    stream = AudioStream(ToneSpeaker(), clock=clock)
    stream.feed_text("a b c d e")
    for _ in range(3):
        stream.next_chunk()  # queued to 0.3 s while the clock still says 0
    clock.now = 0.05
    stream.cancel()
    assert stream.next_chunk() is None
    stream.feed_text("f")
    chunk = stream.next_chunk()
    assert chunk is not None and chunk.pts == 50  # new speech starts now, not after the old
    assert stream.stats.cancels == 1
    assert stream.stats.real_time_factor is not None
