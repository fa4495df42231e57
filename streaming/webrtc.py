"""WebRTC delivery with aiortc: one peer connection per live session.

The browser (or any WebRTC client) makes the offer: a receive-only video
section, an audio section when it wants sound, and a data channel labelled
"control". ``WebRTCGateway.answer`` turns that offer into an answer whose
video track is fed from the session's latest-frame queue::

    gateway = WebRTCGateway(WebRTCConfig(host_addresses=("127.0.0.1",)))
    session = await manager.open({"prompt": "a red ball"})
    sdp, type_ = await gateway.answer(offer_sdp, "offer", session)
    ...
    await gateway.close()          # closes every peer connection and its session

The tracks are thin: ``recv()`` awaits ``session.next_frame()`` (which drops
stale frames and paces to the generator's rate) and only converts and stamps
the frame. Encoding runs in aiortc's sender, off the event loop.

Clocks: video pts on the RTP 90 kHz clock derived from the generator's own
pts and time base; audio pts on a 48 kHz clock in 20 ms frames.

ICE: no STUN/TURN server unless configured. aioice gathers host candidates
from every interface except loopback; ``WebRTCConfig.host_addresses`` replaces
that list for this gateway's connections only (see ``ice_host_addresses``).
Without it, a host whose only usable interface is loopback would offer no
candidate at all, so there the gateway gathers on 127.0.0.1 instead and logs
one line saying so (``WebRTCConfig.auto_loopback``, streaming.ice_detect).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, Protocol

import aioice.ice
import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from engine.media import AudioChunk, VideoFrame
from streaming import ice_detect
from streaming.session import SessionClosed
from streaming.speech import PacedAudio, SessionSpeech, SpeechClosed

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000  # Hz, the RTP clock of every video codec
AUDIO_CLOCK_RATE = 48_000  # Hz, Opus' RTP clock
AUDIO_PTIME = 0.020  # seconds of audio per RTP frame
AUDIO_FRAME_SAMPLES = int(AUDIO_CLOCK_RATE * AUDIO_PTIME)  # 960
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_TIME_BASE = Fraction(1, AUDIO_CLOCK_RATE)

MAX_SDP_BYTES = 64 * 1024  # an offer is a few KiB; anything bigger is not a browser offer
CONTROL_LABEL = "control"  # the data channel carrying JSON control messages
CONTROL_QUEUE = 16  # control messages waiting for the session; more get a "busy" error
CLOSE_GRACE = 0.25  # seconds: when the session ends itself, let its last reply reach the peer

BITS_PER_PIXEL = 0.15  # default video bitrate per pixel per frame (VP8/H.264 at low motion)
MIN_DEFAULT_BITRATE = 150_000  # bits/s: tiny frames still need headroom for keyframes
MAX_DEFAULT_BITRATE = 20_000_000  # bits/s
BITRATE_FLOOR_FRACTION = 0.25  # congestion feedback (REMB) may lower the rate to this share

Codec = Literal["vp8", "h264"]
CODEC_MIME: dict[Codec, str] = {"vp8": "video/VP8", "h264": "video/H264"}


class LiveMediaSession(Protocol):
    """What the gateway needs from a session (streaming.session.LiveSession provides it)."""

    id: str
    has_audio: bool
    speech: SessionSpeech | None  # a voice: sent by SpeechAudioTrack (else next_audio's chunks)

    @property
    def fps(self) -> int: ...

    async def handle_control(self, message: str | bytes | dict[str, Any]) -> dict[str, Any]: ...

    async def next_frame(self) -> VideoFrame: ...

    async def next_audio(self) -> AudioChunk: ...

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """Microphone audio for the session's converter (raises when it takes none)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class WebRTCConfig:
    """How the gateway answers offers. Every field has a working default."""

    codec: Codec = "vp8"
    # Video bitrate ceiling in bits/s. None: BITS_PER_PIXEL * width * height * fps of the
    # first frame, within [MIN_DEFAULT_BITRATE, MAX_DEFAULT_BITRATE]. Receiver congestion
    # feedback (REMB) can lower the rate, never raise it above this ceiling.
    bitrate: int | None = None
    # STUN/TURN URLs ("stun:host:port", "turn:host:port?transport=udp"); none by default.
    ice_servers: tuple[str, ...] = ()
    turn_username: str | None = None
    turn_credential: str | None = None
    # Local addresses for ICE host candidates. None: aioice's default (every interface
    # except loopback). ("127.0.0.1",): loopback only, for tests and same-machine use.
    host_addresses: tuple[str, ...] | None = None
    # With host_addresses None: when no interface has an address usable for ICE (only
    # loopback, or link-local), gather on 127.0.0.1, checked at every offer. False: never.
    auto_loopback: bool = True
    # A connected peer that sends no RTCP receiver report for this long is gone (seconds).
    peer_timeout: float = 10.0
    # A peer that has not connected this long after the answer is dropped (seconds).
    connect_timeout: float = 30.0
    # 20 ms audio frames the server's receiver of a client's microphone holds before it
    # plays the first (aiortc's default is 4, i.e. 80 ms on every hop). Voice conversion
    # sends the microphone straight back, so each frame held is latency the user hears;
    # 1 suits loopback and LANs, raise it for lossy or reordering links. None: aiortc's.
    microphone_buffer: int | None = 1

    def __post_init__(self) -> None:
        if self.microphone_buffer is not None and not 1 <= self.microphone_buffer <= 8:
            raise ValueError(
                f"microphone_buffer must be 1-8 frames or None, got {self.microphone_buffer}"
            )
        if self.codec not in CODEC_MIME:
            raise ValueError(f"codec must be one of {tuple(CODEC_MIME)}, got {self.codec!r}")
        if self.bitrate is not None and self.bitrate < 10_000:
            raise ValueError(f"bitrate is in bits/s and must be >= 10000, got {self.bitrate}")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise ValueError(f"ICE server URL must start with stun: or turn:, got {url!r}")
        if self.host_addresses is not None:
            if not self.host_addresses:
                raise ValueError("host_addresses is empty: ICE would have no candidate")
            for address in self.host_addresses:
                try:
                    ipaddress.ip_address(address)
                except ValueError:
                    raise ValueError(
                        f"host_addresses wants IP addresses, got {address!r}"
                    ) from None
        if self.peer_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("peer_timeout and connect_timeout must be > 0 seconds")

    def rtc_configuration(self) -> RTCConfiguration:
        """aiortc's configuration. iceServers=[] matters: None would mean Google's STUN."""
        servers = [
            RTCIceServer(
                urls=url,
                username=self.turn_username if url.startswith("turn") else None,
                credential=self.turn_credential if url.startswith("turn") else None,
            )
            for url in self.ice_servers
        ]
        return RTCConfiguration(iceServers=servers)


