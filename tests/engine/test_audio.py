"""AudioStream: generator pieces on a session clock (pts, first audio, underruns, cancel)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from fakes import ToneSpeaker

from engine.audio import AudioFramer, AudioGenerator, AudioStream
from engine.media import AudioChunk, PhonemeMark

RATE = ToneSpeaker.sample_rate



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


def tone_chunk(pts: int, n: int, rate: int = 22_050, freq: float = 440.0) -> AudioChunk:
    t = (pts + np.arange(n)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[:, None]
    return AudioChunk(wave, rate, pts, Fraction(1, rate))


def drain(framer: AudioFramer) -> list[tuple[np.ndarray, int]]:
    out = []
    while (frame := framer.pop()) is not None:
        out.append(frame)
    return out


def test_framer_cuts_contiguous_chunks_into_seamless_20ms_frames() -> None:
    framer = AudioFramer(48_000, 960)
    pts = 4410  # 0.2 s into the session
    for n in (1000, 333, 4410, 2205, 7000):
        framer.push(tone_chunk(pts, n))
        pts += n
    framer.end_run()
    frames = drain(framer)
    assert [p for _, p in frames] == [9600 + 960 * i for i in range(len(frames))]
    assert all(f.shape == (960, 1) for f, _ in frames)
    audio = np.concatenate([f[:, 0] for f, _ in frames])
    total = (pts - 4410) / 22_050 * 48_000
    assert total <= len(audio) < total + 960
    body = audio[2000 : int(total) - 2000]  # away from the run's two edges
    spectrum = np.abs(np.fft.rfft(body * np.hanning(len(body))))
    assert abs(np.fft.rfftfreq(len(body), 1 / 48_000)[np.argmax(spectrum)] - 440) < 5
    # one resampler for the whole run: no seam at chunk boundaries (a smooth sine throughout)
    assert np.abs(np.diff(body)).max() < 2 * np.pi * 440 / 48_000 * 0.5 * 1.05


def test_framer_starts_a_new_run_after_a_gap_and_never_overlaps() -> None:
    framer = AudioFramer(48_000, 960)
    framer.push(tone_chunk(0, 2205))  # 0.1 s
    framer.push(tone_chunk(22_050, 2205))  # at 1.0 s: a gap of 0.9 s
    framer.end_run()
    frames = drain(framer)
    pts = [p for _, p in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    assert 48_000 in pts  # the second run starts at its own time
    silent = [p for f, p in frames if not np.abs(f).max()]
    assert silent and min(silent) >= 4800 and max(silent) < 48_000  # the gap is silence
    # a chunk that starts before the held audio ends (it was made late) follows on
    framer.push(tone_chunk(0, 2205))
    framer.end_run()
    later = drain(framer)
    assert later[0][1] == pts[-1] + 960


def test_framer_align_clear_and_bad_input() -> None:
    framer = AudioFramer(48_000, 960)
    framer.align(96_000)  # silence was sent up to 2 s
    framer.push(tone_chunk(22_050, 2205))  # made for 1 s: goes after what was sent
    framer.end_run()
    assert drain(framer)[0][1] == 96_000
    framer.push(tone_chunk(44_100, 4410))
    framer.clear()
    assert framer.pop() is None and framer.held == 0
    with pytest.raises(ValueError, match=r"\[N, 1\]"):
        framer.push(AudioChunk(np.zeros((10, 2), np.float32), 22_050, 0, Fraction(1, 22_050)))
