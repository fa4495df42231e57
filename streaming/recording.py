"""Write frames to MP4 with PyAV (H.264, yuv420p)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
from av.video.stream import VideoStream

from engine.media import VideoFrame


class Mp4Writer:
    """Usage::

    with Mp4Writer("clip.mp4", fps=16, width=128, height=128) as w:
        for frame in stream.frames(64):
            w.write(frame)
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
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even sizes, got {width}x{height}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self.container = av.open(str(path), mode="w")
        stream = self.container.add_stream(codec, rate=fps)
        assert isinstance(stream, VideoStream), f"{codec} is not a video codec"
        self.stream: VideoStream = stream
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = Fraction(1, fps)
        if codec == "libx264":
            self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.frames_written = 0

    def write(self, frame: VideoFrame) -> None:
        h, w = frame.data.shape[:2]
        if (w, h) != (self.stream.width, self.stream.height):
            raise ValueError(
                f"frame is {w}x{h}, writer expects {self.stream.width}x{self.stream.height}"
            )
        vf = av.VideoFrame.from_ndarray(frame.data, format="rgb24")
        vf.pts = frame.pts
        vf.time_base = frame.time_base
        for packet in self.stream.encode(vf):
            self.container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = None  # type: ignore[assignment]

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
