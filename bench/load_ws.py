"""WebSocket load benchmark: N concurrent sessions on loopback, per-session FPS and errors.

Starts `framecast serve`'s server in this process on 127.0.0.1 (or targets a
running one with --url), opens --sessions WebSocket clients at once, each
with its own prompt, and reads and decodes every frame for --seconds. Prints
the device, versions and configuration first, progress on stderr, and the
result JSON last on stdout; also writes it to
./ws_load_<device>_<date>.json.

python bench/load_ws.py                                 # 4 sessions, 30 s, embedded default
python bench/load_ws.py --preset nano --seconds 5       # a quick smoke run
python bench/load_ws.py --url ws://127.0.0.1:8081/      # against `framecast serve`
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

try:
    import apps  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # run from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import av
import numpy as np
import torch
import websockets
from websockets.asyncio.client import connect

from apps.server import ServerConfig, SharedStreamFactory, start_server
from bench.env import environment, log, slug
from models.resolve import ModelOptions
from streaming import wsproto

PROMPTS = (
    "a red circle moving left",
    "a blue square moving right",
    "a green triangle moving up",
    "a yellow circle moving down",
)
REPO = Path(__file__).resolve().parents[1]


async def one_client(
    index: int, url: str, seconds: float, codec: str, decode: bool
) -> dict[str, Any]:
    """One session: connect, start, read (and decode) every frame for ``seconds``."""
    prompt = PROMPTS[index % len(PROMPTS)]
    result: dict[str, Any] = {"client": index, "prompt": prompt, "errors": []}
    t_connect = time.perf_counter()
    try:
        async with connect(url, compression=None, max_queue=4, close_timeout=2) as ws:
            await ws.send(json.dumps({"type": "start", "prompt": prompt, "codec": codec}))
            ack = json.loads(await ws.recv())
            if ack.get("type") != "ack":
                result["errors"].append(ack)
                return result
            result["session"] = ack["session"]
            decoder = av.CodecContext.create("mjpeg" if codec == "jpeg" else "h264", "r")
            pts: list[int] = []
            ages: list[float] = []
            arrivals: list[float] = []
            t_first: float | None = None
            while t_first is None or time.perf_counter() - t_first < seconds:
                message = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(message, str):
                    reply = json.loads(message)
                    if reply.get("type") == "error":
                        result["errors"].append(reply)
                    continue
                header, payload = wsproto.unpack(message)
                now = time.perf_counter()
                if t_first is None:
                    t_first = now
                    result["time_to_first_frame_s"] = round(now - t_connect, 4)
                if decode:
                    decoder.decode(av.Packet(bytes(payload)))
                pts.append(header.pts)
                arrivals.append(now)
                ages.append(time.time() - header.produced_us / 1e6)
            await ws.send(json.dumps({"type": "stats"}))
            while isinstance(reply_raw := await asyncio.wait_for(ws.recv(), 10), bytes):
                pass
            server_stats = json.loads(reply_raw)
    except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as e:
        result["errors"].append(f"{type(e).__name__}: {e}")
        return result
    span = arrivals[-1] - arrivals[0]
    gaps = np.diff(pts)
    intervals = np.diff(arrivals) * 1e3
    result.update(
        frames=len(pts),
        fps=round((len(pts) - 1) / span, 3) if span > 0 else 0.0,
        pts_monotonic=bool(np.all(gaps > 0)),
        frames_skipped=int(np.sum(gaps - 1)),  # dropped by the server's latest-frame queue
        interval_ms={
            k: round(float(v), 2)
            for k, v in zip(
                ("p50", "p90", "p99"), np.percentile(intervals, [50, 90, 99]), strict=True
            )
        },
        age_ms={
            k: round(float(v) * 1e3, 2)
            for k, v in zip(("p50", "p99"), np.percentile(ages, [50, 99]), strict=True)
        },
        server={
            k: server_stats.get(k)
            for k in (
                "fps",
                "frames_generated",
                "frames_dropped",
                "time_to_first_frame",
                "frame_interval_ms",
                "clock_reanchors",
            )
        },
    )
    return result


async def scrape_metrics(http_url: str | None) -> dict[str, float]:
    """The server's aggregate counters (unlabelled samples) from /metrics."""
    if http_url is None:
        return {}
    async with aiohttp.ClientSession() as http, http.get(f"{http_url}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            out[name] = float(value)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    handle = None
    url, http_url = args.url, None
    load_s = 0.0
    if url is None:
        t0 = time.perf_counter()
        opts = ModelOptions(
            model=args.preset, height=args.height, width=args.width, device=args.device
        )
        factory = await asyncio.to_thread(SharedStreamFactory, opts)
        load_s = time.perf_counter() - t0
        handle = await start_server(
            ServerConfig(host="127.0.0.1", port=0, max_sessions=args.sessions), factory
        )
        url, http_url = handle.ws_url, handle.http_url
    log(f"load: {args.sessions} sessions x {args.seconds:.0f}s on {url} ({args.codec})")
    try:
        clients = [
            one_client(i, url, args.seconds, args.codec, not args.no_decode)
            for i in range(args.sessions)
        ]
        results = await asyncio.gather(*clients)
        metrics = await scrape_metrics(http_url)
    finally:
        if handle is not None:
            await handle.stop()
    fps = [r.get("fps", 0.0) for r in results]
    errors = sum(len(r["errors"]) for r in results)
    return {
        "model_load_s": round(load_s, 3),
        "sessions": results,
        "summary": {
            "sessions": len(results),
            "errors": errors,
            "fps_min": min(fps),
            "fps_mean": round(float(np.mean(fps)), 3),
            "fps_total": round(float(np.sum(fps)), 3),
            "pts_monotonic": all(r.get("pts_monotonic", False) for r in results),
            "frames_dropped_total": metrics.get("framecast_frames_dropped_total"),
        },
        "server_metrics": metrics,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0, help="per session, after its 1st frame")
    p.add_argument("--preset", default="world", help="model (in-process server)")
    p.add_argument("--height", type=int, help="video pixels (model default)")
    p.add_argument("--width", type=int, help="video pixels (model default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--codec", choices=["jpeg", "h264"], default="jpeg")
    p.add_argument("--no-decode", action="store_true", help="skip decoding on the client side")
    p.add_argument("--url", help="ws:// URL of a running server instead of an in-process one")
    p.add_argument("--out", type=Path, help="JSON path (default ./ws_load_<device>_<date>.json)")
    args = p.parse_args(argv)
    env = environment(torch.device(args.device))
    env["websockets"] = websockets.__version__
    env["av"] = av.__version__
    env["aiohttp"] = aiohttp.__version__
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    log(
        f"device: {env['device_name']} ({env['cpu_count']} CPUs), torch {env['torch']}, "
        f"websockets {env['websockets']}, av {env['av']}"
    )
    log(f"config: {config}")
    result = {"benchmark": "ws_load", "env": env, "config": config, **asyncio.run(run(args))}
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    out = args.out or Path.cwd() / f"ws_load_{slug(env['device_name'])}_{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    s = result["summary"]
    log(
        f"fps per session: {[r.get('fps') for r in result['sessions']]}; errors {s['errors']}; "
        f"dropped {s['frames_dropped_total']}; wrote {out}"
    )
    print(json.dumps(result, indent=1))
    return 0 if s["errors"] == 0 and s["pts_monotonic"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
