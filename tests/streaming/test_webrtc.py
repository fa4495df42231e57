"""The WebRTC path: its parts alone, then a real aiortc viewer against the real server.

Every peer gathers ICE candidates on 127.0.0.1 only (ice_host_addresses for the
viewer, ServerConfig(ice_loopback=True) -> WebRTCConfig(host_addresses=("127.0.0.1",))
for the server); no STUN/TURN server is configured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from apps.server import ServerConfig, ServerThread, SharedStreamFactory
from engine.media import AudioChunk
from models.resolve import ModelOptions
from streaming.session import LiveSession, SessionClosed, SessionManager
from streaming.webrtc import (
    AUDIO_FRAME_SAMPLES,
    MIN_DEFAULT_BITRATE,
    CappedH264Encoder,
    CappedVp8Encoder,
    SessionAudioTrack,
    WebRTCConfig,
    WebRTCGateway,
    default_bitrate,
    ice_host_addresses,
    rescale,
    set_audio_receive_buffer,
)

REPO = Path(__file__).resolve().parents[2]


def test_ice_host_addresses_is_scoped_to_the_block() -> None:
    with ice_host_addresses(["127.0.0.1", "::1"]):
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1"]
    # outside the block aioice's own enumeration answers (it never lists loopback)
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(True, False)


def test_config_rejects_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="IP addresses"):
        WebRTCConfig(host_addresses=("localhost",))
    with pytest.raises(ValueError, match="empty"):
        WebRTCConfig(host_addresses=())
    with pytest.raises(ValueError, match="stun: or turn:"):
        WebRTCConfig(ice_servers=("stun.example.org:3478",))
    with pytest.raises(ValueError, match="codec"):
        WebRTCConfig(codec="av1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="microphone_buffer"):
        WebRTCConfig(microphone_buffer=0)
    assert WebRTCConfig().rtc_configuration().iceServers == []  # not aiortc's Google STUN
    turn = WebRTCConfig(
        ice_servers=("turn:t.example:3478",), turn_username="u", turn_credential="p"
    )
    (server,) = turn.rtc_configuration().iceServers or []
    assert (server.urls, server.username, server.credential) == ("turn:t.example:3478", "u", "p")


def test_microphone_receiver_plays_after_the_configured_frames() -> None:
    """aiortc holds 4 audio frames before it plays; the server's microphone holds what
    WebRTCConfig.microphone_buffer says (measured: 60 ms less end to end at 1)."""
    from aiortc.jitterbuffer import JitterBuffer

    async def body() -> tuple[int, int]:
        pc = RTCPeerConnection()
        try:
            receiver = pc.addTransceiver("audio", direction="sendrecv").receiver
            before = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
            assert isinstance(before, JitterBuffer)
            assert set_audio_receive_buffer(receiver, 1)
            after = receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
            return before._prefetch, after._prefetch
        finally:
            await pc.close()

    assert asyncio.run(body()) == (4, 1)

    class NotAiortcReceiver:
        pass

    assert not set_audio_receive_buffer(NotAiortcReceiver(), 1)  # type: ignore[arg-type]


def test_bitrate_suits_the_resolution_and_has_a_per_connection_ceiling() -> None:
    assert default_bitrate(128, 128, 16) == MIN_DEFAULT_BITRATE
    assert default_bitrate(832, 480, 16) == pytest.approx(958_464)
    assert (
        default_bitrate(1280, 720, 30) > 3_000_000
    )  # above aiortc's VP8 (1.5M) and H.264 (3M) caps
    frame = av.VideoFrame.from_ndarray(np.zeros((480, 832, 3), np.uint8), format="rgb24")
    frame.pts, frame.time_base = 0, Fraction(1, 90_000)
    for kind in (CappedVp8Encoder, CappedH264Encoder):
        auto = kind(None, 16.0)
        auto.encode(frame)
        assert auto.target_bitrate == default_bitrate(832, 480, 16)
        fixed = kind(5_000_000, 16.0)
        assert fixed.target_bitrate == 5_000_000  # aiortc alone would clamp to 1.5M / 3M
        fixed.target_bitrate = 50_000_000  # a receiver estimate (REMB) cannot raise the ceiling
        assert fixed.target_bitrate == 5_000_000
        fixed.target_bitrate = 1  # ... and congestion lowers it only to a quarter
        assert fixed.target_bitrate == 1_250_000
        payloads, timestamp = fixed.encode(frame)
        assert payloads and timestamp == 0
        assert fixed.codec is not None and fixed.codec.bit_rate == 1_250_000


class ToneSource:
    """Audio as a generator would make it: uneven chunks at 22.05 kHz, pts in samples."""

    has_audio = True

    def __init__(self, sizes: list[int], rate: int = 22_050, skip: int | None = None) -> None:
        self.rate, self.chunks = rate, []
        pts = 0
        for i, n in enumerate(sizes):
            t = (pts + np.arange(n)) / rate
            wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[:, None]
            if i != skip:
                self.chunks.append(AudioChunk(wave, rate, pts, Fraction(1, rate)))
            pts += n

    async def next_audio(self) -> AudioChunk:
        if not self.chunks:
            raise SessionClosed("tone", "ran out")
        return self.chunks.pop(0)


def test_audio_track_cuts_20ms_frames_on_the_48khz_clock() -> None:
    async def main() -> list[av.AudioFrame]:
        track = SessionAudioTrack(ToneSource([1000, 333, 4410, 2205, 7000, 512, 9999]))  # type: ignore[arg-type]
        frames = []
        while True:
            try:
                frames.append(await asyncio.wait_for(track.recv(), 5))
            except Exception as e:
                assert type(e).__name__ == "MediaStreamError"
                return frames

    frames = asyncio.run(main())
    total_in = (1000 + 333 + 4410 + 2205 + 7000 + 512 + 9999) / 22_050  # seconds
    expected = int(total_in * 48_000) // AUDIO_FRAME_SAMPLES  # less the resampler's delay
    assert expected - 1 <= len(frames) <= expected
    for i, f in enumerate(frames):
        assert (f.samples, f.sample_rate, f.format.name, f.layout.name) == (
            960,
            48_000,
            "s16",
            "mono",
        )
        assert f.pts == i * AUDIO_FRAME_SAMPLES and f.time_base == Fraction(1, 48_000)
    pcm = np.concatenate([f.to_ndarray()[0] for f in frames]).astype(np.float32) / 32768
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.fft.rfftfreq(len(pcm), 1 / 48_000)[np.argmax(spectrum)] - 440) < 5


def test_audio_track_restarts_its_clock_after_a_gap() -> None:
    async def main() -> list[av.AudioFrame]:
        # the 3rd chunk (0.2 s) never arrives: frames after it keep their true time
        track = SessionAudioTrack(ToneSource([2205] * 6, skip=2))  # type: ignore[arg-type]
        out = []
        for _ in range(12):
            out.append(await asyncio.wait_for(track.recv(), 5))
        return out

    pts = [int(f.pts or 0) for f in asyncio.run(main())]
    steps: np.ndarray = np.diff(pts)
    assert set(steps[:3]) <= {960}
    jump = [p for p, s in zip(pts[1:], steps, strict=True) if s != 960]
    assert jump and jump[0] == rescale(
        3 * 2205, Fraction(1, 22_050), 48_000
    )  # 0.3 s: the 4th chunk


# ---- end to end: a real aiortc viewer against the real server, on loopback ----

FIRST_PROMPT = "a red circle moving left on a black background"
NEW_PROMPT = "a green square moving right on a gray background"
PEER_TIMEOUT = 2.0  # seconds without RTCP before the server drops a peer (default 10)


@pytest.fixture(scope="module")
def factory() -> SharedStreamFactory:
    return SharedStreamFactory(ModelOptions(model="world"))


@pytest.fixture
def server(factory: SharedStreamFactory) -> Iterator[ServerThread]:
    """The real `framecast serve` server on 127.0.0.1, ICE on loopback only, on its own thread."""
    thread = ServerThread(ServerConfig(port=0, ice_loopback=True, max_sessions=3), factory)
    handle = thread.start()
    gateway = handle.gateway
    assert isinstance(gateway, WebRTCGateway)
    assert gateway.config.host_addresses == ("127.0.0.1",)
    gateway.config = dataclasses.replace(gateway.config, peer_timeout=PEER_TIMEOUT)
    try:
        yield thread
    finally:
        thread.stop()


def offer_url(server: ServerThread) -> str:
    assert server.handle is not None
    return f"{server.handle.http_url}/offer"


def candidates(sdp: str) -> list[str]:
    return [line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")]


class Viewer:
    """A WebRTC client as a browser would be: recvonly video, a "control" data channel."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.channel = self.pc.createDataChannel("control")
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.channel.on("message", lambda m: self.replies.put_nowait(json.loads(m)))
        self._track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        self.pc.on("track", self._track.set_result)
        self.session = ""
        self.answer = ""
        self._ids = 0

    async def connect(self, url: str, start: dict[str, Any] | None = None) -> None:
        with ice_host_addresses(["127.0.0.1"]):  # the viewer gathers on loopback only, too
            await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription
        assert set(candidates(offer.sdp)) == {"127.0.0.1"}
        body = {"sdp": offer.sdp, "type": offer.type, "start": start or {}}
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as r:
            reply = await r.json()
            assert r.status == 200, reply
        self.session, self.answer = reply["session"], reply["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], reply["type"]))
        self.track = await asyncio.wait_for(self._track, 10)

    async def frames(self, seconds: float) -> list[av.VideoFrame]:
        """Every frame decoded within ``seconds`` (bounded by time, not by count)."""
        out: list[av.VideoFrame] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(self.track.recv(), left)
            except asyncio.TimeoutError:
                break
            assert isinstance(frame, av.VideoFrame)
            out.append(frame)
        return out

    async def control(self, message: dict[str, Any]) -> dict[str, Any]:
        self._ids += 1
        message = {**message, "id": self._ids}
        await wait_until(lambda: self.channel.readyState == "open", 10, "the control channel")
        self.channel.send(json.dumps(message))
        while True:
            reply = await asyncio.wait_for(self.replies.get(), 10)
            if reply.get("id") == self._ids:
                return reply

    async def close(self) -> None:
        await self.pc.close()


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def background(frames: list[av.VideoFrame]) -> np.ndarray:
    """Median RGB over frames and pixels: the background (objects cover a small part)."""
    rgb = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    return np.median(rgb.reshape(-1, 3), axis=0)


def test_stream_ten_fps_and_switch_prompt_over_the_data_channel(server: ServerThread) -> None:
    async def main() -> dict[str, Any]:
        viewer = Viewer()
        try:
            await viewer.connect(offer_url(server), {"prompt": FIRST_PROMPT, "seed": 1})
            first = await viewer.frames(1.0)  # warm-up: first frame, connection settles
            steady = await viewer.frames(5.0)
            ack = await viewer.control({"type": "switch_prompt", "prompt": NEW_PROMPT})
            await asyncio.sleep(1.0)  # the switch lands at the next block (4 frames)
            after = await viewer.frames(2.0)
            stats = await viewer.control({"type": "stats"})
            bad = await viewer.control({"type": "switch_prompt", "prompt": "x", "colour": 1})
            still = await viewer.frames(1.0)
            return dict(
                answer=viewer.answer,
                first=first,
                steady=steady,
                ack=ack,
                after=after,
                stats=stats,
                bad=bad,
                still=still,
            )
        finally:
            await viewer.close()

    r = asyncio.run(asyncio.wait_for(main(), 60))
    assert set(candidates(r["answer"])) == {"127.0.0.1"}
    assert "VP8/90000" in r["answer"] and "H264" not in r["answer"]
    steady: list[av.VideoFrame] = r["steady"]
    fps = len(steady) / 5.0
    print(f"received {fps:.1f} FPS over 5 s")
    assert fps >= 10, f"{len(steady)} frames in 5 s"
    assert (steady[0].width, steady[0].height) == (128, 128)
    # 90 kHz timestamps from the generator's 16 fps clock: increasing, multiples of 5625
    stamps = [int(f.pts or 0) for f in steady]
    steps = {(b - a) % 2**32 for a, b in itertools.pairwise(stamps)}  # RTP timestamps wrap
    assert steps <= {5625 * k for k in range(1, 9)}, steps
    assert r["ack"]["type"] == "ack" and r["ack"]["prompt"] == NEW_PROMPT, r["ack"]
    stats = r["stats"]
    assert stats["type"] == "stats" and stats["prompt"] == NEW_PROMPT, stats
    assert stats["switches"] == 1 and stats["switches_requested"] == 1, stats
    # what the viewer sees changed: black background before, the new gray one after
    before, after = background(steady), background(r["after"])
    print(f"background before {before}, after {after}")
    assert before.max() < 48 and np.abs(after - 128).max() < 48, (before, after)
    # bad control input gets an error reply naming the field; the stream goes on
    assert r["bad"]["type"] == "error" and "colour" in r["bad"]["message"], r["bad"]
    assert len(r["still"]) >= 8


def test_h264_and_a_bitrate_ceiling(factory: SharedStreamFactory) -> None:
    ceiling = 300_000  # bits/s; aiortc alone would not go under 500 kbps for H.264
    config = ServerConfig(port=0, ice_loopback=True, webrtc_codec="h264", bitrate=ceiling)

    async def main(thread: ServerThread) -> dict[str, Any]:
        assert thread.handle is not None
        viewer = Viewer()
        try:
            await viewer.connect(f"{thread.handle.http_url}/offer", {"prompt": FIRST_PROMPT})
            frames = await viewer.frames(3.0)
            gateway = thread.handle.gateway
            assert isinstance(gateway, WebRTCGateway)
            peers = await asyncio.to_thread(thread.call, gateway.peer_stats)
            return dict(answer=viewer.answer, frames=frames, peers=peers)
        finally:
            await viewer.close()

    thread = ServerThread(config, factory)
    thread.start()
    try:
        r = asyncio.run(asyncio.wait_for(main(thread), 30))
    finally:
        thread.stop()
    assert "H264/90000" in r["answer"] and "VP8" not in r["answer"]
    assert len(r["frames"]) >= 20, len(r["frames"])
    assert r["frames"][-1].to_ndarray(format="rgb24").std() > 5  # a picture, not a flat frame
    (peer,) = r["peers"]
    assert peer["codec"] == "h264" and peer["bitrate_ceiling"] == ceiling, peer
    assert ceiling // 4 <= peer["bitrate"] <= ceiling, peer
    assert peer["video_frames_sent"] >= len(r["frames"])


def test_malformed_sdp_is_a_400_and_other_sessions_keep_streaming(server: ServerThread) -> None:
    async def main() -> dict[str, Any]:
        viewer = Viewer()
        try:
            await viewer.connect(offer_url(server), {"prompt": FIRST_PROMPT})
            await viewer.frames(0.5)
            good = viewer.pc.localDescription.sdp
            no_ice = "\r\n".join(
                line for line in good.split("\r\n") if not line.startswith("a=ice-")
            )
            no_video = good.replace("m=video", "m=audio")
            cases = {
                "garbage": "hello, I am not SDP",
                "truncated": "v=0\r\nm=video abc\r\n",
                "no_ice": no_ice,
                "no_video": no_video,
                "huge": "v=0\r\n" + "a=x\r\n" * 20_000,
            }
            replies = {}
            async with aiohttp.ClientSession() as http:
                for name, sdp in cases.items():
                    body = {"sdp": sdp, "type": "offer", "start": {"prompt": "x"}}
                    async with http.post(offer_url(server), json=body) as resp:
                        replies[name] = (resp.status, await resp.json())
                async with http.post(
                    offer_url(server), json={"sdp": good, "type": "answer"}
                ) as resp:
                    replies["answer_type"] = (resp.status, await resp.json())
            after = await viewer.frames(2.0)
            active = server.call(lambda: server.handle.manager.active)  # type: ignore[union-attr]
            return dict(replies=replies, after=after, active=active)
        finally:
            await viewer.close()

    r = asyncio.run(asyncio.wait_for(main(), 60))
    expect = {
        "garbage": "SDP offer starts with 'v=0'",
        "truncated": "cannot parse the offer",
        "no_ice": "no ICE ufrag/pwd",
        "no_video": "no video section",
        "huge": "larger than",
        "answer_type": "expected an SDP offer",
    }
    for name, text in expect.items():
        status, body = r["replies"][name]
        assert status == 400, (name, status, body)
        assert body["type"] == "error" and text in body["message"], (name, body)
    assert len(r["after"]) >= 20, "the streaming session kept going"
    assert r["active"] == 1, "the rejected offers left no session behind"


VANISHING_PEER = "--vanishing-peer"


def test_a_vanished_peer_is_dropped_and_its_cache_freed(server: ServerThread) -> None:
    """A viewer process killed with SIGKILL (no DTLS/SCTP goodbye) loses its session."""
    assert server.handle is not None
    manager = server.handle.manager
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, __file__, VANISHING_PEER, offer_url(server)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    async def main() -> dict[str, Any]:
        viewer = Viewer()  # another viewer, which must not notice
        try:
            await viewer.connect(offer_url(server), {"prompt": FIRST_PROMPT})
            assert child.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
            assert line.startswith("streaming "), (
                line,
                child.stderr.read() if child.stderr else "",
            )
            session_id = line.split()[1]
            session = server.call(lambda: manager.get(session_id))
            cache_before = session.cache_bytes
            assert server.call(lambda: manager.active) == 2
            child.kill()  # SIGKILL: the peer vanishes without a word
            t0 = time.monotonic()
            watching = asyncio.create_task(viewer.frames(PEER_TIMEOUT + 3))
            await wait_until(lambda: session.closed, PEER_TIMEOUT + 3, "the session to close")
            closed_after = time.monotonic() - t0
            frames = await watching
            t1 = time.monotonic()
            await viewer.close()  # a clean goodbye: DTLS close -> the session closes at once
            await wait_until(lambda: manager.active == 0, 5, "the survivor's session to close")
            return dict(
                cache_before=cache_before,
                session=session,
                frames=frames,
                closed_after=closed_after,
                clean_close=time.monotonic() - t1,
            )
        finally:
            await viewer.close()

    try:
        r = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        child.kill()
        child.wait(10)
    session = r["session"]
    print(
        f"vanished peer closed after {r['closed_after']:.2f}s, clean close {r['clean_close']:.2f}s"
    )
    assert r["closed_after"] <= PEER_TIMEOUT + 3
    assert session.closed and session.cache_bytes == 0 < r["cache_before"]  # KV cache freed
    # the other viewer streamed throughout
    assert len(r["frames"]) >= 10 * (PEER_TIMEOUT + 3) * 0.8, len(r["frames"])
    assert r["clean_close"] < 3
    assert server.call(lambda: manager.active) == 0


async def vanishing_peer(url: str) -> None:
    """Child process: connect, take a few frames, say so, then wait to be killed."""
    viewer = Viewer()
    await viewer.connect(url, {"prompt": FIRST_PROMPT})
    await viewer.frames(0.5)
    print("streaming", viewer.session, flush=True)
    await asyncio.sleep(60)


if __name__ == "__main__" and sys.argv[1:2] == [VANISHING_PEER]:
    asyncio.run(vanishing_peer(sys.argv[2]))


class WithTone:
    """A real LiveSession plus a 440 Hz tone as its audio track (no generator makes audio yet).

    The tone is paced to real time in 10 ms chunks at 22.05 kHz, as a streaming
    audio generator would deliver it; everything else goes to the session.
    """

    has_audio = True
    speech = None  # the tone comes from next_audio, not a voice

    def __init__(self, session: LiveSession) -> None:
        self.session, self.id, self.fps = session, session.id, session.fps
        self._sent = 0
        self._t0 = 0.0

    async def next_audio(self) -> AudioChunk:
        rate, n = 22_050, 2205 // 10
        if self._sent == 0:
            self._t0 = time.monotonic()
        await asyncio.sleep(max(0.0, self._t0 + self._sent / rate - time.monotonic()))
        t = (self._sent + np.arange(n)) / rate
        chunk = AudioChunk(
            (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[:, None],
            rate,
            self._sent,
            Fraction(1, rate),
        )
        self._sent += n
        return chunk

    async def next_frame(self) -> Any:
        return await self.session.next_frame()

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        self.session.feed_audio(samples, sample_rate)

    async def handle_control(self, message: str | bytes | dict[str, Any]) -> dict[str, Any]:
        return await self.session.handle_control(message)

    async def close(self) -> None:
        await self.session.close()


def test_audio_track_over_webrtc(factory: SharedStreamFactory) -> None:
    async def main() -> tuple[str, list[av.AudioFrame], int]:
        manager = SessionManager(factory, max_sessions=1)
        gateway = WebRTCGateway(WebRTCConfig(host_addresses=("127.0.0.1",)))
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            session = WithTone(await manager.open({"prompt": FIRST_PROMPT}))
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            tracks: dict[str, MediaStreamTrack] = {}
            pc.on("track", lambda t: tracks.__setitem__(t.kind, t))
            with ice_host_addresses(["127.0.0.1"]):
                await pc.setLocalDescription(await pc.createOffer())
            sdp, type_ = await gateway.answer(pc.localDescription.sdp, "offer", session)
            await pc.setRemoteDescription(RTCSessionDescription(sdp, type_))
            await wait_until(lambda: len(tracks) == 2, 10, "audio and video tracks")
            audio: list[av.AudioFrame] = []
            deadline = time.monotonic() + 3.0
            while (left := deadline - time.monotonic()) > 0:
                try:
                    frame = await asyncio.wait_for(tracks["audio"].recv(), left)
                except asyncio.TimeoutError:
                    break
                assert isinstance(frame, av.AudioFrame)
                audio.append(frame)
            video = await asyncio.wait_for(tracks["video"].recv(), 5)  # video flows beside it
            assert isinstance(video, av.VideoFrame)
            return sdp, audio, gateway.peer_stats()[0]["audio_frames_sent"]
        finally:
            await pc.close()
            await gateway.close()
            await manager.close_all()

    sdp, audio, sent = asyncio.run(asyncio.wait_for(main(), 30))
    assert "opus/48000" in sdp
    assert {(f.sample_rate, f.samples) for f in audio} == {(48_000, 960)}  # 20 ms frames
    assert len(audio) >= 100, len(audio)  # 3 s at 50 frames/s, less connection setup
    assert sent >= len(audio)
    pcm = np.concatenate([f.to_ndarray().reshape(-1, 2)[:, 0] for f in audio[10:]]).astype(float)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    assert abs(np.fft.rfftfreq(len(pcm), 1 / 48_000)[np.argmax(spectrum)] - 440) < 5
