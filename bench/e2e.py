"""End-to-end streaming benchmark: prompt in, decoded uint8 frames out (denoise + decode).

``framecast bench`` times the denoising loop alone on random weights; this one
times what a viewer gets from a real model (by default the embedded bundle,
``--preset world``), built by models.resolve.build_stream exactly as
``framecast generate`` builds it. For each resolution (default 128x128 and
256x256), in a fresh process of its own (so that one resolution's warm caches,
allocator and threads do not flatter the next; ``--in-process`` turns this off):

- load: build_stream (weights, decoder) and the text encoder's lazy weight load,
  reported apart from the time to first frame;
- TTFF: from ``stream.start(prompt)`` (prompt encoding, cache allocation) until
  Stream.next_block has returned the first uint8 frame, the first session in the
  process; then again for a second session on the loaded model (what a server's
  next viewer waits);
- steady state: after the warm-up blocks (window fill + a few), ``--frames``
  video frames (whole blocks): video FPS, per-block wall time percentiles, and
  each block split into denoise (model forwards), decode (decoder push) and the
  rest (noise, schedule, uint8 conversion, host copy);
- real time: >= 24 video FPS and TTFF <= 0.5 s, the target at 128x128.

The split needs no engine change: the stream's generator and decoder are
wrapped in proxies (TimedGenerator, TimedDecoder) that implement the same
protocols and time each call, with perf_counter on CPU and CUDA events on GPUs
(read after the block's own host sync, so timing adds no sync).

Usage::

    framecast bench-e2e                                 # embedded default, 128 and 256
    framecast bench-e2e --preset /tmp/t/bundle --sizes 128 --frames 120
    python bench/e2e_bench.py --preset nano --height 32 --width 32 --frames 24

Progress and the configuration go to stderr, the JSON last to stdout and to
./e2e_<model>_<device>_<date>.json (--out).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from apps.args import add_model_arguments, model_options
from bench.env import environment, log, machine_busy_s, progress_every, rss_bytes, slug
from bench.stream import EXTRA_WARMUP_BLOCKS, default_out, dumps, json_command
from engine.cache import BlockPlan, CrossAttentionCache, KVCache
from engine.media import VideoFrame
from engine.metrics import BlockClock, block_stats, synchronize
from engine.protocols import CausalGenerator, GeneratorWrapper, StreamingDecoder
from engine.stream import Stream
from models.resolve import VAE_TEMPORAL, ModelOptions, build_stream, model_kind
from models.text import PrecomputedPromptEncoder, SentenceEncoder

REALTIME_FPS = 24.0  # video frames per second a viewer needs
REALTIME_TTFF = 0.5  # seconds from start() to the first frame
REALTIME_SIZE = (128, 128)  # the resolution the real-time target is set for (H, W)
DEFAULT_PROMPT = "a red ball bouncing across a green field"
DEFAULT_SIZES = ("128", "256")
MAX_BLOCKS_TO_FIRST_FRAME = 16  # a decoder that holds back more than this is broken


# ---- timing proxies ----


class SpanTimer:
    """Total time of bracketed spans of work on one device, taken once per block.

    CPU: perf_counter around each span. CUDA: a pair of events per span, read in
    take_ms() after the block's own host sync (Stream.next_block copies its frames
    to the host), so the timer adds no sync to the stream.

    Usage::

        timer = SpanTimer(device)
        with timer.span():
            decoder.push(latents)
        ms = timer.take_ms()        # spans since the last take, then a new tally
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.spans = 0  # spans closed since construction
        self._seconds = 0.0  # CPU: closed spans since the last take
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def span(self) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._seconds += time.perf_counter() - t0
        self.spans += 1

    def take_ms(self) -> float:
        """Milliseconds in the spans closed since the last take; starts a new tally."""
        if self.cuda:
            if self._events:
                # host sync: a no-op after the block's copy to the host; guards elapsed_time
                self._events[-1][1].synchronize()
            ms = sum(float(a.elapsed_time(b)) for a, b in self._events)
            self._events = []
            return ms
        ms, self._seconds = 1e3 * self._seconds, 0.0
        return ms


