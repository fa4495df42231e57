"""Audio/video sync at a real client: how far a session's voice and video drift apart.

A real websockets client of a real server on 127.0.0.1 holds one session for
``--seconds``: video from the model (the embedded ``world`` by default) and the
session's voice speaking all the time (the client sends the next paragraph as
soon as the previous one has gone quiet). For every unit the client records its
arrival time and its pts in seconds. A unit's *offset* is arrival - pts: how
late a client that plays units as they arrive shows it, up to one constant for
the whole session. Per ``--window`` seconds the skew is

    median(video offsets) - median(audio offsets)

(positive: the picture is late against the sound). Both streams carry the
session clock (streaming/session.py, SessionClock), so the skew should stay
near zero whatever the time to first frame, pauses (``--pause-every``) or
stalls were. The acceptance bound of issue 14 is |skew| <= 40 ms over 5 minutes.

Usage::

    framecast bench-av-sync                          # 300 s, JSON to out/bench_av_sync.json
    framecast bench-av-sync --seconds 30 --model nano --size 64 --pause-every 10
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.env import environment, write_json

# Spoken over and over; long enough that one pass is many windows of speech.
PARAGRAPH = (
    "The harbor wakes up slowly on winter mornings. Fishing boats come back with the tide, "
    "and the gulls follow them in, calling over the water. By nine the market is open, "
    "and the smell of bread drifts down from the bakery on the hill. "
)


@dataclass(frozen=True)
class SkewWindow:
    """One window of the session: each stream's median offset and their difference."""

    start_s: float  # seconds after the first unit arrived
    video_units: int
    audio_units: int
    video_offset_ms: float
    audio_offset_ms: float
    skew_ms: float  # video - audio: > 0 when the picture is late against the sound


def skew_windows(
    video: list[tuple[float, float]], audio: list[tuple[float, float]], window: float
) -> list[SkewWindow]:
    """(arrival, pts) pairs in seconds per stream -> windows where both streams had units."""
    if not video or not audio:
        return []
    t0 = min(video[0][0], audio[0][0])
    out = []
    end = max(video[-1][0], audio[-1][0])
    start = t0
    while start < end:
        v = [a - p for a, p in video if start <= a < start + window]
        s = [a - p for a, p in audio if start <= a < start + window]
        if v and s:
            vo, ao = statistics.median(v), statistics.median(s)
            out.append(
                SkewWindow(
                    round(start - t0, 3),
                    len(v),
                    len(s),
                    round(1000 * vo, 2),
                    round(1000 * ao, 2),
                    round(1000 * (vo - ao), 2),
                )
            )
        start += window
    return out


@dataclass
class Received:
    """What the client saw: (arrival, pts seconds) per stream, and the server's stats."""

    video: list[tuple[float, float]]
    audio: list[tuple[float, float]]
    pauses: int = 0
    says: int = 0
    stats: dict[str, Any] | None = None


async def receive(
    ws_url: str,
    *,
    seconds: float,
    prompt: str,
    pause_every: float = 0.0,
    pause_s: float = 1.0,
    text: str = PARAGRAPH,
) -> Received:
    """Hold a session for ``seconds`` at a websockets client, speaking all the while."""
    from websockets.asyncio.client import connect

    from streaming.wsproto import MsgType, unpack

    got = Received([], [])
    async with connect(ws_url, compression=None, max_queue=256) as ws:
        await ws.send(json.dumps({"type": "start", "prompt": prompt}))
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        last_audio = [0.0]

        async def reader() -> None:
            async for message in ws:
                now = time.monotonic()
                if isinstance(message, str):
                    replies.put_nowait(json.loads(message))
                    continue
                header, _ = unpack(message)
                if header.msg_type == MsgType.VIDEO:
                    got.video.append((now, header.time))
                elif header.msg_type == MsgType.AUDIO:
                    got.audio.append((now, header.time))
                    last_audio[0] = now

        async def control(message: dict[str, Any]) -> dict[str, Any]:
            await ws.send(json.dumps(message))
            reply: dict[str, Any] = await asyncio.wait_for(replies.get(), 30)
            return reply

        task = asyncio.create_task(reader())
        try:
            ack = await asyncio.wait_for(replies.get(), 60)
            if ack.get("type") == "error":
                raise RuntimeError(f"the server refused the session: {ack}")
            t0 = time.monotonic()
            next_pause = t0 + pause_every if pause_every > 0 else float("inf")
            spoke_at = 0.0
            while (now := time.monotonic()) - t0 < seconds:
                # the next paragraph once the last one has been quiet for 0.3 s
                if now - max(last_audio[0], spoke_at) > 0.3 and now - spoke_at > 1.0:
                    await control({"type": "say", "text": text, "final": True})
                    spoke_at, got.says = time.monotonic(), got.says + 1
                if now >= next_pause:
                    await control({"type": "pause"})
                    await asyncio.sleep(pause_s)
                    await control({"type": "resume"})
                    got.pauses += 1
                    next_pause = time.monotonic() + pause_every
                await asyncio.sleep(0.05)
            got.stats = await control({"type": "stats"})
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return got


