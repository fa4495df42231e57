"""The binary media message of the WebSocket transport, version 1.

Every binary WebSocket message from the server is one media unit: a fixed
44-byte header in network byte order, then the payload. Text messages carry the
JSON control protocol (streaming/control.py) in both directions; a client sends
binary messages only as audio units (a microphone, for sessions that convert
audio). docs/protocol.md has the table for implementers.

Header (v1, 44 bytes, big-endian)::

    offset size field        meaning
     0      4   magic        b"FCST"
     4      1   version      1
     5      1   msg_type     1 video, 2 audio
     6      1   kind         payload: 1 JPEG, 2 H.264 access unit (Annex B), 3 PCM16, 4 Opus
     7      1   flags        bit 0 key (decodable alone), bit 1 discontinuity (frames were dropped
                             or the session was paused/restarted just before this one)
     8      2   header_len   bytes before the payload (44 in v1; readers skip what they don't know)
    10      1   channels     audio channels (0 for video)
    11      1   reserved     0
    12      4   stream_id    media stream within the connection: 0 video, 1 audio
    16      8   pts          signed, in time_base units
    24      4   tb_num       time base numerator   (video: 1/fps; audio: 1/sample_rate)
    28      4   tb_den       time base denominator
    32      8   produced_us  wall clock (Unix epoch, microseconds) when the server released the
                             unit to the live queue; now - produced_us is its age (same clock only)
    40      4   payload_len  bytes after the header

A reader checks magic, version and header_len, and that payload_len matches
the bytes that follow; a newer minor layout may grow header_len, never reorder.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

MAGIC: Final = b"FCST"
VERSION: Final = 1
HEADER = struct.Struct("!4sBBBBHBBIqIIQI")
HEADER_SIZE: Final = HEADER.size  # 44
assert HEADER_SIZE == 44

VIDEO_STREAM: Final = 0
AUDIO_STREAM: Final = 1


class MsgType(enum.IntEnum):
    VIDEO = 1
    AUDIO = 2


class PayloadKind(enum.IntEnum):
    JPEG = 1
    H264 = 2  # one access unit, Annex B start codes; key units carry SPS/PPS
    PCM16 = 3  # signed 16-bit little-endian, interleaved
    OPUS = 4  # one Opus packet


class Flags(enum.IntFlag):
    NONE = 0
    KEY = 1
    DISCONTINUITY = 2


class FrameError(ValueError):
    """A binary message that is not a valid v1 media message."""


@dataclass(frozen=True, slots=True)
class MediaHeader:
    msg_type: MsgType
    kind: PayloadKind
    pts: int
    time_base: Fraction
    produced_us: int
    payload_len: int
    stream_id: int = VIDEO_STREAM
    flags: Flags = Flags.NONE
    channels: int = 0

    @property
    def time(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)


def pack(header: MediaHeader, payload: bytes) -> bytes:
    """Header + payload as one binary WebSocket message."""
    if header.payload_len != len(payload):
        raise FrameError(f"payload_len {header.payload_len} != len(payload) {len(payload)}")
    tb = header.time_base
    if tb <= 0 or tb.denominator >= 2**32 or tb.numerator >= 2**32:
        raise FrameError(f"time_base must be a positive fraction with 32-bit terms, got {tb}")
    try:
        head = HEADER.pack(
            MAGIC,
            VERSION,
            header.msg_type,
            header.kind,
            header.flags,
            HEADER_SIZE,
            header.channels,
            0,
            header.stream_id,
            header.pts,
            tb.numerator,
            tb.denominator,
            header.produced_us,
            header.payload_len,
        )
    except struct.error as e:
        raise FrameError(f"a header field is out of range: {e}") from None
    return head + payload


def unpack(message: bytes | bytearray | memoryview) -> tuple[MediaHeader, memoryview]:
    """Parse one binary message; the payload is a view into ``message`` (no copy)."""
    data = memoryview(message)
    if len(data) < HEADER_SIZE:
        raise FrameError(
            f"truncated header: {len(data)} bytes, a v{VERSION} header is {HEADER_SIZE}"
        )
    (
        magic,
        version,
        msg_type,
        kind,
        flags,
        header_len,
        channels,
        _reserved,
        stream_id,
        pts,
        tb_num,
        tb_den,
        produced_us,
        payload_len,
    ) = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}, expected {MAGIC!r}: not a Framecast frame")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}; this reader speaks {VERSION}")
    if header_len < HEADER_SIZE:
        raise FrameError(f"header_len {header_len} is below the v{VERSION} size {HEADER_SIZE}")
    if len(data) != header_len + payload_len:
        raise FrameError(
            f"payload length mismatch: header says {header_len} + {payload_len} bytes, "
            f"message has {len(data)} (truncated or concatenated)"
        )
    try:
        msg = MsgType(msg_type)
        payload_kind = PayloadKind(kind)
    except ValueError as e:
        raise FrameError(f"unknown message type or payload kind: {e}") from None
    if tb_num == 0 or tb_den == 0:
        raise FrameError(f"invalid time base {tb_num}/{tb_den}")
    header = MediaHeader(
        msg_type=msg,
        kind=payload_kind,
        pts=pts,
        time_base=Fraction(tb_num, tb_den),
        produced_us=produced_us,
        payload_len=payload_len,
        stream_id=stream_id,
        flags=Flags(flags & (Flags.KEY | Flags.DISCONTINUITY)),
        channels=channels,
    )
    return header, data[header_len:]