class TimedDecoder:
    """A StreamingDecoder that times another: the same frames and memory, plus a timer.

    Usage::

        stream.decoder = TimedDecoder(stream.decoder, SpanTimer(device))
    """

    def __init__(self, inner: StreamingDecoder, timer: SpanTimer) -> None:
        self.inner, self.timer = inner, timer
        self.frames_per_latent: int = inner.frames_per_latent
        self.upscale: int = inner.upscale

    def reset(self) -> None:
        self.inner.reset()

    def push(self, latents: Tensor) -> Tensor:
        """[B, F, C, h, w] -> [B, F * frames_per_latent, 3, H, W], timed."""
        with self.timer.span():
            return self.inner.push(latents)

    def flush(self) -> Tensor:
        with self.timer.span():
            return self.inner.flush()


class TimedGenerator(GeneratorWrapper):
    """A CausalGenerator that times another's forwards (predict_flow), nothing else changed.

    Usage::

        stream.generator = TimedGenerator(stream.generator, SpanTimer(device))  # before start()
    """

    def __init__(self, inner: CausalGenerator, timer: SpanTimer) -> None:
        super().__init__(inner)
        self.timer = timer

    def predict_flow(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        cross: CrossAttentionCache,
        cache: KVCache,
        plan: BlockPlan,
    ) -> Tensor:
        with self.timer.span():
            return self.inner.predict_flow(x, timesteps, context, cross, cache, plan)


# ---- one resolution ----


