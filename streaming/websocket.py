"""The WebSocket transport: binary media messages (streaming/wsproto.py) plus JSON control.

One connection is one session. The client sends a ``start`` control message
(or waits ``start_timeout`` seconds, or connects with ``?autostart=1``, to
start with the server's defaults); the server answers with an ``ack`` that
describes the stream, then sends one binary message per video frame while it
reads control messages, each of which gets one JSON reply. Bad control input
gets an ``error`` reply and the stream carries on. A client may also send audio
units (msg_type 2, stream 1, PCM16 or Opus: a microphone) to a session that
converts audio; they get no reply unless they are unusable.

Staying live: the transport takes a frame from the session only when fewer
than ``max_in_flight`` frames are unacknowledged by the client, where a frame
counts as acknowledged when the pong for a ping sent right after it comes
back (every WebSocket client answers pings, browsers included; no client
code is needed). A client that reads slowly therefore holds back the sender,
and the session's latest-frame queue drops the frames it cannot take: delay
cannot build up in socket buffers (aiortc #1192 is the same bug in RTP).

Limits: text control messages up to 64 KiB are read and checked (larger ones
up to ``max_message_bytes`` get a ``too_large`` error reply); a message over
``max_message_bytes`` makes the websockets library close the connection with
1009 (message too big) by design, and only that connection ends.

Close codes: 1000 after ``stop``; 1013 (try again later) when the server is
busy; 1011 when the model failed; 1001 when the server shuts down; HTTP 401
in the handshake without a valid token; HTTP 403 for a foreign Origin.

Usage::

    endpoint = WebSocketEndpoint(manager, WebSocketConfig(), token=None)
    server = await endpoint.serve("127.0.0.1", 8081)
    ...
    server.close(); await server.wait_closed()
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import av
import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from engine.media import VideoFrame
from streaming.control import (
    BAD_MESSAGE,
    MODEL_ERROR,
    NOT_STARTED,
    AudioCodec,
    ControlError,
    Start,
    StartParams,
    VideoCodec,
    ack,
    encode_reply,
    error_reply,
    parse_control,
)
from streaming.session import LiveSession, SessionBusy, SessionClosed, SessionManager
from streaming.speech import FRAME_RATE, FRAME_TIME_BASE, PacedAudio, SpeechClosed
from streaming.wsproto import (
    AUDIO_STREAM,
    VIDEO_STREAM,
    Flags,
    FrameError,
    MediaHeader,
    MsgType,
    PayloadKind,
    pack,
    unpack,
)

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011  # the model failed
CLOSE_TRY_AGAIN_LATER = 1013  # busy


@dataclass(frozen=True)
class WebSocketConfig:
    """Limits and media settings of the WebSocket endpoint."""

    codec: VideoCodec = "jpeg"  # default video payload; a start message may pick "h264"
    audio_codec: AudioCodec = "pcm16"  # default audio payload; a start message may pick "opus"
    jpeg_quality: int = 4  # fixed JPEG quantiser, 2 (best) .. 31
    h264_bitrate: int | None = None  # bits/s; None: from the resolution and frame rate
    max_in_flight: int = 2  # frames sent but not yet acknowledged by a pong
    start_timeout: float = 5.0  # seconds to wait for "start" before starting with defaults
    max_message_bytes: int = 2**20  # larger client messages close the connection (1009)
    max_queue: int = 8  # client messages buffered by the library before it stops reading
    write_limit: int = 2**18  # bytes buffered before send() waits for the socket
    ping_interval: float | None = 20.0  # keepalive; a dead client is dropped after
    ping_timeout: float | None = 20.0  # ... this many more seconds

    def __post_init__(self) -> None:
        if not 2 <= self.jpeg_quality <= 31:
            raise ValueError(f"jpeg_quality must be in [2, 31], got {self.jpeg_quality}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.max_message_bytes < 64 * 1024:
            raise ValueError("max_message_bytes must be at least 64 KiB (one control message)")


# ---- audio encoders (20 ms frames at 48 kHz from streaming/speech.PacedAudio) ----


class AudioEncoder(Protocol):
    kind: PayloadKind

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """Payloads for one int16 [960, channels] frame: zero or more."""
        ...


class Pcm16Encoder:
    """Raw signed 16-bit little-endian, interleaved: no codec delay, 768 kbit/s stereo."""

    kind = PayloadKind.PCM16

    def encode(self, samples: np.ndarray) -> list[bytes]:
        return [np.ascontiguousarray(samples, "<i2").tobytes()]


class OpusEncoder:
    """One Opus packet per 20 ms frame (PyAV's libopus); decoders drop its 312-sample pre-skip."""

    kind = PayloadKind.OPUS

    def __init__(self, channels: int, bitrate: int = 32_000) -> None:
        self._ctx = av.CodecContext.create("libopus", "w")
        self._ctx.sample_rate = FRAME_RATE
        self._ctx.layout = "mono" if channels == 1 else "stereo"
        self._ctx.format = "s16"
        self._ctx.bit_rate = bitrate
        self._layout = self._ctx.layout.name
        self._pts = 0

    def encode(self, samples: np.ndarray) -> list[bytes]:
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.reshape(1, -1)), format="s16", layout=self._layout
        )
        frame.sample_rate = FRAME_RATE
        frame.pts = self._pts
        self._pts += len(samples)
        return [bytes(p) for p in self._ctx.encode(frame)]


