"""Write a session to MP4 with PyAV: H.264 (yuv420p) video, optional AAC audio, in sync.

Both tracks are timed by the media's own timestamps (VideoFrame.pts and
AudioChunk.pts in their time bases), never by arrival order, so a recording
of a live session stays in sync when frames are dropped or audio arrives in
uneven chunks.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from engine.media import AudioChunk, VideoFrame

AUDIO_RATE = 48_000  # Hz, the AAC track's sample rate
AUDIO_SLACK = 0.010  # seconds: timestamp jitter tolerated before padding silence or trimming


class Mp4Writer:
    """Usage::

    with Mp4Writer("clip.mp4", fps=16, width=128, height=128, audio_channels=1) as w:
        for frame in stream.frames(64):
            w.write(frame)              # VideoFrame
        w.write(chunk)                  # AudioChunk, any sample rate, resampled to 48 kHz

    Without audio_channels the file has no audio track. Audio is placed at
    its pts: a gap is filled with silence and an overlap is trimmed, so audio
    and video durations agree when the source's clocks agree.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fps: int,
        width: int,
        height: int,
        codec: str = "libx264",
        crf: int = 18,
        audio_channels: int | None = None,
        audio_codec: str = "aac",
        audio_bitrate: int = 128_000,  # bits/s
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even sizes, got {width}x{height}")
        if audio_channels not in (None, 1, 2):
            raise ValueError(f"audio_channels must be 1 or 2, got {audio_channels}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self.container = av.open(str(path), mode="w")
        stream = self.container.add_stream(codec, rate=fps)
        assert isinstance(stream, VideoStream), f"{codec} is not a video codec"
        self.stream: VideoStream = stream
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.time_base = Fraction(1, fps)  # of the video track
        self.stream.time_base = self.time_base
        if codec == "libx264":
            self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.frames_written = 0
        self._last_video_pts: int | None = None

        self.audio: AudioStream | None = None
        self.audio_samples_written = 0  # at AUDIO_RATE, silence included
        self._audio_layout = ""
        self._resampler: av.AudioResampler | None = None
        if audio_channels is not None:
            audio = self.container.add_stream(audio_codec, rate=AUDIO_RATE)
            assert isinstance(audio, AudioStream), f"{audio_codec} is not an audio codec"
            self._audio_layout = "mono" if audio_channels == 1 else "stereo"
            audio.layout = self._audio_layout
            audio.bit_rate = audio_bitrate
            audio.time_base = Fraction(1, AUDIO_RATE)
            self.audio = audio

    @property
    def video_seconds(self) -> float:
        return self.frames_written / float(self.stream.average_rate or 1)

    @property
    def audio_seconds(self) -> float:
        return self.audio_samples_written / AUDIO_RATE

    def write(self, item: VideoFrame | AudioChunk) -> None:
        if isinstance(item, VideoFrame):
            self._write_video(item)
        elif isinstance(item, AudioChunk):
            self._write_audio(item)
        else:
            raise TypeError(f"Mp4Writer writes VideoFrame or AudioChunk, got {type(item).__name__}")

    def _write_video(self, frame: VideoFrame) -> None:
        h, w = frame.data.shape[:2]
        if (w, h) != (self.stream.width, self.stream.height):
            raise ValueError(
                f"frame is {w}x{h}, writer expects {self.stream.width}x{self.stream.height}"
            )
        pts = int(Fraction(frame.pts) * frame.time_base / self.time_base)
        if self._last_video_pts is not None and pts <= self._last_video_pts:
            raise ValueError(f"video pts must increase: {frame.pts} after {self._last_video_pts}")
        self._last_video_pts = pts
        vf = av.VideoFrame.from_ndarray(frame.data, format="rgb24")
        vf.pts = pts
        vf.time_base = self.time_base
        for packet in self.stream.encode(vf):
            self.container.mux(packet)
        self.frames_written += 1

    def _write_audio(self, chunk: AudioChunk) -> None:
        if self.audio is None:
            raise ValueError("this writer has no audio track; pass audio_channels=1 or 2")
        samples = chunk.samples
        channels = 1 if self._audio_layout == "mono" else 2
        if samples.ndim != 2 or samples.shape[1] != channels:
            raise ValueError(f"audio must be [N, {channels}] float32, got {samples.shape}")
        if self._resampler is None:
            self._resampler = av.AudioResampler(
                format="fltp", layout=self._audio_layout, rate=AUDIO_RATE
            )
        source = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.astype(np.float32).reshape(1, -1)),
            format="flt",
            layout=self._audio_layout,
        )
        source.sample_rate = chunk.sample_rate
        start = int(Fraction(chunk.pts) * chunk.time_base * AUDIO_RATE)
        for piece in self._resampler.resample(source):
            self._place_audio(piece.to_ndarray(), start)
            start += piece.samples

    def _place_audio(self, planar: np.ndarray, start: int) -> None:
        """planar: float32 [channels, N] at AUDIO_RATE, meant to start at sample ``start``."""
        slack = int(AUDIO_SLACK * AUDIO_RATE)
        gap = start - self.audio_samples_written
        if gap > slack:  # audio went missing: keep the timeline with silence
            self._encode_audio(np.zeros((planar.shape[0], gap), np.float32))
        elif gap < -slack:  # overlaps what is written: drop the overlap
            planar = planar[:, -gap:]
        if planar.shape[1]:
            self._encode_audio(planar)

    def _encode_audio(self, planar: np.ndarray) -> None:
        assert self.audio is not None
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(planar, np.float32), format="fltp", layout=self._audio_layout
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = self.audio_samples_written
        frame.time_base = Fraction(1, AUDIO_RATE)
        for packet in self.audio.encode(frame):
            self.container.mux(packet)
        self.audio_samples_written += planar.shape[1]

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        if self.audio is not None:
            for packet in self.audio.encode():
                self.container.mux(packet)
        self.container.close()
        self.container = None  # type: ignore[assignment]

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
