"""Latency does not grow: a WebSocket client reading at half the frame rate for 30 s.

The server must drop frames (and count them in /metrics) rather than queue them:
the age of the newest frame the client gets, measured from the moment the
server released it (the header's produced_us), stays bounded and flat.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import numpy as np
import pytest
from live import run
from websockets.asyncio.client import connect

from apps.server import ServerConfig, SharedStreamFactory, start_server
from models.resolve import ModelOptions
from streaming import wsproto

FPS = 16  # the embedded defaults' frame rate; nano makes 12-frame blocks (0.75 s of video)
SECONDS = 30.0
READ_INTERVAL = 2.0 / FPS  # half the production rate
AGE_BOUND = 1.0  # seconds: under two read intervals plus one block (0.75 s) of slack


@pytest.mark.slow
def test_age_of_delivered_frames_stays_bounded_with_a_slow_reader(
    capsys: pytest.CaptureFixture[str],
) -> None:
    factory = SharedStreamFactory(ModelOptions(model="nano", height=64, width=64, fps=FPS))

    async def body() -> tuple[list[float], list[float], str]:
        server = await start_server(ServerConfig(host="127.0.0.1", port=0), factory)
        times: list[float] = []
        ages: list[float] = []
        try:
            # max_queue=1: the client library buffers one frame at most; the rest of the
            # buffering the server must avoid on its side.
            async with connect(server.ws_url, compression=None, max_queue=1, close_timeout=1) as ws:
                await ws.send(json.dumps({"type": "start", "prompt": "a red circle"}))
                assert json.loads(await ws.recv())["type"] == "ack"
                t0 = time.monotonic()
                next_read = t0
                while (now := time.monotonic()) - t0 < SECONDS:
                    await asyncio.sleep(max(0.0, next_read - now))
                    next_read += READ_INTERVAL
                    message = await ws.recv()
                    assert isinstance(message, bytes)
                    header, _ = wsproto.unpack(message)
                    times.append(time.monotonic() - t0)
                    ages.append(time.time() - header.produced_us / 1e6)
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{server.http_url}/metrics") as r:
                        metrics = await r.text()
        finally:
            await server.stop()
        return times, ages, metrics

    times, ages, metrics = run(body(), timeout=SECONDS + 20)
    t, a = np.asarray(times), np.asarray(ages)
    p50, p99 = np.percentile(a, [50, 99])
    first, last = np.median(a[t < 5]), np.median(a[t >= SECONDS - 5])
    dropped = re.search(r"^framecast_frames_dropped_total (\d+)$", metrics, re.M)
    assert dropped is not None
    with capsys.disabled():
        print(
            f"\n[latency] {len(a)} frames read in {SECONDS:.0f}s at {1 / READ_INTERVAL:.0f}/s "
            f"(stream {FPS} fps): age p50 {p50 * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, "
            f"max {a.max() * 1e3:.0f} ms; median first 5s {first * 1e3:.0f} ms, "
            f"last 5s {last * 1e3:.0f} ms; dropped {dropped[1]}"
        )
    assert len(a) >= 0.9 * SECONDS / READ_INTERVAL  # the reader kept its pace
    assert p99 < AGE_BOUND
    assert last <= first + 0.1  # flat: no backlog builds up over 30 s
    assert int(dropped[1]) >= 0.3 * SECONDS * FPS  # about half of all frames were dropped
