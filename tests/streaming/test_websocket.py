"""The WebSocket transport end to end: a real server on 127.0.0.1, real websockets clients,
frames decoded with PyAV; plus the binary frame format on its own."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import av
import pytest
from live import run, serving
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.server import SharedStreamFactory
from models.resolve import ModelOptions
from streaming import wsproto
from streaming.websocket import WebSocketConfig
from streaming.wsproto import FrameError, MediaHeader, MsgType, PayloadKind

FPS = 48


@pytest.fixture(scope="module")
def factory() -> SharedStreamFactory:
    return SharedStreamFactory(ModelOptions(model="nano", height=64, width=64, fps=FPS))


class Client:
    """A websockets client that sorts what arrives into media units and JSON replies."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[MediaHeader, bytes]] = []
        self.replies: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(message) if isinstance(message, dict) else message)

    async def _recv_one(self) -> None:
        message = await self.ws.recv()
        if isinstance(message, str):
            self.replies.append(json.loads(message))
        else:
            header, payload = wsproto.unpack(message)
            self.frames.append((header, bytes(payload)))

    async def reply(self) -> dict[str, Any]:
        """The next JSON reply (media units that arrive first are kept)."""
        seen = len(self.replies)
        while len(self.replies) == seen:
            await self._recv_one()
        return self.replies.pop(seen)

    async def media(self, n: int) -> list[tuple[MediaHeader, bytes]]:
        """The next n media units."""
        start = len(self.frames)
        while len(self.frames) < start + n:
            await self._recv_one()
        return self.frames[start : start + n]


@contextlib.asynccontextmanager
async def client(url: str, start: dict[str, Any] | None = None, **kw: Any) -> AsyncIterator[Client]:
    async with connect(url, compression=None, max_queue=4, open_timeout=10, **kw) as ws:
        c = Client(ws)
        if start is not None:
            await c.send({"type": "start", **start})
        yield c


def strictly_increasing(values: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


# ---- the binary format ----


def test_frame_header_roundtrip() -> None:
    header = MediaHeader(
        msg_type=MsgType.VIDEO,
        kind=PayloadKind.H264,
        pts=-3,
        time_base=Fraction(1, 90000),
        produced_us=1_700_000_000_123_456,
        payload_len=5,
        flags=wsproto.Flags.KEY | wsproto.Flags.DISCONTINUITY,
    )
    message = wsproto.pack(header, b"hello")
    assert len(message) == 44 + 5 and message[:4] == b"FCST" and message[4] == 1
    got, payload = wsproto.unpack(message)
    assert got == header and bytes(payload) == b"hello"
    audio = MediaHeader(
        MsgType.AUDIO, PayloadKind.PCM16, 960, Fraction(1, 48000), 0, 4, 1, wsproto.Flags.NONE, 2
    )
    assert wsproto.unpack(wsproto.pack(audio, b"\0\0\0\0"))[0] == audio
    # a later minor version may append header fields: readers skip to header_len
    longer = bytearray(message[:44]) + b"XXXX" + b"hello"
    longer[8:10] = (48).to_bytes(2, "big")
    assert bytes(wsproto.unpack(bytes(longer))[1]) == b"hello"


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda m: m[:20], "truncated header"),
        (lambda m: m[:-1], "payload length mismatch"),
        (lambda m: m + b"!", "payload length mismatch"),
        (lambda m: b"RIFF" + m[4:], "bad magic"),
        (lambda m: m[:4] + b"\x02" + m[5:], "unsupported frame version 2"),
        (lambda m: m[:5] + b"\x09" + m[6:], "unknown message type"),
        (lambda m: m[:6] + b"\x09" + m[7:], "payload kind"),
        (lambda m: m[:8] + b"\x00\x10" + m[10:], "header_len 16"),
        (lambda m: m[:24] + b"\0\0\0\0" + m[28:], "invalid time base"),
    ],
)
def test_bad_frames_are_rejected_clearly(mutate: Any, error: str) -> None:
    header = MediaHeader(MsgType.VIDEO, PayloadKind.JPEG, 1, Fraction(1, 16), 0, 3)
    with pytest.raises(FrameError, match=error):
        wsproto.unpack(mutate(wsproto.pack(header, b"abc")))