def default_bitrate(width: int, height: int, fps: float) -> int:
    """A bitrate ceiling that suits the resolution: BITS_PER_PIXEL per pixel per frame."""
    bits = int(BITS_PER_PIXEL * width * height * fps)
    return max(MIN_DEFAULT_BITRATE, min(bits, MAX_DEFAULT_BITRATE))


# ---- ICE host candidates ----

_HOST_ADDRESSES: ContextVar[tuple[str, ...] | None] = ContextVar(
    "framecast_ice_host_addresses", default=None
)
_aioice_get_host_addresses = aioice.ice.get_host_addresses


def _scoped_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice.ice.get_host_addresses, unless ice_host_addresses() scopes a fixed list."""
    fixed = _HOST_ADDRESSES.get()
    if fixed is None:
        return _aioice_get_host_addresses(use_ipv4, use_ipv6)
    wanted = {4: use_ipv4, 6: use_ipv6}
    return [a for a in fixed if wanted[ipaddress.ip_address(a).version]]


@contextlib.contextmanager
def ice_host_addresses(addresses: Iterable[str] | None) -> Iterator[None]:
    """Gather ICE host candidates only on ``addresses`` inside this block.

    aioice's Connection.gather_candidates() looks up the module function
    aioice.ice.get_host_addresses, which lists every interface and skips
    loopback. We replace that function once, process-wide, by one that defers
    to the original unless a context variable holds a fixed list; this block
    sets the variable. Context variables follow the task (and the tasks it
    starts with asyncio.gather), so only gathering awaited inside the block
    is affected: other peer connections in the process keep aioice's default.
    Wrap ``await pc.setLocalDescription(...)``, where aiortc gathers.
    """
    if aioice.ice.get_host_addresses is not _scoped_host_addresses:
        aioice.ice.get_host_addresses = _scoped_host_addresses
    token = _HOST_ADDRESSES.set(None if addresses is None else tuple(addresses))
    try:
        yield
    finally:
        _HOST_ADDRESSES.reset(token)


# ---- encoders with a per-connection bitrate ----


class _RateMixin:
    """Keeps target_bitrate in [floor, ceiling] for this connection.

    aiortc's encoders clamp every bitrate (the start value and each REMB
    estimate from the receiver) to module-wide MIN_BITRATE/MAX_BITRATE (VP8
    250 kbps-1.5 Mbps, H.264 0.5-3 Mbps). Ours clamp to the session's own
    range; the ceiling defaults from the first frame's size.
    """

    _fps: float
    _ceiling: int | None
    _storage: str  # the base encoder's private attribute its encode() reads

    def _init_rate(self, bitrate: int | None, fps: float) -> None:
        if not hasattr(self, self._storage):
            raise RuntimeError(
                f"aiortc's encoder no longer keeps its bitrate in {self._storage}; "
                "update streaming/webrtc.py for this aiortc version"
            )
        self._fps = fps
        self._ceiling = bitrate
        if bitrate is not None:
            self._set_rate(bitrate)

    def _set_rate(self, bitrate: int) -> None:
        ceiling = self._ceiling if self._ceiling is not None else MAX_DEFAULT_BITRATE
        floor = int(ceiling * BITRATE_FLOOR_FRACTION)
        setattr(self, self._storage, max(floor, min(int(bitrate), ceiling)))

    @property
    def ceiling(self) -> int | None:
        """The highest bitrate this connection may use; None until the first frame sets it."""
        return self._ceiling

    def _get_rate(self) -> int:
        value: int = getattr(self, self._storage)
        return value

    def _size_known(self, frame: av.VideoFrame) -> None:
        if self._ceiling is None:
            self._ceiling = default_bitrate(frame.width, frame.height, self._fps)
            self._set_rate(self._ceiling)


class CappedVp8Encoder(_RateMixin, Vp8Encoder):
    """aiortc's VP8 encoder with this connection's bitrate range."""

    name = "vp8"
    _storage = "_Vp8Encoder__target_bitrate"  # read by Vp8Encoder.encode for bufsize

    def __init__(self, bitrate: int | None, fps: float) -> None:
        Vp8Encoder.__init__(self)
        self._init_rate(bitrate, fps)

    target_bitrate = property(_RateMixin._get_rate, _RateMixin._set_rate)

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        self._size_known(frame)
        return super().encode(frame, force_keyframe)


class CappedH264Encoder(_RateMixin, H264Encoder):
    """aiortc's H.264 encoder with this connection's bitrate range."""

    name = "h264"
    _storage = "_H264Encoder__target_bitrate"

    def __init__(self, bitrate: int | None, fps: float) -> None:
        H264Encoder.__init__(self)
        self._init_rate(bitrate, fps)

    target_bitrate = property(_RateMixin._get_rate, _RateMixin._set_rate)

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        self._size_known(frame)
        return super().encode(frame, force_keyframe)


def _install_encoder(sender: RTCRtpSender, encoder: CappedVp8Encoder | CappedH264Encoder) -> None:
    """Give the sender our encoder before it creates aiortc's default on the first frame.

    aiortc has no public hook for per-connection encoder settings; the sender
    keeps its encoder in a private attribute that it fills only while empty.
    """
    attribute = "_RTCRtpSender__encoder"
    if getattr(sender, attribute, "missing") is not None:
        raise RuntimeError(
            "aiortc's RTCRtpSender no longer keeps a lazily created encoder in "
            f"{attribute}; update streaming/webrtc.py for this aiortc version"
        )
    setattr(sender, attribute, encoder)


# ---- tracks ----


def rescale(pts: int, time_base: Fraction, rate: int) -> int:
    """pts in time_base units -> ticks of a clock at ``rate`` Hz (exact rationals, floored)."""
    return int(Fraction(pts) * time_base * rate)


class SessionVideoTrack(MediaStreamTrack):
    """Video from a session's latest-frame queue, stamped on the 90 kHz RTP clock."""

    kind = "video"

    def __init__(
        self, session: LiveMediaSession, on_end: Callable[[str], None] | None = None
    ) -> None:
        super().__init__()
        self.session = session
        self.on_end = on_end  # told when the session ends (stop message, model failure)
        self.frames_sent = 0

    async def recv(self) -> av.VideoFrame:
        try:
            frame = await self.session.next_frame()
        except SessionClosed as e:
            self.stop()
            if self.on_end is not None:
                self.on_end(str(e))
            raise MediaStreamError("session closed") from None
        out = av.VideoFrame.from_ndarray(frame.data, format="rgb24")
        out.pts = rescale(frame.pts, frame.time_base, VIDEO_CLOCK_RATE)
        out.time_base = VIDEO_TIME_BASE
        self.frames_sent += 1
        return out