async def measure(a: argparse.Namespace) -> dict[str, Any]:
    from apps.server import ServerConfig, SharedStreamFactory, load_voice, start_server
    from models.resolve import ModelOptions

    size = a.size
    opts = ModelOptions(model=a.model, height=size, width=size)
    factory = SharedStreamFactory(opts)
    voice = load_voice("default" if a.voice is None else str(a.voice), a.threads)
    handle = await start_server(ServerConfig(host="127.0.0.1", port=0), factory, voice)
    try:
        got = await receive(
            handle.ws_url,
            seconds=a.seconds,
            prompt=a.prompt,
            pause_every=a.pause_every,
            pause_s=a.pause_seconds,
        )
    finally:
        await handle.stop()
        factory.close()
    windows = skew_windows(got.video, got.audio, a.window)
    skews = [w.skew_ms for w in windows]
    stats = got.stats or {}
    return {
        "windows": [asdict(w) for w in windows],
        "summary": {
            "windows": len(windows),
            "max_abs_skew_ms": max((abs(s) for s in skews), default=None),
            "first_skew_ms": skews[0] if skews else None,
            "last_skew_ms": skews[-1] if skews else None,
            "drift_ms": (skews[-1] - skews[0]) if skews else None,
            "video_units": len(got.video),
            "audio_units": len(got.audio),
            "audio_seconds": round(0.02 * len(got.audio), 2),
            "says": got.says,
            "pauses": got.pauses,
            "clock_reanchors": stats.get("clock_reanchors"),
            "video_fps": stats.get("fps"),
            "audio_underruns": (stats.get("audio") or {}).get("underruns"),
        },
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    measured = asyncio.run(measure(a))
    return {
        "benchmark": "av_sync",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "env": environment(torch.device("cpu")),
        "config": {
            "model": a.model,
            "size": a.size,
            "prompt": a.prompt,
            "seconds": a.seconds,
            "window_s": a.window,
            "pause_every_s": a.pause_every,
            "pause_s": a.pause_seconds,
            "voice": "default" if a.voice is None else str(a.voice),
            "threads": a.threads,
            "transport": "websocket, PCM16 audio, 127.0.0.1",
        },
        "wall_s": round(time.perf_counter() - t0, 1),
        **measured,
    }


def add_av_sync_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=300.0, help="how long to hold the session")
    p.add_argument("--window", type=float, default=10.0, help="seconds per skew window")
    p.add_argument("--model", default="world", help="video model (world, nano, a bundle)")
    p.add_argument("--size", type=int, default=128, help="video height and width")
    p.add_argument("--prompt", default="a red circle moving left on a black background")
    p.add_argument("--pause-every", type=float, default=60.0, help="pause/resume period; 0: none")
    p.add_argument("--pause-seconds", type=float, default=1.0, help="length of each pause")
    p.add_argument("--voice", type=Path, help="a Piper .onnx voice (default: the packaged one)")
    p.add_argument("--threads", type=int, default=1, help="the voice's ONNX Runtime threads")
    p.add_argument("--out", type=Path, default=Path("out/bench_av_sync.json"), help="JSON file")


def av_sync_command(a: argparse.Namespace) -> int:
    result = run(a)
    write_json(result, a.out)
    s = result["summary"]
    print(
        f"A/V skew over {a.seconds:.0f} s ({s['windows']} windows of {a.window:.0f} s, "
        f"{s['pauses']} pauses): max |skew| {s['max_abs_skew_ms']} ms, "
        f"first {s['first_skew_ms']} ms, last {s['last_skew_ms']} ms; "
        f"{s['audio_seconds']} s of audio, {s['video_units']} video frames; wrote {a.out}",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_av_sync_arguments(p)
    return av_sync_command(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
