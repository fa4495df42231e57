"""Helpers shared by the live-delivery tests (sessions, server, WebSocket, latency).

pytest puts this directory on sys.path (rootdir conftest, prepend import mode),
so test modules import it as ``live``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from apps.server import ServerConfig, ServerHandle, SharedStreamFactory, start_server
from streaming.session import SpeechFactory

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """Run a test's async body with a hard time bound (no pytest-asyncio here)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def serving(
    factory: SharedStreamFactory, speech: SpeechFactory | None = None, **options: Any
) -> AsyncIterator[ServerHandle]:
    """A real server on 127.0.0.1 with free ports, stopped on exit."""
    config = ServerConfig(host="127.0.0.1", port=0, **options)
    handle = await start_server(config, factory, speech)
    try:
        yield handle
    finally:
        await handle.stop()