def make_audio_encoder(codec: AudioCodec, channels: int) -> AudioEncoder:
    return OpusEncoder(channels) if codec == "opus" else Pcm16Encoder()


# ---- video encoders (PyAV; run on the connection's codec thread) ----


class VideoEncoder(Protocol):
    kind: PayloadKind

    def encode(self, frame: VideoFrame) -> list[tuple[bytes, bool]]:
        """Payloads for one frame: (bytes, is_key); zero or more."""
        ...

    def close(self) -> None: ...


class JpegEncoder:
    """One JPEG per frame (PyAV's mjpeg encoder, full-range yuvj420p); every frame is key."""

    kind = PayloadKind.JPEG

    def __init__(self, quality: int = 4) -> None:
        self.quality = quality
        self._ctx: av.VideoCodecContext | None = None
        self._size = (0, 0)

    def encode(self, frame: VideoFrame) -> list[tuple[bytes, bool]]:
        h, w = frame.data.shape[:2]
        if self._ctx is None or self._size != (w, h):
            ctx = av.CodecContext.create("mjpeg", "w")
            assert isinstance(ctx, av.VideoCodecContext)
            ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuvj420p"
            ctx.time_base = Fraction(frame.time_base)
            ctx.options = {"qmin": str(self.quality), "qmax": str(self.quality)}
            self._ctx, self._size = ctx, (w, h)
        vf = av.VideoFrame.from_ndarray(frame.data, format="rgb24").reformat(format="yuvj420p")
        vf.pts = frame.pts
        return [(bytes(p), True) for p in self._ctx.encode(vf)]

    def close(self) -> None:
        self._ctx = None


class H264Encoder:
    """H.264 access units for live viewing: libx264 ultrafast/zerolatency, no B-frames.

    zerolatency makes one access unit per frame with no lookahead, so a frame
    leaves as soon as it is encoded; key units repeat SPS/PPS so a decoder can
    start at any of them. A keyframe every ``gop_seconds``.
    """

    kind = PayloadKind.H264

    def __init__(self, bitrate: int | None = None, gop_seconds: float = 2.0) -> None:
        self.bitrate = bitrate
        self.gop_seconds = gop_seconds
        self._ctx: av.VideoCodecContext | None = None
        self._key: tuple[int, int, Fraction] = (0, 0, Fraction(1))

    def encode(self, frame: VideoFrame) -> list[tuple[bytes, bool]]:
        h, w = frame.data.shape[:2]
        if w % 2 or h % 2:
            raise ValueError(f"H.264 (yuv420p) needs even sizes, got {w}x{h}")
        if self._ctx is None or self._key != (w, h, frame.time_base):
            fps = round(1 / frame.time_base) if frame.time_base > 0 else 30
            ctx = av.CodecContext.create("libx264", "w")
            assert isinstance(ctx, av.VideoCodecContext)
            ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuv420p"
            ctx.time_base = Fraction(frame.time_base)
            ctx.framerate = Fraction(fps)
            ctx.gop_size = max(1, round(fps * self.gop_seconds))
            ctx.max_b_frames = 0
            ctx.bit_rate = self.bitrate or default_h264_bitrate(w, h, fps)
            ctx.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "x264-params": "repeat-headers=1:bframes=0",
            }
            self._ctx, self._key = ctx, (w, h, frame.time_base)
        vf = av.VideoFrame.from_ndarray(frame.data, format="rgb24")
        vf.pts = frame.pts
        return [(bytes(p), bool(p.is_keyframe)) for p in self._ctx.encode(vf)]

    def close(self) -> None:
        self._ctx = None