def test_pack_checks_its_fields() -> None:
    with pytest.raises(FrameError, match="payload_len"):
        wsproto.pack(MediaHeader(MsgType.VIDEO, PayloadKind.JPEG, 0, Fraction(1, 16), 0, 9), b"a")
    with pytest.raises(FrameError, match="out of range"):
        wsproto.pack(MediaHeader(MsgType.VIDEO, PayloadKind.JPEG, 0, Fraction(1, 16), -1, 1), b"a")


# ---- end to end ----


def test_jpeg_frames_decode_with_increasing_pts(factory: SharedStreamFactory) -> None:
    async def body() -> None:
        async with serving(factory) as server, client(server.ws_url, {"prompt": "a cat"}) as c:
            ack = await c.reply()
            assert ack["type"] == "ack" and ack["for"] == "start" and ack["codec"] == "jpeg"
            assert (ack["width"], ack["height"], ack["fps"]) == (64, 64, FPS)
            assert server.manager.get(ack["session"]) is not None
            units = await c.media(FPS)  # one second
            decoder = av.CodecContext.create("mjpeg", "r")
            for header, payload in units:
                (image,) = decoder.decode(av.Packet(payload))
                assert image.to_ndarray(format="rgb24").shape == (64, 64, 3)
                assert header.kind == PayloadKind.JPEG and header.flags & wsproto.Flags.KEY
                assert header.time_base == Fraction(1, FPS) and header.stream_id == 0
                assert abs(header.produced_us / 1e6 - time.time()) < 10
            assert strictly_increasing([h.pts for h, _ in units])

    run(body())


def test_h264_access_units_decode(factory: SharedStreamFactory) -> None:
    async def body() -> None:
        async with serving(factory) as server, client(server.ws_url, {"codec": "h264"}) as c:
            assert (await c.reply())["codec"] == "h264"
            units = await c.media(24)
            decoder = av.CodecContext.create("h264", "r")
            decoded = 0
            for header, payload in units:
                assert header.kind == PayloadKind.H264
                decoded += len(decoder.decode(av.Packet(payload)))
            assert units[0][0].flags & wsproto.Flags.KEY and payload.startswith(b"\0\0\0\1")
            assert decoded == len(units)  # zerolatency, no B-frames: one picture per unit
            assert strictly_increasing([h.pts for h, _ in units])

    run(body())


