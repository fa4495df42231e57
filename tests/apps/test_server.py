"""`framecast serve` on 127.0.0.1: /metrics, /config, the page, POST /offer errors,
recording, the threaded handle, and the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from live import run, serving
from websockets.asyncio.client import connect
from websockets.sync.client import connect as sync_connect

from apps.server import ServerConfig, ServerThread, SharedStreamFactory
from models.resolve import ModelOptions

FPS = 48
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def factory() -> SharedStreamFactory:
    return SharedStreamFactory(ModelOptions(model="nano", height=64, width=64, fps=FPS))


# ---- Prometheus text format, checked line by line ----

_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)?\}})?"
    r" (?P<value>\S+)$"
)
_TYPES = {"counter", "gauge", "summary", "histogram", "untyped"}


def parse_prometheus(text: str) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    """family -> (type, samples). Fails on anything the text format (0.0.4) does not allow."""
    families: dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]] = {}
    current: str | None = None
    assert text.endswith("\n"), "the exposition must end with a newline"
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in _TYPES and name not in families, line
            families[name], current = (kind, []), name
            continue
        assert line and not line.startswith("#"), f"unexpected line {line!r}"
        m = _SAMPLE.match(line)
        assert m is not None, f"not a sample line: {line!r}"
        name = m["name"]
        family = next(
            (
                name.removesuffix(s)
                for s in ("_sum", "_count", "_bucket", "")
                if name.endswith(s) and name.removesuffix(s) == current
            ),
            None,
        )
        assert family is not None, f"{name} is not in the group of {current} (samples interleaved)"
        labels = dict(
            re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m["labels"] or "")
        )
        families[family][1].append((name, labels, float(m["value"])))
    return families


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    family = families[name][1]
    return next(
        v for n, ls, v in family if n == name and all(ls.get(k) == x for k, x in labels.items())
    )


def test_metrics_are_prometheus_text_and_count_dropped_frames(factory: SharedStreamFactory) -> None:
    async def body() -> None:
        async with (
            serving(factory) as server,
            connect(server.ws_url, compression=None, max_queue=1, close_timeout=1) as ws,
            aiohttp.ClientSession() as http,
        ):
            await ws.send(json.dumps({"type": "start"}))
            await ws.recv()
            for _ in range(FPS // 3):  # a client reading at a third of the frame rate
                await asyncio.sleep(3 / FPS)
                await ws.recv()
            async with http.get(f"{server.http_url}/metrics") as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await r.text()
        families = parse_prometheus(text)
        (session,) = {ls["session"] for _, ls, _ in families["framecast_session_fps"][1]}
        assert families["framecast_frames_dropped_total"][0] == "counter"
        assert value(families, "framecast_frames_dropped_total") > 0
        assert value(families, "framecast_session_frames_dropped_total", session=session) > 0
        assert value(families, "framecast_sessions_active") == 1
        assert value(families, "framecast_sessions_opened_total") == 1
        assert value(families, "framecast_session_fps", session=session) > FPS / 2
        assert value(families, "framecast_fps") > FPS / 2
        assert 0 < value(families, "framecast_time_to_first_frame_seconds", quantile="0.5") < 10
        assert families["framecast_session_frame_interval_seconds"][0] == "summary"
        p50 = value(
            families, "framecast_session_frame_interval_seconds", session=session, quantile="0.5"
        )
        assert p50 == pytest.approx(1 / FPS, rel=0.3)
        assert value(families, "framecast_session_cache_bytes", session=session) > 0
        assert value(families, "framecast_ws_connections") == 1
        with contextlib.suppress(ImportError):  # the reference parser, where installed
            from prometheus_client.parser import text_string_to_metric_families

            assert len(list(text_string_to_metric_families(text))) == len(families)

    run(body())


def test_config_page_and_static_files(factory: SharedStreamFactory, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>test page</title>")
    (tmp_path / "app.js").write_text("console.log('hi')")

    async def body() -> None:
        async with serving(factory, web_root=tmp_path) as server, aiohttp.ClientSession() as http:
            async with http.get(f"{server.http_url}/config") as r:
                config = await r.json()
            assert config["ws_url"] == server.ws_url and config["ws_port"] == server.ws_port
            assert config["version"] == 1 and config["frame_version"] == 1
            assert config["token_required"] is False and config["max_sessions"] == 4
            assert config["defaults"] == {
                "prompt": "a red circle moving left",
                "seed": 0,
                "steps": [1000, 750, 500, 250],
                "width": 64,
                "height": 64,
            }
            async with http.get(f"{server.http_url}/") as r:
                assert r.status == 200 and "test page" in await r.text()
            async with http.get(f"{server.http_url}/app.js") as r:
                assert r.status == 200 and "javascript" in r.headers["Content-Type"]
            for path in ("/../../pyproject.toml", "/%2e%2e/%2e%2e/pyproject.toml", "/nope.js"):
                async with http.get(f"{server.http_url}{path}") as r:
                    assert r.status == 404, path
        async with serving(factory, web_root=tmp_path / "missing") as server:
            async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/") as r:
                assert r.status == 200 and "not installed" in await r.text()

    run(body())


def test_offer_rejects_bad_requests_clearly(factory: SharedStreamFactory) -> None:
    async def body() -> None:
        async with (
            serving(factory, max_sessions=1, token="t0k") as server,
            aiohttp.ClientSession() as http,
        ):
            assert server.gateway is not None, "streaming.webrtc should be importable"
            url, auth = f"{server.http_url}/offer", {"Authorization": "Bearer t0k"}

            async def post(body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
                async with http.post(url, json=body, headers=headers) as r:
                    return r.status, await r.json()

            status, reply = await post({"sdp": "v=0", "type": "offer"})
            assert status == 401 and reply["code"] == "unauthorized"
            async with http.post(url, data="sdp", headers=auth) as r:
                assert r.status == 415
            async with http.post(
                url, data="{nope", headers={**auth, "Content-Type": "application/json"}
            ) as r:
                assert r.status == 400 and (await r.json())["code"] == "bad_json"
            status, reply = await post({"type": "offer"}, auth)
            assert status == 400 and reply["code"] == "bad_value"
            status, reply = await post({"sdp": "x", "type": "offer", "foo": 1}, auth)
            assert status == 400 and reply["code"] == "unknown_field"
            bad_start = {"sdp": "x", "type": "offer", "start": {"steps": 0}}
            status, reply = await post(bad_start, auth)
            assert status == 400 and reply["code"] == "bad_value" and "steps" in reply["message"]
            status, reply = await post({"sdp": "not an SDP offer", "type": "offer"}, auth)
            assert status == 400 and reply["code"] == "bad_offer" and reply["message"]
            assert server.manager.active == 0  # the session opened for it was closed
            # with the one session slot taken, an offer gets "busy" (503)
            async with connect(server.ws_url + "?token=t0k&autostart=1", compression=None) as ws:
                await ws.recv()
                status, reply = await post({"sdp": "v=0", "type": "offer"}, {**auth})
                assert status == 503 and reply["code"] == "busy"

    run(body())


def test_record_writes_the_first_session(factory: SharedStreamFactory, tmp_path: Path) -> None:
    out = tmp_path / "first.mp4"

    async def body() -> tuple[int, int]:
        async with serving(factory, record=out) as server:
            async with connect(server.ws_url + "?autostart=1", compression=None) as ws:
                await ws.recv()
                (session,) = server.manager.sessions()
                for _ in range(FPS):
                    await ws.recv()
            await session.wait_closed()
            assert server.recorder is not None
            await server.recorder.wait()
            return server.recorder.frames, session.stats()["frames_published"]

    recorded, published = run(body())
    with av.open(str(out)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert recorded == published == decoded >= FPS


def test_server_thread_for_sync_callers(factory: SharedStreamFactory) -> None:
    with ServerThread(ServerConfig(port=0), factory) as handle:
        server = handle
        with sync_connect(server.ws_url, compression=None) as ws:
            ws.send(json.dumps({"type": "start", "prompt": "sync"}))
            assert json.loads(ws.recv(timeout=10))["prompt"] == "sync"
            assert isinstance(ws.recv(timeout=10), bytes)
    assert server.manager.active == 0  # stop() closed everything


def test_framecast_serve_command(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "apps.cli", "serve", "--preset", "nano", "--port", "0"]
    cmd += ["--height", "64", "--width", "64", "--max-sessions", "2"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while "framecast serving" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        m = re.search(r"(http://127\.0\.0\.1:\d+)/ \(WebSocket (ws://127\.0\.0\.1:\d+/)\)", line)
        assert m is not None, line

        async def probe() -> dict[str, Any]:
            async with aiohttp.ClientSession() as http, http.get(f"{m[1]}/config") as r:
                return dict(await r.json())

        config = run(probe())
        assert config["ws_url"] == m[2] and config["max_sessions"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_offer_with_a_real_aiortc_peer_streams_and_cleans_up(factory: SharedStreamFactory) -> None:
    """POST /offer end to end: a real aiortc peer on loopback gets video and control replies;
    when it hangs up, its session is closed and its cache freed."""
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

    from streaming.webrtc import ice_host_addresses

    async def body() -> None:
        async with serving(factory, ice_loopback=True) as server:
            pc = RTCPeerConnection()
            pc.addTransceiver("video", direction="recvonly")
            channel = pc.createDataChannel("control")
            replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            channel.on("message", lambda m: replies.put_nowait(json.loads(m)))
            tracks: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
            pc.on("track", tracks.put_nowait)
            with ice_host_addresses(["127.0.0.1"]):
                await pc.setLocalDescription(await pc.createOffer())
            offer = {"sdp": pc.localDescription.sdp, "type": "offer", "start": {"prompt": "rtc"}}
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{server.http_url}/offer", json=offer) as r:
                    assert r.status == 200
                    answer = await r.json()
            session = server.manager.get(answer["session"])
            assert session is not None and session.cache_bytes > 0
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            track = await tracks.get()
            frames = [await track.recv() for _ in range(10)]
            assert all(isinstance(f, av.VideoFrame) for f in frames)
            pts = [f.pts for f in frames if isinstance(f, av.VideoFrame) and f.pts is not None]
            assert len(pts) == 10 and pts[-1] > pts[0]
            assert isinstance(frames[0], av.VideoFrame) and frames[0].width == 64
            while channel.readyState != "open":
                await asyncio.sleep(0.05)
            channel.send(json.dumps({"type": "stats", "id": "rtc"}))
            stats = await replies.get()
            assert stats["type"] == "stats" and stats["id"] == "rtc" and stats["prompt"] == "rtc"
            await pc.close()
            await asyncio.wait_for(session.wait_closed(), 20)
            assert session.cache_bytes == 0 and server.manager.active == 0

    run(body(), timeout=45)
