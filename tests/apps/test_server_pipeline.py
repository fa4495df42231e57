"""`framecast serve --pipeline`: a real server whose generator runs on gloo stage
processes; a killed stage ends the running session with an error within 10 s and the
next session streams again (on a fresh pipeline)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator

import pytest
from live import run, serving
from websockets.asyncio.client import connect

from apps.server import SharedStreamFactory
from engine.parallel import PipelineConfig
from models.resolve import ModelOptions


@pytest.fixture(scope="module")
def factory() -> Iterator[SharedStreamFactory]:
    opts = ModelOptions(model="tiny", height=32, width=32, fps=16)
    f = SharedStreamFactory(opts, PipelineConfig(stages=2, threads_per_stage=1, timeout_s=30))
    yield f
    f.close()


async def frames(ws: object, n: int) -> int:
    """Receive until n binary frames arrived; returns how many text messages came between."""
    got = texts = 0
    while got < n:
        msg = await ws.recv()  # type: ignore[attr-defined]
        if isinstance(msg, bytes):
            got += 1
        else:
            texts += 1
            assert json.loads(msg)["type"] != "error", msg
    return texts


def test_killed_stage_errors_the_session_and_the_next_one_streams(
    factory: SharedStreamFactory,
) -> None:
    async def body() -> tuple[str, float]:
        async with serving(factory) as server:
            async with connect(server.ws_url + "?autostart=1", compression=None) as ws:
                await frames(ws, 4)
                assert factory.pipeline is not None
                victim = factory.pipeline.processes[1]
                assert victim.pid is not None
                os.kill(victim.pid, signal.SIGKILL)
                t0 = time.monotonic()
                error = ""
                for _ in range(10_000):  # bounded by the 10 s below as well
                    msg = await asyncio.wait_for(ws.recv(), 10)
                    if isinstance(msg, str) and json.loads(msg)["type"] == "error":
                        error = json.loads(msg)["message"]
                        break
                elapsed = time.monotonic() - t0
            async with connect(server.ws_url + "?autostart=1", compression=None) as ws:
                await frames(ws, 8)
            return error, elapsed

    error, elapsed = run(body(), timeout=120)
    assert "stage 2" in error and "exited" in error
    assert elapsed < 10
    assert factory.pipeline_restarts == 1
    assert factory.pipeline is not None and factory.pipeline.healthy