class SessionAudioTrack(MediaStreamTrack):
    """Audio from a session, re-cut into 20 ms frames (960 samples) on the 48 kHz clock.

    Chunks may have any length and sample rate; they are resampled to 48 kHz
    s16. The clock follows the chunks' own pts: a gap of 20 ms or more
    (dropped audio) restarts the clock at the new chunk instead of sliding
    every later frame early.
    """

    kind = "audio"

    def __init__(self, session: LiveMediaSession) -> None:
        super().__init__()
        self.session = session
        self._pending = np.zeros((0, 1), np.int16)  # [samples, channels] at 48 kHz
        self._pending_pts = 0  # 48 kHz pts of _pending[0]
        self._resampler: av.AudioResampler | None = None
        self._layout = ""
        self.frames_sent = 0

    async def recv(self) -> av.AudioFrame:
        while len(self._pending) < AUDIO_FRAME_SAMPLES:
            try:
                chunk = await self.session.next_audio()
            except SessionClosed:
                self.stop()
                raise MediaStreamError("session closed") from None
            self._push(chunk)
        samples = self._pending[:AUDIO_FRAME_SAMPLES]
        self._pending = self._pending[AUDIO_FRAME_SAMPLES:]
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.reshape(1, -1)), format="s16", layout=self._layout
        )
        frame.sample_rate = AUDIO_CLOCK_RATE
        frame.pts = self._pending_pts
        frame.time_base = AUDIO_TIME_BASE
        self._pending_pts += AUDIO_FRAME_SAMPLES
        self.frames_sent += 1
        return frame

    def _push(self, chunk: AudioChunk) -> None:
        assert chunk.samples.ndim == 2, (
            f"AudioChunk.samples is [N, channels]: {chunk.samples.shape}"
        )
        channels = chunk.samples.shape[1]
        if channels not in (1, 2):
            raise ValueError(f"audio must be mono or stereo, got {channels} channels")
        layout = "mono" if channels == 1 else "stereo"
        if self._resampler is None or layout != self._layout:
            self._layout = layout
            self._resampler = av.AudioResampler(format="s16", layout=layout, rate=AUDIO_CLOCK_RATE)
            self._pending = np.zeros((0, channels), np.int16)
        start = rescale(chunk.pts, chunk.time_base, AUDIO_CLOCK_RATE)
        expected = self._pending_pts + len(self._pending)
        if not len(self._pending) or abs(start - expected) >= AUDIO_FRAME_SAMPLES:
            self._pending = self._pending[:0]  # a gap (or the first chunk): restart the clock
            self._pending_pts = start
        source = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk.samples.astype(np.float32).reshape(1, -1)),
            format="flt",
            layout=layout,
        )
        source.sample_rate = chunk.sample_rate
        pieces = [f.to_ndarray().reshape(-1, channels) for f in self._resampler.resample(source)]
        if pieces:
            self._pending = np.concatenate([self._pending, *pieces])