def test_bad_control_messages_get_errors_and_every_stream_goes_on(
    factory: SharedStreamFactory,
) -> None:
    async def body() -> None:
        async with (
            serving(factory) as server,
            client(server.ws_url, {"prompt": "a"}) as a,
            client(server.ws_url, {"prompt": "b"}) as b,
        ):
            await a.reply()
            await b.reply()
            cases: list[tuple[str | bytes | dict[str, Any], str]] = [
                ("{not json", "bad_json"),
                ({"type": "stats", "colour": "red"}, "unknown_field"),
                ('{"type": "switch_prompt", "prompt": "' + "x" * 100_000 + '"}', "too_large"),
                (b"\x00binary", "bad_message"),
                ({"type": "teleport"}, "unknown_type"),
                ({"type": "switch_prompt", "prompt": ""}, "bad_value"),
            ]
            for message, code in cases:
                before = (await a.media(1))[0][0].pts
                await a.send(message)
                reply = await a.reply()
                assert reply["type"] == "error" and reply["code"] == code, reply
                assert len(reply["message"]) > 10
                after = (await a.media(3))[-1][0].pts
                assert after > before  # A's stream carried on
            b_pts = [h.pts for h, _ in await b.media(FPS // 2)]
            assert strictly_increasing(b_pts)
            # Over max_message_bytes the websockets library closes A's connection (1009)...
            await a.send("y" * (2**20 + 1))
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await a.media(1)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
            # ...and only A's: B streams on, and A's session was closed.
            more = [h.pts for h, _ in await b.media(FPS // 2)]
            assert more[0] > b_pts[-1] and strictly_increasing(more)
            for _ in range(50):
                if server.manager.active == 1:
                    break
                await asyncio.sleep(0.05)
            assert server.manager.active == 1

    run(body())


def test_a_vanished_client_has_its_session_closed_and_memory_freed(
    factory: SharedStreamFactory,
) -> None:
    async def body() -> None:
        async with serving(factory) as server:
            async with client(server.ws_url, {}) as c:
                await c.reply()
                await c.media(5)
                (session,) = server.manager.sessions()
                assert session.cache_bytes > 0
                c.ws.transport.abort()  # no close handshake: the client just disappears
                await asyncio.wait_for(session.wait_closed(), 10)
            assert session.cache_bytes == 0 and server.manager.active == 0
            metrics = server.manager.metrics_text()
            assert re.search(r"^framecast_cache_bytes 0$", metrics, re.M)
            assert re.search(r"^framecast_sessions_closed_total 1$", metrics, re.M)

    run(body())


def test_beyond_max_sessions_the_reply_is_busy(factory: SharedStreamFactory) -> None:
    async def body() -> None:
        async with (
            serving(factory, max_sessions=1) as server,
            client(server.ws_url, {}) as first,
        ):
            await first.reply()
            async with client(server.ws_url, {}) as second:
                reply = await second.reply()
                assert reply["type"] == "error" and reply["code"] == "busy"
                assert "1 concurrent" in reply["message"]
                with pytest.raises(ConnectionClosed) as info:
                    await second.media(1)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1013
            await first.media(3)  # the first session is untouched
            assert server.manager.rejected_total == 1

    run(body())


def test_session_control_over_the_websocket(factory: SharedStreamFactory) -> None:
    async def body() -> None:
        async with serving(factory) as server, client(server.ws_url) as c:
            await c.send({"type": "stats", "id": "early"})
            early = await c.reply()
            assert early["code"] == "not_started" and early["id"] == "early"
            await c.send({"type": "start", "width": 100, "height": 64})
            bad = await c.reply()  # the model wants multiples of 16: say so, and wait for more
            assert bad["code"] == "bad_value" and "multiple" in bad["message"]
            assert server.manager.active == 0
            await c.send({"type": "start", "id": 1})
            assert (await c.reply())["id"] == 1
            await c.media(3)
            await c.send({"type": "switch_prompt", "prompt": "a green triangle", "id": 2})
            assert (await c.reply())["for"] == "switch_prompt"
            await c.media(3 * 12)  # applied at a block boundary: 12-frame blocks
            await c.send({"type": "pause"})
            assert (await c.reply())["state"] == "paused"
            await asyncio.sleep(0.2)  # drain what was in flight
            c.frames.clear()
            await c.send({"type": "stats", "id": 3})
            stats = await c.reply()
            assert stats["type"] == "stats" and stats["id"] == 3 and stats["state"] == "paused"
            assert stats["switches"] == 1 and stats["prompt"] == "a green triangle"
            assert len(c.frames) == 0  # paused: nothing arrived
            await c.send({"type": "resume"})
            await c.media(3)
            (session,) = server.manager.sessions()
            await c.send({"type": "stop"})
            assert (await c.reply())["for"] == "stop"
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await c.media(1)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1000
            assert session.closed and session.cache_bytes == 0

    run(body())


def test_autostart_and_start_timeout(factory: SharedStreamFactory) -> None:
    async def body() -> None:
        ws = WebSocketConfig(start_timeout=0.3)
        async with serving(factory, ws=ws) as server:
            async with client(server.ws_url + "?autostart=1") as c:
                ack = await c.reply()
                assert ack["for"] == "start" and ack["prompt"] == "a red circle moving left"
            async with client(server.ws_url) as c:  # says nothing: defaults after the timeout
                t0 = time.perf_counter()
                assert (await c.reply())["for"] == "start"
                assert time.perf_counter() - t0 >= 0.25
                await c.media(2)

    run(body())


def test_token_and_origin_are_checked(factory: SharedStreamFactory) -> None:
    async def body() -> None:
        async with serving(factory, token="s3cret") as server:
            with pytest.raises(InvalidStatus) as info:
                async with client(server.ws_url, {}):
                    pass
            assert info.value.response.status_code == 401
            with pytest.raises(InvalidStatus):
                async with client(server.ws_url + "?token=wrong", {}):
                    pass
            headers = {"Authorization": "Bearer s3cret"}
            async with client(server.ws_url, {}, additional_headers=headers) as c:
                assert (await c.reply())["for"] == "start"
            page = f"http://127.0.0.1:{server.http_port}"
            async with client(server.ws_url + "?token=s3cret", {}, origin=page) as c:
                assert (await c.reply())["for"] == "start"
            with pytest.raises(InvalidStatus) as info:
                async with client(
                    server.ws_url + "?token=s3cret", {}, origin="http://evil.example"
                ):
                    pass
            assert info.value.response.status_code == 403

    run(body())