@dataclass(frozen=True)
class E2ESettings:
    """What to measure, beside the model options (picklable: sent to a fresh process)."""

    frames: int = 300  # video frames timed after the warm-up (rounded up to whole blocks)
    warmup_frames: int | None = None  # None: window fill + EXTRA_WARMUP_BLOCKS blocks
    prompt: str = DEFAULT_PROMPT
    threads: int | None = None  # torch CPU threads; None: torch's default
    decode_split: bool = True  # wrap generator and decoder in timing proxies

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {self.frames}")
        if self.warmup_frames is not None and self.warmup_frames < 0:
            raise ValueError(f"--warmup-frames must be >= 0, got {self.warmup_frames}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if not self.prompt.strip():
            raise ValueError("--prompt is empty")


def _plan(opts: ModelOptions, settings: E2ESettings) -> tuple[ModelOptions, int, int]:
    """Resolved options (room for the whole run in global mode), warm-up frames, fill blocks."""
    opts = opts.resolved()
    assert opts.block_frames is not None and opts.sinks is not None
    bf, window = opts.block_frames, opts.window or 0
    frames_per_block = bf * VAE_TEMPORAL  # planning only: blocks are counted by frames out
    fill_blocks = math.ceil((opts.sinks + window) / bf) if window else 0
    warmup = settings.warmup_frames
    if warmup is None:
        warmup = (fill_blocks + EXTRA_WARMUP_BLOCKS) * frames_per_block
    if not window:
        # global attention: the cache grows to the end of the run, so it must hold all of it
        # (+2 blocks: a decoder may trim its first frames)
        blocks = math.ceil(warmup / frames_per_block) + math.ceil(
            settings.frames / frames_per_block
        )
        opts = dataclasses.replace(opts, max_frames=(blocks + 2) * bf)
    return opts, warmup, fill_blocks


def _stream_config(stream: Stream, opts: ModelOptions) -> dict[str, Any]:
    c = stream.config
    return {
        "height": opts.height,
        "width": opts.width,
        "latent_hw": list(c.latent_hw),
        "block_frames": c.block_frames,
        "video_frames_per_block": c.block_frames * stream.decoder.frames_per_latent,
        "steps": list(c.schedule.steps),
        "shift": c.schedule.shift,
        "context_step": c.schedule.context_step,
        "forwards_per_block": len(c.schedule.steps) + 1,
        "sinks": c.cache.sink_frames,
        "window": c.cache.window_frames,  # None: global attention over max_frames
        "max_frames": None if c.cache.rolling else c.cache.max_frames,
        "positions": c.cache.positions,
        "fps": c.fps,
        "seed": c.seed,
        "dtype": opts.dtype,
        "device": opts.device,
    }


def _model_info(stream: Stream) -> dict[str, Any]:
    gen = stream.generator
    gen = gen.inner if isinstance(gen, TimedGenerator) else gen
    dec = stream.decoder
    dec = dec.inner if isinstance(dec, TimedDecoder) else dec
    dec = getattr(dec, "inner", dec)  # the embedded DenormalisingDecoder wraps a TAEHV
    params = sum(p.numel() for p in gen.parameters()) if isinstance(gen, torch.nn.Module) else None
    return {
        "generator": type(gen).__name__,
        "generator_parameters": params,
        "decoder": type(dec).__name__,
        "prompt_encoder": type(stream.encoder).__name__,
    }


class _Run:
    """Block-by-block timing of one stream: wall, denoise and decode per block."""

    def __init__(self, stream: Stream, denoise: SpanTimer, decode: SpanTimer) -> None:
        self.stream, self.denoise, self.decode = stream, denoise, decode
        self.device = stream.generator.device
        self.clock = BlockClock(machine_busy_s)
        self.denoise_ms: list[float] = []
        self.decode_ms: list[float] = []
        self.frames_out: list[int] = []
        self.last_stop = 0.0  # perf_counter when the last block's frames were ready

    def block(self) -> list[VideoFrame]:
        self.clock.start()
        frames = self.stream.next_block()  # ends in a host copy: the block's work is done
        synchronize(self.device)  # CUDA sync: already idle; keeps the clock honest regardless
        self.last_stop = self.clock.stop()
        self.denoise_ms.append(self.denoise.take_ms())
        self.decode_ms.append(self.decode.take_ms())
        self.frames_out.append(len(frames))
        return frames

    def first_frame(self, prompt: str, size: tuple[int, int]) -> dict[str, Any]:
        """start(prompt), then blocks until a frame comes out; times in seconds."""
        first = len(self.clock)
        t0 = time.perf_counter()
        self.stream.start(prompt)
        t_started = time.perf_counter()
        frames: list[VideoFrame] = []
        while not frames:
            if len(self.clock) - first >= MAX_BLOCKS_TO_FIRST_FRAME:
                raise RuntimeError(f"no frame after {MAX_BLOCKS_TO_FIRST_FRAME} blocks")
            frames = self.block()
        ttff = self.last_stop - t0
        f = frames[0].data
        assert f.dtype.name == "uint8" and f.shape == (*size, 3), f"{f.dtype=} {f.shape=}"
        reported = self.stream.stats.time_to_first_frame
        return {
            "ttff_s": ttff,
            "start_s": t_started - t0,
            "blocks_to_first_frame": len(self.clock) - first,
            "first_blocks_s": sum(self.clock.wall[first:]),
            "first_blocks_denoise_ms": sum(self.denoise_ms[first:]),
            "first_blocks_decode_ms": sum(self.decode_ms[first:]),
            "stream_stats_ttff_s": reported,
        }


def measure(opts: ModelOptions, settings: E2ESettings) -> dict[str, Any]:
    """Benchmark one resolution (opts.height x opts.width) in this process; the result dict."""
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch.cuda.is_available() is False")
    opts, warmup_frames, fill_blocks = _plan(opts, settings)
    assert opts.height is not None and opts.width is not None
    size = (opts.height, opts.width)
    tag = f"{size[0]}x{size[1]}"

    t0 = time.perf_counter()
    stream = build_stream(opts, name=f"e2e-{tag}")
    synchronize(device)
    t_built = time.perf_counter()
    if isinstance(stream.encoder, SentenceEncoder):
        _ = stream.encoder.text_dim  # loads its weights and tokenizer: load time, not TTFF
    t_loaded = time.perf_counter()
    denoise, decode = SpanTimer(device), SpanTimer(device)
    if settings.decode_split:
        stream.generator = TimedGenerator(stream.generator, denoise)
        stream.decoder = TimedDecoder(stream.decoder, decode)
    config = _stream_config(stream, opts)
    log(f"[{tag}] config: " + json.dumps(config))

    run = _Run(stream, denoise, decode)
    cold = run.first_frame(settings.prompt, size)
    log(f"[{tag}] time to first frame {cold['ttff_s'] * 1e3:.1f} ms (first session)")
    while sum(run.frames_out) < warmup_frames:
        run.block()
    warm_blocks, warm_frames = len(run.clock), sum(run.frames_out)
    log(f"[{tag}] warm-up: {warm_blocks} blocks, {warm_frames} frames")

    every = progress_every(math.ceil(settings.frames / max(1, config["video_frames_per_block"])))
    while sum(run.frames_out[warm_blocks:]) < settings.frames:
        run.block()
        done = len(run.clock) - warm_blocks
        if done % every == 0:
            ms = run.clock.recent_ms(every)
            log(f"[{tag}]   block {done}: {ms:.1f} ms/block over the last {every}")
    n = len(run.clock)
    rss_end = rss_bytes()
    cache_bytes = stream.cache_bytes
    stream.close()

    # A second session on the loaded model: what the next viewer of a server waits. Its prompt
    # differs from the first, so it is encoded afresh (precomputed embeddings have one prompt).
    second = settings.prompt
    if not isinstance(stream.encoder, PrecomputedPromptEncoder):
        second = f"{settings.prompt}, later that day"
    warm = run.first_frame(second, size)
    stream.close()

    wall = run.clock.wall[warm_blocks:n]
    frames = sum(run.frames_out[warm_blocks:n])
    seconds = sum(wall)
    fps = frames / seconds
    ttff = cold["ttff_s"]
    steady: dict[str, Any] = {
        "blocks": [warm_blocks, n],
        "frames": frames,
        "frames_requested": settings.frames,
        "seconds": seconds,
        "video_fps": fps,
        "ms_per_frame": 1e3 / fps,
        "latent_fps": fps / stream.decoder.frames_per_latent,
        **block_stats(wall),
        "cpu_mean_ms": run.clock.window(warm_blocks, n)["cpu_mean_ms"],
        "other_processes_cores_busy": run.clock.window(warm_blocks, n)[
            "other_processes_cores_busy"
        ],
    }
    split = None
    if settings.decode_split:
        den, dec = run.denoise_ms[warm_blocks:n], run.decode_ms[warm_blocks:n]
        other = [1e3 * w - a - b for w, a, b in zip(wall, den, dec, strict=True)]
        total = 1e3 * seconds
        split = {
            "denoise": block_stats([t / 1e3 for t in den]),
            "decode": block_stats([t / 1e3 for t in dec]),
            "other": block_stats([t / 1e3 for t in other]),
            "denoise_share": sum(den) / total,
            "decode_share": sum(dec) / total,
            "other_share": sum(other) / total,
            "decode_ms_per_frame": sum(dec) / frames,
        }
    meets = fps >= REALTIME_FPS and ttff <= REALTIME_TTFF
    result: dict[str, Any] = {
        "height": size[0],
        "width": size[1],
        "config": config,
        "model": _model_info(stream),
        "environment": environment(device),
        "load": {
            "build_stream_s": t_built - t0,
            "text_encoder_load_s": t_loaded - t_built,
            "total_s": t_loaded - t0,
        },
        "ttff": {**cold, "second_session": warm},
        "warmup": {"blocks": warm_blocks, "frames": warm_frames, "window_fill_blocks": fill_blocks},
        "steady_state": steady,
        "split_ms_per_block": split,
        "realtime": {
            "video_fps_target": REALTIME_FPS,
            "ttff_target_s": REALTIME_TTFF,
            "meets_fps": fps >= REALTIME_FPS,
            "meets_ttff": ttff <= REALTIME_TTFF,
            "meets": meets,
            "keeps_up_with_output_fps": fps >= config["fps"],
        },
        "memory": {
            "rss_end_bytes": rss_end,
            "stream_cache_bytes": cache_bytes,
            "cuda_max_memory_allocated_bytes": (
                torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            ),
        },
        "block_times_ms": run.clock.times_ms(),
        "block_denoise_ms": [round(t, 4) for t in run.denoise_ms] if split else None,
        "block_decode_ms": [round(t, 4) for t in run.decode_ms] if split else None,
        "block_frames_out": run.frames_out,
        "block_other_processes_cores_busy": run.clock.other_cores_busy(),
    }
    log(f"[{tag}] " + _line(result))
    return result


def _isolated(opts: ModelOptions, settings: E2ESettings) -> dict[str, Any]:
    """measure() in a fresh interpreter (spawn: no state inherited), which exits afterwards."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(measure, opts, settings).result()


# ---- driver ----


def parse_size(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '96x160' -> (96, 160) as height x width (argparse ``type``)."""
    h, sep, w = text.lower().partition("x")
    try:
        size = (int(h), int(w) if sep else int(h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is S or HxW in pixels, got {text!r}") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return size


def add_e2e_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options of ``framecast generate`` plus the benchmark's own."""
    add_model_arguments(parser)
    d = E2ESettings()
    b = parser.add_argument_group("benchmark")
    b.add_argument(
        "--sizes",
        type=parse_size,
        nargs="+",
        default=[parse_size(s) for s in DEFAULT_SIZES],
        metavar="S|HxW",
        help="resolutions in pixels (default 128 256); --height/--width give one instead",
    )
    b.add_argument(
        "--frames",
        type=int,
        default=d.frames,
        help=f"video frames timed after the warm-up, whole blocks (default {d.frames})",
    )
    b.add_argument(
        "--warmup-frames",
        type=int,
        default=None,
        help=f"video frames left out first (default: window fill + {EXTRA_WARMUP_BLOCKS} blocks)",
    )
    b.add_argument("--prompt", default=d.prompt)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    b.add_argument(
        "--no-decode-split",
        action="store_true",
        help="do not wrap the model and decoder in timing proxies (no denoise/decode split)",
    )
    b.add_argument(
        "--in-process",
        action="store_true",
        help="measure every resolution in this process (default: a fresh process each)",
    )
    b.add_argument(
        "--out", default=None, help="JSON path (default ./e2e_<model>_<device>_<date>.json)"
    )


def _sizes(args: argparse.Namespace) -> list[tuple[int, int]]:
    if args.height is None and args.width is None:
        return list(dict.fromkeys(args.sizes))
    return [(args.height or args.width, args.width or args.height)]


def run_e2e(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark described by args (see add_e2e_arguments); writes args.out (or the
    default path) and returns the result dict. Raises ValueError on a bad configuration."""
    settings = E2ESettings(
        frames=args.frames,
        warmup_frames=args.warmup_frames,
        prompt=args.prompt,
        threads=args.threads,
        decode_split=not args.no_decode_split,
    )
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    base = model_options(args)
    device = torch.device(base.device)
    env = environment(device)
    sizes = _sizes(args)
    config = {
        "model": base.model or "world",
        "weights": _weights(base),
        "sizes": [list(s) for s in sizes],
        "frames": settings.frames,
        "warmup_frames": settings.warmup_frames,
        "prompt": settings.prompt,
        "threads": env["threads"],
        "decode_split": settings.decode_split,
        "isolation": "in-process" if args.in_process else "a fresh process per resolution",
        "options": {k: _jsonable(v) for k, v in dataclasses.asdict(base).items()},
    }
    log(
        f"framecast end-to-end benchmark: {env['device_name']} ({device}), torch {env['torch']}, "
        f"python {env['python']}, {env['threads']} threads, {env['platform']}"
    )
    log("config: " + json.dumps(config))

    results = []
    for h, w in sizes:
        opts = dataclasses.replace(base, height=h, width=w)
        log(f"[{h}x{w}] " + ("in this process" if args.in_process else "in a fresh process"))
        results.append(measure(opts, settings) if args.in_process else _isolated(opts, settings))

    env["load_average_at_end"] = list(os.getloadavg())
    result: dict[str, Any] = {
        "benchmark": "framecast.e2e",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "config": config,
        "notes": NOTES,
        "results": {"acceptance": _acceptance(results), "resolutions": results},
    }
    model = Path(base.model or "world").name
    name = slug(model) if base.checkpoint is None else slug(model) + "-ckpt"
    out = Path(args.out) if args.out else default_out(name, env["device_name"], kind="e2e")
    result["output_path"] = str(out)
    log(summary(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(result) + "\n", encoding="utf-8")
    log(f"wrote {out}")
    return result


NOTES = {
    "ttff": (
        "ttff_s: perf_counter from before stream.start(prompt) (prompt encoding, cache "
        "allocation) until Stream.next_block has returned the first uint8 frame, in the first "
        "session of the process (model load excluded: see load). second_session: the same for a "
        "new session on the loaded model, with a new prompt. stream_stats_ttff_s is the "
        "stream's own counter, which starts after the prompt is encoded."
    ),
    "steady_state": (
        "blocks after the warm-up (window fill + a few blocks, or --warmup-frames), each timed "
        "around Stream.next_block (denoise, decode, uint8 conversion, host copy); video_fps = "
        "frames out / summed block wall time. Per-block percentiles are numpy's. "
        "other_processes_cores_busy: the machine's busy CPU time not spent by this process, per "
        "second of wall time; well above 0 means the timings shared the CPU."
    ),
    "split": (
        "denoise: time inside the generator's predict_flow (all steps and the commit forward), "
        "decode: inside the decoder's push, both measured by timing proxies wrapped around the "
        "stream's own objects (perf_counter on CPU, CUDA events on GPUs); other = block wall "
        "time - denoise - decode (noise, schedule arithmetic, uint8 conversion, host copy)."
    ),
    "realtime": (
        f"meets = video_fps >= {REALTIME_FPS:g} and ttff_s <= {REALTIME_TTFF:g}; the target is "
        f"set for {REALTIME_SIZE[0]}x{REALTIME_SIZE[1]} (results.acceptance), reported for "
        "every resolution"
    ),
    "isolation": (
        "each resolution runs in a fresh spawned interpreter unless --in-process, so first-"
        "session numbers include the process's one-off costs and no resolution warms another"
    ),
}


def _weights(opts: ModelOptions) -> str:
    if opts.checkpoint is not None:
        return f"loaded from {opts.checkpoint}"
    if model_kind(opts.model or "world") == "embedded":
        return f"bundle {opts.model or 'world'}"
    return f"random (seed {opts.seed}): speed only, not quality"


def _jsonable(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple):
        return list(v)
    return v


def _acceptance(results: list[dict[str, Any]]) -> dict[str, Any]:
    at = [r for r in results if (r["height"], r["width"]) == REALTIME_SIZE]
    r = at[0] if at else None
    return {
        "target": (
            f">= {REALTIME_FPS:g} video FPS and time to first frame <= {REALTIME_TTFF:g} s at "
            f"{REALTIME_SIZE[0]}x{REALTIME_SIZE[1]}"
        ),
        "video_fps": None if r is None else r["steady_state"]["video_fps"],
        "ttff_s": None if r is None else r["ttff"]["ttff_s"],
        "meets": None if r is None else r["realtime"]["meets"],
    }


def _line(r: dict[str, Any]) -> str:
    ss, t = r["steady_state"], r["ttff"]
    text = (
        f"{ss['video_fps']:.1f} video FPS ({ss['ms_per_frame']:.1f} ms/frame) over "
        f"{ss['frames']} frames; per block p50 {ss['p50_ms']:.1f} ms, p99 {ss['p99_ms']:.1f}; "
        f"TTFF {t['ttff_s'] * 1e3:.1f} ms (next session {t['second_session']['ttff_s'] * 1e3:.1f}"
        f"), load {r['load']['total_s']:.2f} s; real time: {r['realtime']['meets']}; other "
        f"processes kept {ss['other_processes_cores_busy']:.2f} cores busy"
    )
    sp = r["split_ms_per_block"]
    if sp is not None:
        text += (
            f"; per block denoise {sp['denoise']['mean_ms']:.1f} ms "
            f"({100 * sp['denoise_share']:.0f}%), decode {sp['decode']['mean_ms']:.1f} "
            f"({100 * sp['decode_share']:.0f}%), other {sp['other']['mean_ms']:.1f}"
        )
    return text


def summary(result: dict[str, Any]) -> str:
    lines = ["results:"]
    for r in result["results"]["resolutions"]:
        lines.append(f"  {r['height']}x{r['width']}: " + _line(r))
    acc = result["results"]["acceptance"]
    lines.append(f"  target ({acc['target']}): {acc['meets']}")
    return "\n".join(lines)


def e2e_command(args: argparse.Namespace) -> int:
    return json_command(run_e2e, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="framecast bench-e2e", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_e2e_arguments(parser)
    return e2e_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