class SpeechAudioTrack(MediaStreamTrack):
    """A session's voice as paced 20 ms Opus-ready frames, silence between utterances.

    PacedAudio releases each frame ``SpeechConfig.lead`` seconds before it is due
    on the session clock, so the RTP stream is real time without bursts, and a
    barge-in stops the voice at the browser within about that lead.
    """

    kind = "audio"

    def __init__(self, speech: SessionSpeech) -> None:
        super().__init__()
        self.paced = PacedAudio(speech, silence=True)
        self._layout = "mono" if speech.channels == 1 else "stereo"
        self.frames_sent = 0

    async def recv(self) -> av.AudioFrame:
        try:
            paced = await self.paced.next_frame()
        except SpeechClosed:
            self.stop()
            raise MediaStreamError("the voice closed") from None
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(paced.samples.reshape(1, -1)), format="s16", layout=self._layout
        )
        frame.sample_rate = AUDIO_CLOCK_RATE
        frame.pts = paced.pts
        frame.time_base = AUDIO_TIME_BASE
        self.frames_sent += 1
        return frame

    def stop(self) -> None:
        self.paced.close()
        super().stop()


# Where aiortc (checked against 1.16) keeps an RTCRtpReceiver's jitter buffer; private.
_JITTER_BUFFER_ATTR = "_RTCRtpReceiver__jitter_buffer"
_AUDIO_JITTER_CAPACITY = 16  # packets, aiortc's own for audio