def default_h264_bitrate(width: int, height: int, fps: int) -> int:
    """About 0.1 bit per pixel per frame, at least 300 kb/s.

    128x128 at 16 fps gets 300 kb/s, 832x480 at 16 fps 640 kb/s: what
    ultrafast/zerolatency needs for clean frames, not aiortc's flat 1 Mb/s cap.
    """
    return max(300_000, int(0.1 * width * height * fps))


def make_encoder(codec: VideoCodec, config: WebSocketConfig) -> VideoEncoder:
    if codec == "h264":
        return H264Encoder(config.h264_bitrate)
    return JpegEncoder(config.jpeg_quality)


# ---- the endpoint ----


class WebSocketEndpoint:
    """Serves sessions from a SessionManager over WebSocket (websockets' asyncio server)."""

    def __init__(
        self,
        manager: SessionManager,
        config: WebSocketConfig | None = None,
        *,
        token: str | None = None,
        allowed_origins: tuple[str, ...] | None = None,
    ) -> None:
        self.manager = manager
        self.config = config or WebSocketConfig()
        self.token = token
        # None: a browser Origin must name the host the client connected to (and, once
        # set, the HTTP port that serves the page); non-browser clients send no Origin.
        self.allowed_origins = allowed_origins
        self.page_port: int | None = None
        self.connections = 0

    async def serve(self, host: str, port: int) -> Server:
        """Start listening; ``port=0`` picks a free port (see ``server.sockets``)."""
        c = self.config
        return await serve(
            self.handler,
            host,
            port,
            compression=None,  # media is already compressed; deflate would only cost CPU
            process_request=self.process_request,
            max_size=c.max_message_bytes,
            max_queue=c.max_queue,
            write_limit=c.write_limit,
            ping_interval=c.ping_interval,
            ping_timeout=c.ping_timeout,
        )

    # -- handshake --

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Bearer token (Authorization header or ?token=) and Origin checks, before upgrading."""
        if self.token is not None and not _token_ok(request, self.token):
            response = connection.respond(
                HTTPStatus.UNAUTHORIZED,
                "401 unauthorized: send 'Authorization: Bearer <token>' or add ?token=<token>\n",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="framecast"'
            return response
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_ok(origin, request.headers.get("Host", "")):
            return connection.respond(
                HTTPStatus.FORBIDDEN, f"403 forbidden: origin {origin!r} is not allowed\n"
            )
        return None

    def _origin_ok(self, origin: str, host_header: str) -> bool:
        if self.allowed_origins is not None:
            return origin in self.allowed_origins
        o = urlsplit(origin)
        try:
            h = urlsplit(f"//{host_header}")
            same_host = o.hostname is not None and o.hostname == h.hostname
            port_ok = self.page_port is None or (o.port or _default_port(o.scheme)) == (
                self.page_port
            )
        except ValueError:
            return False
        return same_host and port_ok

    # -- one connection --

    async def handler(self, ws: ServerConnection) -> None:
        peer = _peer(ws)
        self.connections += 1
        session: LiveSession | None = None
        codec_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ws-codec-{peer}")
        try:
            opened = await self._open_session(ws, peer)
            if opened is None:
                return
            session, start_id = opened
            codec: VideoCodec = session.params.codec or self.config.codec
            described = {**session.describe(), "codec": codec}
            audio_codec: AudioCodec = session.params.audio_codec or self.config.audio_codec
            if "audio" in described:
                described["audio"] = {**described["audio"], "codec": audio_codec}
            await ws.send(encode_reply(ack(Start(id=start_id), **described)))
            encoder = make_encoder(codec, self.config)
            sender = asyncio.create_task(self._send_video(ws, session, encoder, codec_pool))
            reader = asyncio.create_task(self._read_controls(ws, session))
            tasks = {sender, reader}
            if session.speech is not None:
                tasks.add(asyncio.create_task(self._send_audio(ws, session, audio_codec)))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if reader not in done:
                    # the session ended ("stop" or a model error): let the reader send the
                    # reply to the message that ended it
                    await asyncio.wait({reader}, timeout=1.0)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                encoder.close()
            await self._finish(ws, session, done, peer)
        except ConnectionClosed:
            log.info("[ws %s] client went away", peer)
        finally:
            self.connections -= 1
            if session is not None:
                await session.close("client disconnected")  # no-op if already closed
            codec_pool.shutdown(wait=False)

    async def _open_session(
        self, ws: ServerConnection, peer: str
    ) -> tuple[LiveSession, str | int | None] | None:
        """Wait for a valid start (or the timeout, or ?autostart=1), then open a session."""
        aloop = asyncio.get_running_loop()
        deadline = aloop.time() + self.config.start_timeout
        autostart = _query(ws).get("autostart", ["0"])[-1] in ("1", "true", "yes")
        while True:
            params, msg_id = StartParams(), None
            remaining = deadline - aloop.time()
            if not autostart and remaining > 0:
                try:
                    message = await asyncio.wait_for(ws.recv(), remaining)
                except TimeoutError:
                    log.info("[ws %s] no start message: starting with the defaults", peer)
                else:
                    if isinstance(message, bytes):
                        await ws.send(encode_reply(_binary_error()))
                        continue
                    try:
                        msg = parse_control(message)
                    except ControlError as e:
                        await ws.send(encode_reply(e.reply()))
                        continue
                    if not isinstance(msg, Start):
                        await ws.send(
                            encode_reply(
                                error_reply(
                                    NOT_STARTED,
                                    f'no session yet: send {{"type": "start"}} before {msg.type!r}',
                                    msg_id=msg.id,
                                    for_type=msg.type,
                                )
                            )
                        )
                        continue
                    params, msg_id = msg.params, msg.id
            try:
                return await self.manager.open(params), msg_id
            except SessionBusy as e:
                log.info("[ws %s] refused: %s", peer, e)
                await ws.send(encode_reply(e.reply()))
                await ws.close(CLOSE_TRY_AGAIN_LATER, "server busy")
                return None
            except ControlError as e:
                e.msg_id, e.for_type = msg_id, "start"
                await ws.send(encode_reply(e.reply()))
                if autostart or remaining <= 0:  # the defaults themselves failed
                    await ws.close(CLOSE_INTERNAL_ERROR, "cannot start a session")
                    return None

    async def _send_video(
        self,
        ws: ServerConnection,
        session: LiveSession,
        encoder: VideoEncoder,
        codec_pool: ThreadPoolExecutor,
    ) -> None:
        aloop = asyncio.get_running_loop()
        in_flight: collections.deque[Awaitable[float]] = collections.deque()
        last_pts: int | None = None
        while True:
            while len(in_flight) >= self.config.max_in_flight:
                await in_flight.popleft()  # the client has read up to that frame
            timed = await session.next_frame_timed()
            frame = timed.frame
            units = await aloop.run_in_executor(codec_pool, encoder.encode, frame)
            jump = last_pts is not None and frame.pts != last_pts + 1
            for payload, key in units:
                flags = (Flags.KEY if key else Flags.NONE) | (
                    Flags.DISCONTINUITY if jump else Flags.NONE
                )
                header = MediaHeader(
                    msg_type=MsgType.VIDEO,
                    kind=encoder.kind,
                    pts=frame.pts,
                    time_base=frame.time_base,
                    produced_us=int(timed.produced * 1e6),
                    payload_len=len(payload),
                    stream_id=VIDEO_STREAM,
                    flags=flags,
                )
                await ws.send(pack(header, payload))
            last_pts = frame.pts
            in_flight.append(await ws.ping())

    async def _send_audio(
        self, ws: ServerConnection, session: LiveSession, codec: AudioCodec
    ) -> None:
        """The session's voice as 20 ms frames, each sent ``lead`` s before it is due."""
        assert session.speech is not None
        paced = PacedAudio(session.speech, silence=False)
        encoder = make_audio_encoder(codec, session.speech.channels)
        try:
            while True:
                frame = await paced.next_frame()
                for payload in encoder.encode(frame.samples):
                    flags = Flags.KEY | (Flags.DISCONTINUITY if frame.discontinuity else Flags.NONE)
                    header = MediaHeader(
                        msg_type=MsgType.AUDIO,
                        kind=encoder.kind,
                        pts=frame.pts,
                        time_base=FRAME_TIME_BASE,
                        produced_us=int(time.time() * 1e6),
                        payload_len=len(payload),
                        stream_id=AUDIO_STREAM,
                        flags=flags,
                        channels=frame.samples.shape[1],
                    )
                    await ws.send(pack(header, payload))
        except SpeechClosed:
            await session.wait_closed()  # the voice ends with its session
        finally:
            paced.close()

    async def _read_controls(self, ws: ServerConnection, session: LiveSession) -> None:
        microphone = MicrophoneInput()
        async for message in ws:
            if isinstance(message, bytes):
                try:
                    samples, rate = microphone.decode(message)
                    session.feed_audio(samples, rate)
                    continue  # audio in gets no reply, only a bad unit does
                except FrameError as e:
                    reply = error_reply(BAD_MESSAGE, f"unusable audio unit: {e}")
                except ControlError as e:
                    reply = e.reply()
            else:
                reply = await session.handle_control(message)
            await ws.send(encode_reply(reply))
            if session.closed:  # "stop", or the model failed meanwhile
                return

    async def _finish(
        self, ws: ServerConnection, session: LiveSession, done: set[asyncio.Task[None]], peer: str
    ) -> None:
        """Close the connection the way the session ended."""
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, SessionClosed | ConnectionClosed):
                log.error("[ws %s] transport failed", peer, exc_info=exc)
                await ws.close(CLOSE_INTERNAL_ERROR, "internal error")
                return
        if session.state == "failed":
            await ws.send(
                encode_reply(
                    error_reply(
                        MODEL_ERROR,
                        f"the model failed and the session ended: {session.error}; "
                        "open a new session",
                    )
                )
            )
            await ws.close(CLOSE_INTERNAL_ERROR, "model error")
        else:
            await ws.close(CLOSE_NORMAL, "session ended")


