"""Mp4Writer: real engine frames plus a sine track, encoded (H.264 + AAC) and decoded with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engine.media import AudioChunk, VideoFrame
from models.resolve import ModelOptions, build_stream
from streaming.recording import AUDIO_RATE, Mp4Writer

FRAMES = 40  # 2.5 s at 16 fps
TONE = 440.0  # Hz


def engine_frames(n: int) -> tuple[list[VideoFrame], int]:
    stream = build_stream(ModelOptions(model="nano"), name="rec")
    stream.start("a red ball bouncing")
    try:
        return list(stream.frames(max_frames=n)), stream.config.fps
    finally:
        stream.close()


def sine_chunks(
    seconds: float, rate: int, chunk: int, skip: tuple[float, float] | None = None
) -> list[AudioChunk]:
    """Mono sine in ``chunk``-sample pieces with pts in samples; ``skip`` drops a time span."""
    total = int(seconds * rate)
    t = np.arange(total) / rate
    wave = (0.5 * np.sin(2 * np.pi * TONE * t)).astype(np.float32)[:, None]
    out = []
    for start in range(0, total, chunk):
        if skip and skip[0] <= start / rate < skip[1]:
            continue
        out.append(AudioChunk(wave[start : start + chunk], rate, start, Fraction(1, rate)))
    return out


def decode(path: Path) -> tuple[int, float, np.ndarray, int]:
    """(video frames, video seconds, mono audio samples, audio rate)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        fps = float(v.average_rate or 0)
        frames = sum(1 for _ in c.decode(v))
    audio: list[np.ndarray] = []
    rate = 0
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            rate = a.rate
            audio = [f.to_ndarray()[0] for f in c.decode(a)]
    samples = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    return frames, frames / fps, samples, rate


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("rate", "chunk"), [(48_000, 960), (22_050, 777)])
def test_video_and_audio_in_sync(tmp_path: Path, rate: int, chunk: int) -> None:
    frames, fps = engine_frames(FRAMES)
    chunks = sine_chunks(FRAMES / fps, rate, chunk)
    path = tmp_path / "av.mp4"
    with Mp4Writer(path, fps=fps, width=128, height=128, audio_channels=1) as w:
        # interleave as a live session would: audio up to each frame's time
        pending = list(chunks)
        for f in frames:
            w.write(f)
            while pending and pending[0].time < f.time + 1 / fps:
                w.write(pending.pop(0))
        for c in pending:
            w.write(c)
    n, video_s, audio, audio_rate = decode(path)
    assert n == FRAMES
    assert audio_rate == AUDIO_RATE
    audio_s = len(audio) / audio_rate
    assert abs(audio_s - video_s) < 0.050, (audio_s, video_s)
    assert abs(dominant_hz(audio, audio_rate) - TONE) < 5, "the tone survives resample + AAC"


def test_audio_gap_is_filled_with_silence(tmp_path: Path) -> None:
    frames, fps = engine_frames(FRAMES)
    chunks = sine_chunks(FRAMES / fps, 48_000, 960, skip=(1.0, 1.3))
    path = tmp_path / "gap.mp4"
    with Mp4Writer(path, fps=fps, width=128, height=128, audio_channels=1) as w:
        for f in frames:
            w.write(f)
        for c in chunks:
            w.write(c)
    n, video_s, audio, rate = decode(path)
    assert n == FRAMES
    assert abs(len(audio) / rate - video_s) < 0.050
    # the missing 300 ms is silent, the rest is the tone: audio stays at its timestamps
    rms = lambda a, b: float(np.sqrt(np.mean(audio[int(a * rate) : int(b * rate)] ** 2)))  # noqa: E731
    assert rms(1.05, 1.25) < 0.02
    assert rms(0.5, 0.9) > 0.2 and rms(1.5, 2.0) > 0.2


def test_video_only_file_and_bad_input(tmp_path: Path) -> None:
    frames, fps = engine_frames(8)
    path = tmp_path / "v.mp4"
    with Mp4Writer(path, fps=fps, width=128, height=128) as w:
        for f in frames:
            w.write(f)
        with pytest.raises(ValueError, match="no audio track"):
            w.write(sine_chunks(0.1, 48_000, 960)[0])
        with pytest.raises(ValueError, match="pts must increase"):
            w.write(frames[-1])
        with pytest.raises(ValueError, match="writer expects 128x128"):
            w.write(VideoFrame(np.zeros((64, 64, 3), np.uint8), 99, frames[0].time_base))
    n, _, audio, _ = decode(path)
    assert n == 8 and len(audio) == 0
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264" and not c.streams.audio