def set_audio_receive_buffer(receiver: RTCRtpReceiver, frames: int) -> bool:
    """Make an audio receiver play once ``frames`` frames are buffered (aiortc: 4).

    aiortc fixes the depth when it makes the receiver and offers no setting, so
    this replaces its (empty, not yet used) buffer. Where a future aiortc keeps it
    elsewhere, nothing is changed: a warning says so and aiortc's depth stays.
    """
    from aiortc.jitterbuffer import JitterBuffer

    if not isinstance(getattr(receiver, _JITTER_BUFFER_ATTR, None), JitterBuffer):
        log.warning(
            "this aiortc keeps no jitter buffer where 1.16 did: the microphone keeps "
            "aiortc's own depth (WebRTCConfig.microphone_buffer has no effect)"
        )
        return False
    setattr(
        receiver,
        _JITTER_BUFFER_ATTR,
        JitterBuffer(capacity=_AUDIO_JITTER_CAPACITY, prefetch=frames),
    )
    return True


# ---- offers ----


def _parse_offer(sdp: str, type_: str, codec: Codec) -> aiortc_sdp.SessionDescription:
    """Check an offer before aiortc sees it; ValueError names what is wrong."""
    if type_ != "offer":
        raise ValueError(f"expected an SDP offer, got type {type_!r}")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ValueError("malformed SDP: the offer is empty")
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise ValueError(f"malformed SDP: the offer is larger than {MAX_SDP_BYTES} bytes")
    if not sdp.lstrip().startswith("v=0"):
        raise ValueError("malformed SDP: an SDP offer starts with 'v=0'")
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as e:  # aiortc's parser asserts on bad lines
        raise ValueError(f"malformed SDP: cannot parse the offer ({type(e).__name__}: {e})") from e
    video = [m for m in description.media if m.kind == "video"]
    if not video:
        raise ValueError("malformed SDP: the offer has no video section (m=video)")
    for media in description.media:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise ValueError(f"malformed SDP: the {media.kind} section has no ICE ufrag/pwd")
        if media.dtls is None or not media.dtls.fingerprints:
            raise ValueError(f"malformed SDP: the {media.kind} section has no DTLS fingerprint")
    if video[0].direction not in (None, "recvonly", "sendrecv"):
        raise ValueError(
            f"the offer's video section is {video[0].direction}; it must receive (recvonly)"
        )
    offered = sorted({c.mimeType for c in video[0].rtp.codecs})
    if CODEC_MIME[codec].lower() not in {m.lower() for m in offered}:
        raise ValueError(
            f"the offer does not support {codec} video (offered: {', '.join(offered) or 'none'})"
        )
    return description