def _binary_error() -> dict[str, object]:
    return error_reply(
        BAD_MESSAGE,
        "no session yet: send a start control message (JSON text) before any audio unit",
    )


class MicrophoneInput:
    """Client audio units (msg_type 2, stream 1, PCM16 or Opus) -> float32 samples and rate."""

    def __init__(self) -> None:
        self._opus: Any = None

    def decode(self, message: bytes) -> tuple[np.ndarray, int]:
        header, payload = unpack(message)
        if header.msg_type != MsgType.AUDIO or header.stream_id != AUDIO_STREAM:
            raise FrameError(
                "clients send only audio units (msg_type 2, stream_id 1: a microphone); "
                "send control messages as JSON text"
            )
        tb = header.time_base
        if tb.numerator != 1 or not 8_000 <= tb.denominator <= 192_000:
            raise FrameError(f"an audio unit's time base is 1/sample_rate (8-192 kHz), got {tb}")
        if header.channels not in (1, 2):
            raise FrameError(f"audio units have 1 or 2 channels, got {header.channels}")
        if header.kind == PayloadKind.PCM16:
            if len(payload) % (2 * header.channels):
                raise FrameError(f"{len(payload)} bytes is no whole number of PCM16 frames")
            pcm = np.frombuffer(payload, "<i2").reshape(-1, header.channels)
            return pcm.astype(np.float32) / 32768.0, tb.denominator
        if header.kind == PayloadKind.OPUS:
            if self._opus is None:
                self._opus = av.CodecContext.create("libopus", "r")
            try:
                frames = self._opus.decode(av.Packet(bytes(payload)))
            except av.error.FFmpegError as e:
                raise FrameError(f"not an Opus packet: {e}") from None
            parts = [f.to_ndarray().reshape(-1, f.layout.nb_channels) for f in frames]
            if not parts:
                return np.zeros((0, 1), np.float32), FRAME_RATE
            data = np.concatenate(parts)
            scale = 32768.0 if data.dtype == np.int16 else 1.0
            return data.astype(np.float32) / scale, frames[0].sample_rate
        raise FrameError(f"audio units are PCM16 or Opus, got {header.kind.name}")


def _query(ws: ServerConnection) -> dict[str, list[str]]:
    path = ws.request.path if ws.request is not None else "/"
    return parse_qs(urlsplit(path).query)


def _token_ok(request: Request, token: str) -> bool:
    given = parse_qs(urlsplit(request.path).query).get("token", [""])[-1]
    return token_matches(request.headers.get("Authorization", ""), given, token)


def token_matches(authorization: str, query_token: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, or the ``?token=`` value, equals ``token``.

    Compared in constant time. The query form exists because browsers cannot set
    headers on a WebSocket handshake.
    """
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
        return True
    return bool(query_token) and hmac.compare_digest(query_token.encode(), token.encode())


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except (TypeError, ValueError):
        return f"conn-{int(time.monotonic() * 1e3) % 100000}"