def _codec_preferences(kind: str, mime: str) -> list[Any]:
    """aiortc's capabilities for one codec (all its profiles) plus RTX retransmission."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    return [c for c in caps if c.mimeType.lower() in (mime.lower(), f"{kind}/rtx")]


# ---- peers ----


class _Peer:
    """One peer connection and the session it shows; owns its tasks."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        session: LiveMediaSession,
        config: WebRTCConfig,
        on_closed: Callable[[_Peer], None],
    ) -> None:
        self.pc, self.session, self.config = pc, session, config
        self._on_closed = on_closed
        self.video = SessionVideoTrack(session, on_end=self.close_soon)
        self.audio: SessionAudioTrack | SpeechAudioTrack | None = None
        self.video_sender: RTCRtpSender | None = None
        self.encoder: CappedVp8Encoder | CappedH264Encoder | None = None
        self._control: asyncio.Queue[str | bytes] = asyncio.Queue(CONTROL_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()  # closing has begun
        self._done = asyncio.Event()  # closing has finished

    @property
    def tag(self) -> str:
        return f"[{self.session.id}]"

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._watch(), name=f"{self.tag} watchdog"))

    def on_track(self, track: MediaStreamTrack) -> None:
        """The browser's microphone, for a session that converts audio."""
        if track.kind == "audio":
            self._tasks.append(
                asyncio.create_task(self._microphone(track), name=f"{self.tag} microphone")
            )

    async def _microphone(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
            scale = 32768.0 if pcm.dtype == np.int16 else 1.0
            try:
                self.session.feed_audio(pcm.astype(np.float32) / scale, frame.sample_rate)
            except Exception as e:  # the session cannot take audio: stop reading, keep streaming
                log.info("%s microphone ignored: %s", self.tag, e)
                return

    def on_state(self) -> None:
        state = self.pc.connectionState
        log.info("%s peer connection %s", self.tag, state)
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            self.close_soon(f"connection {state}")

    def on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CONTROL_LABEL:
            log.warning(
                "%s ignoring data channel %r (only %r)", self.tag, channel.label, CONTROL_LABEL
            )
            return

        def on_message(message: str | bytes) -> None:
            try:
                self._control.put_nowait(message)
            except asyncio.QueueFull:
                _send_json(
                    channel, {"type": "error", "code": "busy", "message": "control queue full"}
                )

        channel.on("message", on_message)
        self._tasks.append(
            asyncio.create_task(self._serve_control(channel), name=f"{self.tag} control")
        )

    async def _serve_control(self, channel: RTCDataChannel) -> None:
        """Messages in order, one at a time; the session validates and replies."""
        while True:
            message = await self._control.get()
            try:
                reply = await self.session.handle_control(message)
            except Exception as e:  # handle_control answers bad input itself; this is a bug
                log.exception("%s control message failed", self.tag)
                reply = {"type": "error", "code": "internal", "message": f"{type(e).__name__}"}
            _send_json(channel, reply)

    async def _watch(self) -> None:
        """Close a peer that never connects or stops sending RTCP receiver reports."""
        try:
            await asyncio.wait_for(self.connected.wait(), self.config.connect_timeout)
        except asyncio.TimeoutError:
            self.close_soon(f"not connected after {self.config.connect_timeout:.0f}s")
            return
        # aiortc stamps its "remote-inbound-rtp" stats (wall clock) at each receiver report;
        # every WebRTC receiver sends one about once a second, paused video or not.
        last_report = time.time()
        while True:
            await asyncio.sleep(min(1.0, self.config.peer_timeout / 4))
            assert self.video_sender is not None, "set before start()"
            stats = await self.video_sender.getStats()
            for s in stats.values():
                if s.type == "remote-inbound-rtp":
                    last_report = max(last_report, s.timestamp.timestamp())
            silent = time.time() - last_report
            if silent > self.config.peer_timeout:
                self.close_soon(f"no RTCP from the peer for {silent:.1f}s")
                return

    def close_soon(self, why: str) -> None:
        if self._closing is None and not self.closed.is_set():
            log.info("%s closing: %s", self.tag, why)
            self._closing = asyncio.create_task(
                self.close(grace=CLOSE_GRACE), name=f"{self.tag} close"
            )

    async def close(self, grace: float = 0.0) -> None:
        """Tracks, tasks, the peer connection, then the session. Concurrent callers all wait."""
        if grace and not self.closed.is_set():
            await asyncio.sleep(grace)  # a control reply may still be on its way out
        if self.closed.is_set():
            await self._done.wait()
            return
        self.closed.set()
        current = asyncio.current_task()
        for task in [*self._tasks, self._closing]:
            if task is not None and task is not current:
                task.cancel()
        self.video.stop()
        if self.audio is not None:
            self.audio.stop()
        try:
            await self.pc.close()
        finally:
            await self.session.close()
            self._done.set()
            self._on_closed(self)
        log.info("%s peer closed after %d video frames", self.tag, self.video.frames_sent)


def _send_json(channel: RTCDataChannel, message: dict[str, Any]) -> None:
    if channel.readyState == "open":
        channel.send(json.dumps(message))


class WebRTCGateway:
    """Answers WebRTC offers for live sessions and owns the resulting peer connections."""

    def __init__(self, config: WebRTCConfig | None = None) -> None:
        self.config = config or WebRTCConfig()
        self._peers: set[_Peer] = set()
        self._on_loopback = False  # the last detection fell back to loopback (log changes only)
        self.host_addresses()  # detect now, so a loopback-only host is reported at server start

    def host_addresses(self) -> tuple[str, ...] | None:
        """Addresses for the next connection's ICE host candidates; None: aioice's default.

        An explicit ``config.host_addresses`` wins. Otherwise, unless
        ``config.auto_loopback`` is off, this host's interfaces are checked (one
        getifaddrs call) and loopback is used when none has an address usable for
        ICE. Checked per offer, so a network that comes or goes later is noticed;
        each change of the outcome is logged once.
        """
        config = self.config
        if config.host_addresses is not None or not config.auto_loopback:
            return config.host_addresses
        table = ice_detect.host_interfaces()
        addresses = ice_detect.detect_host_addresses(table)
        if (addresses is not None) != self._on_loopback:
            self._on_loopback = addresses is not None
            if addresses is not None:
                log.warning(
                    "no network interface but loopback has an address usable for WebRTC (%s): "
                    "ICE host candidates on %s only, so only peers on this machine can connect; "
                    "override with WebRTCConfig(host_addresses=...) or auto_loopback=False "
                    "(`framecast serve --ice-loopback` makes loopback explicit)",
                    ice_detect.describe(table),
                    ", ".join(addresses),
                )
            else:
                log.info(
                    "a network interface usable for WebRTC appeared (%s): "
                    "ICE host candidates on every interface but loopback again",
                    ice_detect.describe(table),
                )
        return addresses

    @property
    def connections(self) -> int:
        """Peer connections open or closing."""
        return len(self._peers)

    def peer_stats(self) -> list[dict[str, Any]]:
        """Per open peer: session id, connection state, codec, current bitrate, frames sent."""
        out = []
        for peer in self._peers:
            encoder = peer.encoder
            out.append(
                {
                    "session": peer.session.id,
                    "state": peer.pc.connectionState,
                    "codec": self.config.codec if encoder is None else encoder.name,
                    "bitrate": None if encoder is None else encoder.target_bitrate,
                    "bitrate_ceiling": None if encoder is None else encoder.ceiling,
                    "video_frames_sent": peer.video.frames_sent,
                    "audio_frames_sent": 0 if peer.audio is None else peer.audio.frames_sent,
                }
            )
        return out

    async def answer(self, sdp: str, type_: str, session: LiveMediaSession) -> tuple[str, str]:
        """Answer ``sdp`` with a connection that streams ``session``; returns (sdp, type).

        Raises ValueError, naming the problem, for a malformed or unusable
        offer. On any failure the session is closed (it has no viewer); on
        success the session lives until the peer goes away or close().
        """
        try:
            description = _parse_offer(sdp, type_, self.config.codec)
            peer = await self._connect(sdp, description, session)
        except BaseException:
            await session.close()
            raise
        self._peers.add(peer)
        peer.start()
        return peer.pc.localDescription.sdp, peer.pc.localDescription.type

    async def _connect(
        self, sdp: str, description: aiortc_sdp.SessionDescription, session: LiveMediaSession
    ) -> _Peer:
        config = self.config
        host_addresses = self.host_addresses()
        pc = RTCPeerConnection(config.rtc_configuration())
        peer = _Peer(pc, session, config, on_closed=self._peers.discard)
        try:
            # Codec preferences must be set before setRemoteDescription, which negotiates.
            video: RTCRtpTransceiver = pc.addTransceiver(peer.video, direction="sendonly")
            video.setCodecPreferences(_codec_preferences("video", CODEC_MIME[config.codec]))
            if session.has_audio and any(m.kind == "audio" for m in description.media):
                peer.audio = (
                    SessionAudioTrack(session)
                    if session.speech is None
                    else SpeechAudioTrack(session.speech)
                )
                converts = session.speech is not None and session.speech.takes == "audio"
                offered = [m.direction for m in description.media if m.kind == "audio"]
                microphone = converts and offered[0] in ("sendrecv", "sendonly")
                audio = pc.addTransceiver(
                    peer.audio, direction="sendrecv" if microphone else "sendonly"
                )
                if microphone:
                    if config.microphone_buffer is not None:
                        set_audio_receive_buffer(audio.receiver, config.microphone_buffer)
                    pc.on("track", peer.on_track)
            pc.on("datachannel", peer.on_datachannel)
            pc.on("connectionstatechange", peer.on_state)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as e:  # aiortc raises ValueError, OperationError, ... on bad offers
                raise ValueError(f"unusable SDP offer: {type(e).__name__}: {e}") from e
            answer = await pc.createAnswer()
            with ice_host_addresses(host_addresses):
                await pc.setLocalDescription(answer)
            peer.video_sender = video.sender
            encoder_type = CappedVp8Encoder if config.codec == "vp8" else CappedH264Encoder
            peer.encoder = encoder_type(config.bitrate, float(session.fps))
            _install_encoder(video.sender, peer.encoder)
        except BaseException:
            await pc.close()
            raise
        log.info(
            "%s answered: %s, bitrate %s, candidates %s",
            peer.tag,
            config.codec,
            config.bitrate or "auto",
            [c.split()[4] for c in pc.localDescription.sdp.split("\n") if "a=candidate" in c][:4],
        )
        return peer

    async def close(self) -> None:
        """Close every peer connection (and so every session it streams)."""
        await asyncio.gather(*(p.close() for p in list(self._peers)), return_exceptions=True)
