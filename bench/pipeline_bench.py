"""Pipeline parallelism on this machine: measured against the cost model's prediction.

For the model of ``--preset`` (default the embedded ``world`` bundle) at
``--size`` (default 128x128), for each denoiser (plain, stream_batch) and number
of denoising steps (1, 2, 4), one stream is timed:

- single: in this process, torch threads = 1, no pipeline (the baseline);
- pipeline S = 1, 2, 3: engine.parallel.Pipeline with S stage processes of one
  thread each, pinned to cores (stage s on core (s - 1) % cores), and the loop
  in this process (rank 0).

Per run: blocks/s, latent and video frames/s (4 video frames per latent frame,
no decoding), time to first block (from loop construction: cache allocation
and the prompt's first encoding included), per-block wall times, per-stage
utilisation over the timed blocks (Pipeline.stage_stats()), the speedup over
the single-process run of the same denoiser and steps, and next to each the
prediction of engine.parallel.cost from this machine's measured block times,
loop overhead and gloo transfer times. Pipelines are started once and kept,
and each configuration runs single, S = 1, 2, 3 back to back, so the runs being
compared are seconds apart.

Then predictions only, no streams, for ``--wan-presets`` (wan2.1-1.3b,
wan2.1-14b) at 832x480 (latents 60x104, 3-frame blocks, 3 sinks + 12 window
frames, 4 steps) for ``--wan-stages`` (1, 2, 4), from one transformer block
timed on this device (float32, one thread). A block is timed at full size only
when a small probe says that fits ``--wan-budget-s``; otherwise at a reduced
token count and scaled up by the FLOP ratio, which the output says.

Usage::

    framecast bench-pipeline                              # world, 128x128: the default run
    framecast bench-pipeline --size 256 --no-wan
    python bench/pipeline_bench.py --preset nano --size 32 --blocks 10 --steps 1 2 \\
        --stages 1 2 --wan-presets                        # seconds: a smoke run

Progress and the configuration go to stderr; the JSON last to stdout and to
./pipeline_<model>_<device>_<date>.json (--out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import apps  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # run from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.env import environment, log
from bench.stream import default_out, dumps, json_command
from engine.cache import CacheConfig
from engine.denoisers import Denoiser, make_loop
from engine.loop import LoopConfig, SeededNoise
from engine.metrics import block_stats
from engine.parallel import Pipeline, PipelineConfig, PipelineError
from engine.parallel.cost import (
    Prediction,
    StageTimes,
    TransferTimes,
    measure_block_times,
    measure_driver_time,
    measure_transfer,
    predict,
)
from engine.schedule import FlowSchedule
from models.resolve import (
    VAE_TEMPORAL,
    GeneratorSpec,
    ModelOptions,
    build_generator,
    model_kind,
    resolve,
)
from models.wan.config import PRESETS, WanConfig
from models.wan.loader import build_model

BENCH_DENOISERS: tuple[Denoiser, ...] = ("plain", "stream_batch")
EXTRA_WARMUP_BLOCKS = 3  # after the window has filled (and a stream batch's pipe)
TRANSFER_SIZES = (256, 4096, 65_536, 1 << 20, 8 << 20, 32 << 20)  # bytes
WAN_HW = (60, 104)  # latents of 832x480 video
WAN_BLOCK_FRAMES, WAN_SINKS, WAN_WINDOW, WAN_STEPS = 3, 3, 12, 4
WAN_SCALES = (1, 2, 4, 8)  # latent height and width divided by these, largest first


# ---- arguments ----


def add_pipeline_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's options (also ``framecast bench-pipeline``)."""
    m = p.add_argument_group("model (measured streams)")
    m.add_argument("--preset", default="world", help="world (default), or tiny, nano, ...")
    m.add_argument("--size", type=int, default=128, help="video height = width, pixels")
    m.add_argument("--seed", type=int, default=0, help="weights (random presets), prompt, noise")
    r = p.add_argument_group("runs")
    r.add_argument("--denoisers", nargs="+", choices=BENCH_DENOISERS, default=BENCH_DENOISERS)
    r.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4], help="denoising steps")
    r.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3], help="pipeline stages")
    r.add_argument("--split", choices=["balanced", "even"], default="balanced")
    r.add_argument("--blocks", type=int, default=60, help="timed blocks per run (at most)")
    r.add_argument("--max-seconds", type=float, default=30.0, help="timed seconds per run")
    r.add_argument(
        "--warmup-blocks", type=int, help=f"default: window fill + steps + {EXTRA_WARMUP_BLOCKS}"
    )
    r.add_argument(
        "--pin-cores",
        action="store_true",
        help="pin stage s to core (s-1) %% cores (the driver floats; measured slower here)",
    )
    r.add_argument("--no-single", action="store_true", help="skip the single-process runs")
    c = p.add_argument_group("cost model")
    c.add_argument("--repeats", type=int, default=20, help="rounds of block timing")
    c.add_argument("--transfer-repeats", type=int, default=20, help="ping-pongs per size")
    w = p.add_argument_group("Wan predictions")
    w.add_argument(
        "--wan-presets", nargs="*", choices=sorted(PRESETS), default=["wan2.1-1.3b", "wan2.1-14b"]
    )
    w.add_argument("--wan-stages", type=int, nargs="+", default=[1, 2, 4])
    w.add_argument(
        "--wan-budget-s", type=float, default=60.0, help="time one full-size block only if under"
    )
    w.add_argument("--no-wan", action="store_true", help="skip the Wan predictions")
    p.add_argument(
        "--out",
        type=Path,
        help="JSON path (default ./pipeline_<model>_<device>_<date>.json)",
    )


# ---- pieces ----


def schedule_for(opts: ModelOptions, steps: int) -> FlowSchedule:
    """The model's own schedule with ``steps`` evenly spaced steps from 1000."""
    assert opts.steps is not None and opts.shift is not None and opts.context_step is not None
    chosen = opts.steps if len(opts.steps) == steps else None
    if chosen is None:
        chosen = tuple(round(1000 - i * 1000 / steps) for i in range(steps))
    return FlowSchedule(
        steps=chosen,
        shift=opts.shift,
        context_step=opts.context_step,
        sampler=opts.sampler,  # type: ignore[arg-type]  # FlowSchedule validates it
    )


def cache_config_for(opts: ModelOptions) -> CacheConfig:
    assert opts.sinks is not None
    if not opts.window:
        return CacheConfig.global_attention(max_frames=opts.max_frames)
    return CacheConfig.rolling_window(opts.sinks, opts.window)


def run_stream(
    generator: Any,
    pipe: Pipeline | None,
    denoiser: Denoiser,
    schedule: FlowSchedule,
    loop_config: LoopConfig,
    cache_config: CacheConfig,
    context: torch.Tensor,
    *,
    warmup: int,
    blocks: int,
    max_seconds: float,
    seed: int,
) -> dict[str, Any]:
    """One stream: ``warmup`` blocks (the first one timed from loop construction: the
    time to first block), then at most ``blocks`` timed blocks or ``max_seconds``."""
    if pipe is not None:
        pipe.stage_stats()  # sync point: the last run's forwards have left the pipe
    t0 = time.perf_counter()
    loop = make_loop(denoiser, generator, schedule, loop_config, cache_config, SeededNoise(seed))
    loop.set_context(context)
    loop.next_block()
    ttfb = time.perf_counter() - t0
    for _ in range(warmup - 1):
        loop.next_block()
    before = pipe.stage_stats() if pipe is not None else None
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < blocks and time.perf_counter() - start < max_seconds:
        t = time.perf_counter()
        loop.next_block()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    after = pipe.stage_stats() if pipe is not None else None
    del loop
    gc.collect()  # the stream's caches (on every stage) are freed with it
    bps = len(times) / wall
    bf = loop_config.block_frames
    out: dict[str, Any] = {
        "blocks": len(times),
        "wall_s": wall,
        "blocks_per_s": bps,
        "latent_fps": bps * bf,
        "video_fps": bps * bf * VAE_TEMPORAL,
        "ttfb_s": ttfb,
        "block_times": block_stats(times),
    }
    if before is not None and after is not None:
        out["stage_stats"] = after
        out["utilisation"] = [
            (a["busy_s"] - b["busy_s"]) / max(a["wall_s"] - b["wall_s"], 1e-9)
            for a, b in zip(after, before, strict=True)
        ]
        out["forwards_per_stage"] = [
            a["forwards"] - b["forwards"] for a, b in zip(after, before, strict=True)
        ]
    return out


def predicted(p: Prediction) -> dict[str, Any]:
    return {
        "blocks_per_s": p.blocks_per_s,
        "latent_fps": p.latent_fps,
        "video_fps": p.video_fps,
        "ttfb_s": p.ttfb_s,
        "utilisation": list(p.utilisation),
        "layers": [list(r) for r in p.layers],
        "stage_compute_ms": [1e3 * s for s in p.stage_s],
        "stage_transfer_in_ms": [1e3 * s for s in p.transfer_in_s],
        "round_trip_ms": 1e3 * p.round_trip_s,
        "bottleneck_stage": p.bottleneck,
    }


def transfer_json(t: TransferTimes) -> dict[str, Any]:
    return {
        "latency_us": 1e6 * t.latency_s,
        "bandwidth_mb_s": None if math.isinf(t.bytes_per_s) else t.bytes_per_s / 1e6,
        "samples": [{"bytes": n, "one_way_us": 1e6 * s} for n, s in t.samples],
    }


def times_json(t: StageTimes) -> dict[str, Any]:
    ms = {
        "block_ms": [1e3 * s for s in t.block_s],
        "commit_block_ms": [1e3 * s for s in t.commit_block_s],
        "embed_ms": 1e3 * t.embed_s,
        "head_ms": 1e3 * t.head_s,
        "stage_overhead_ms": 1e3 * t.stage_overhead_s,
        "stage_plan_ms": 1e3 * t.stage_plan_s,
        "driver_ms": 1e3 * t.driver_s,
        "forward_ms": 1e3 * t.forward_s,
    }
    keys = ("latent_bytes", "activation_bytes", "block_frames", "tokens", "kv_tokens")
    return ms | {k: getattr(t, k) for k in keys}


# ---- Wan predictions from one measured block ----


def block_flops(c: WanConfig, tokens: int, kv_tokens: int) -> float:
    """Multiply-add FLOPs (x2) of one transformer block's denoising forward over ``tokens``
    attending to ``kv_tokens`` (the prompt's keys/values are cached)."""
    d = c.dim
    linear = tokens * (8 * d * d + 4 * d * d + 4 * d * c.ffn_dim)  # q k v o, cross q o, ffn
    attention = 4 * tokens * (kv_tokens + c.text_len) * d  # scores and values, self + cross
    return float(linear + attention)


def _even(n: int) -> int:
    return max(2, 2 * round(n / 2))


def wan_prediction(name: str, args: argparse.Namespace, link: TransferTimes) -> dict[str, Any]:
    """Predictions for a Wan preset at 832x480 from one block timed here (float32).

    A probe at the smallest size gives a FLOP rate; then the largest size whose
    timing (one warm-up and one timed forward) fits what is left of the budget
    by the latest rate is timed, until none fits. Times at a reduced size are
    scaled to full size by the FLOP ratio (blocks) or the token ratio (the rest)."""
    full_cfg = PRESETS[name]
    stand_in = dataclasses.replace(full_cfg, num_layers=2)  # time block 0: not the last one
    t0 = time.perf_counter()
    model = build_model(stand_in, seed=args.seed)
    build_s = time.perf_counter() - t0
    cache = CacheConfig.rolling_window(WAN_SINKS, WAN_WINDOW)
    bf, (h, w), (_, ph, pw) = WAN_BLOCK_FRAMES, WAN_HW, full_cfg.patch_size
    candidates = [(_even(h // s), _even(w // s)) for s in WAN_SCALES]

    def tokens_per_frame(hw: tuple[int, int]) -> int:
        return (hw[0] // ph) * (hw[1] // pw)

    def flops(hw: tuple[int, int]) -> float:
        tpf = tokens_per_frame(hw)
        return block_flops(full_cfg, bf * tpf, (bf + WAN_SINKS + WAN_WINDOW) * tpf)

    t1 = time.perf_counter()
    chosen = candidates[-1]
    probe = measure_block_times(model, chosen, bf, cache, repeats=1, warmup=1, layers=[0])
    measured, tried = probe, [list(chosen)]
    while True:
        rate = flops(chosen) / max(measured.block_s[0], 1e-9)  # FLOP/s
        left = args.wan_budget_s - (time.perf_counter() - t1)
        fits = [c for c in candidates if flops(c) > flops(chosen) and 2 * flops(c) / rate <= left]
        if not fits:
            break
        chosen = max(fits, key=flops)
        tried.append(list(chosen))
        measured = measure_block_times(
            model, chosen, bf, cache, repeats=1, warmup=1, layers=[0], commit=False
        )
    measure_s = time.perf_counter() - t1
    del model
    gc.collect()
    commit_ratio = probe.commit_block_s[0] / max(probe.block_s[0], 1e-12)
    factor = flops(WAN_HW) / flops(chosen)
    token_factor = tokens_per_frame(WAN_HW) / tokens_per_frame(chosen)
    tpf = tokens_per_frame(WAN_HW)
    one = dataclasses.replace(
        measured,
        block_s=(measured.block_s[0] * factor,),
        commit_block_s=(measured.block_s[0] * factor * commit_ratio,),
        embed_s=measured.embed_s * token_factor,
        head_s=measured.head_s * token_factor,
        stage_plan_s=measured.stage_plan_s * token_factor,
        latent_bytes=bf * full_cfg.in_dim * h * w * 4,
        activation_bytes=bf * tpf * full_cfg.dim * 4,
        timestep_bytes=bf * 4,
        tokens=bf * tpf,
        kv_tokens=(bf + WAN_SINKS + WAN_WINDOW) * tpf,
    )
    times = one.repeat_layers(full_cfg.num_layers)
    scaled = chosen != WAN_HW
    rows = []
    for denoiser in BENCH_DENOISERS:
        base = predict(times, link, 1, steps=WAN_STEPS, denoiser=denoiser, in_process=True)
        for stages in args.wan_stages:
            if stages > full_cfg.num_layers:
                continue
            p = predict(times, link, stages, steps=WAN_STEPS, denoiser=denoiser)
            rows.append(
                {"denoiser": denoiser, "stages": stages, "steps": WAN_STEPS}
                | predicted(p)
                | {"speedup_vs_single": p.blocks_per_s / base.blocks_per_s}
            )
        rows.append(
            {"denoiser": denoiser, "stages": 0, "single_process": True, "steps": WAN_STEPS}
            | predicted(base)
        )
    return {
        "preset": name,
        "video": "832x480",
        "latent_hw": list(WAN_HW),
        "block_frames": bf,
        "sinks": WAN_SINKS,
        "window": WAN_WINDOW,
        "steps": WAN_STEPS,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "measured_latent_hw": list(chosen),
        "scaled": scaled,
        "scale_note": (
            f"one block timed at latents {chosen[0]}x{chosen[1]} ({flops(chosen) / 1e12:.3f} "
            f"TFLOP) and scaled by the FLOP ratio x{factor:.2f} to {h}x{w} "
            f"({flops(WAN_HW) / 1e12:.3f} TFLOP): a full-size block would not fit "
            f"--wan-budget-s {args.wan_budget_s:.0f} s at the measured rate"
            if scaled
            else f"one block timed at full size ({flops(WAN_HW) / 1e12:.3f} TFLOP)"
        ),
        "sizes_timed": tried,
        "gflop_s": rate / 1e9,
        "commit_over_denoise": commit_ratio,
        "model_build_s": build_s,
        "measure_s": measure_s,
        "block_times": times_json(one),
        "predictions": rows,
        "note": (
            "predictions, not measurements: every stage is assumed to compute like one thread "
            "of this device, with its own core, linked by this machine's loopback gloo"
        ),
    }


# ---- the run ----


@dataclasses.dataclass
class Setup:
    """What every run shares: the model, its stream settings and the cost-model inputs."""

    opts: ModelOptions
    model: Any  # the whole model, in this process (CausalWanModel)
    latent_hw: tuple[int, int]
    cache_config: CacheConfig
    loop_config: LoopConfig
    context: torch.Tensor  # [1, text_len, text_dim], seeded
    cores: int
    times: StageTimes | None = None
    link: TransferTimes | None = None
    driver: dict[tuple[str, int], float] = dataclasses.field(default_factory=dict)


def make_setup(args: argparse.Namespace) -> Setup:
    opts = ModelOptions(model=args.preset, height=args.size, width=args.size, seed=args.seed)
    resolved = resolve(opts)
    opts = resolved.options
    model = build_generator(resolved).eval()
    if any(s > model.num_layers for s in args.stages):
        raise ValueError(f"--stages: the model has {model.num_layers} blocks")
    assert opts.block_frames is not None
    latent_hw = resolved.stream.latent_hw
    g = torch.Generator().manual_seed(args.seed)
    context = torch.randn(1, model.config.text_len, model.config.text_dim, generator=g)
    return Setup(
        opts,
        model,
        latent_hw,
        cache_config_for(opts),
        LoopConfig(opts.block_frames, latent_hw),
        context,
        os.cpu_count() or 1,
    )


def measure_cost_inputs(setup: Setup, args: argparse.Namespace) -> float:
    """Block times, gloo transfer times and the loop's own time per forward; returns seconds."""
    t0 = time.perf_counter()
    su = setup
    log(f"cost model: timing each block ({args.repeats} rounds)")
    su.times = measure_block_times(
        su.model, su.latent_hw, su.loop_config.block_frames, su.cache_config, args.repeats
    )
    sizes = sorted({*TRANSFER_SIZES, su.times.activation_bytes, su.times.latent_bytes})
    log(f"cost model: gloo transfer times for {len(sizes)} sizes")
    su.link = measure_transfer(sizes, repeats=args.transfer_repeats)
    for d in args.denoisers:
        for k in args.steps:
            schedule = schedule_for(su.opts, k)
            su.driver[(d, k)] = measure_driver_time(
                su.model, schedule, su.loop_config, su.cache_config, d
            )
    took = time.perf_counter() - t0
    blocks = ", ".join(f"{1e3 * s:.2f}" for s in su.times.block_s)
    log(
        f"  forward {1e3 * su.times.forward_s:.2f} ms (blocks {blocks} ms), gloo message "
        f"latency {1e6 * su.link.latency_s:.0f} us, {took:.1f} s"
    )
    return took


def measure_streams(
    setup: Setup, args: argparse.Namespace, splits: dict[int, list[range]]
) -> list[dict[str, Any]]:
    """Every (denoiser, steps): single process, then each pipeline, back to back."""
    su = setup
    assert su.times is not None and su.link is not None
    cc, bf = su.cache_config, su.loop_config.block_frames
    fill = (cc.sink_frames + cc.ring_frames) // bf  # blocks until the window is full
    spec = GeneratorSpec(su.opts)  # what each stage process builds
    pipes: dict[int, Pipeline] = {}
    rows: list[dict[str, Any]] = []
    try:
        for s in args.stages:
            t = time.perf_counter()
            layers = tuple((r.start, r.stop) for r in splits[s])
            config = PipelineConfig(
                stages=s, layers=layers, threads_per_stage=1, pin_cores=args.pin_cores
            )
            pipes[s] = Pipeline.spawn(spec, config)
            took = time.perf_counter() - t
            log(f"pipeline of {s} stage(s), blocks {layers}: started in {took:.1f} s")
        for denoiser in args.denoisers:
            for k in args.steps:
                warmup = args.warmup_blocks
                warmup = max(1, fill + k + EXTRA_WARMUP_BLOCKS if warmup is None else warmup)
                times = dataclasses.replace(su.times, driver_s=su.driver[(denoiser, k)])
                base = predict(times, su.link, 1, steps=k, denoiser=denoiser, in_process=True)
                runners: list[tuple[int, Any, Pipeline | None]] = []
                if not args.no_single:
                    runners.append((0, su.model, None))
                runners += [(s, pipes[s].generator, pipes[s]) for s in args.stages]
                single = None
                for stages, generator, pipe in runners:
                    measured = run_stream(
                        generator, pipe, denoiser, schedule_for(su.opts, k), su.loop_config,
                        su.cache_config, su.context, warmup=warmup, blocks=args.blocks,
                        max_seconds=args.max_seconds, seed=args.seed,
                    )  # fmt: skip
                    pred = base
                    if pipe is None:
                        single = measured
                    else:
                        pred = predict(
                            times, su.link, stages, split=splits[stages], steps=k,
                            denoiser=denoiser, cores=su.cores,
                        )  # fmt: skip
                    speedup = None
                    if single is not None:
                        speedup = measured["blocks_per_s"] / single["blocks_per_s"]
                    rows.append(
                        {
                            "denoiser": denoiser,
                            "steps": k,
                            "runner": "single" if pipe is None else "pipeline",
                            "stages": stages,
                            "warmup_blocks": warmup,
                            "measured": measured,
                            "predicted": predicted(pred),
                            "speedup_vs_single": speedup,
                            "predicted_speedup_vs_single": pred.blocks_per_s / base.blocks_per_s,
                        }
                    )
                    log(_row_line(rows[-1]))
    except PipelineError as e:
        raise RuntimeError(f"pipeline failed: {e}") from e
    finally:
        for p in pipes.values():
            p.close()
    return rows


def run_pipeline_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run everything args asks for; writes the JSON file and returns the result."""
    if args.blocks < 1 or args.max_seconds <= 0:
        raise ValueError("--blocks must be >= 1 and --max-seconds > 0")
    if any(s < 1 for s in args.stages + args.steps + args.wan_stages):
        raise ValueError("--stages, --steps and --wan-stages must be >= 1")
    torch.set_num_threads(1)
    su = make_setup(args)
    opts, cc = su.opts, su.cache_config
    env = environment(torch.device("cpu"))
    config: dict[str, Any] = {
        "preset": args.preset,
        "model": dataclasses.asdict(su.model.config),
        "video_hw": [args.size, args.size],
        "latent_hw": list(su.latent_hw),
        "block_frames": su.loop_config.block_frames,
        "sinks": cc.sink_frames,
        "window": cc.window_frames,
        "sampler": opts.sampler,
        "shift": opts.shift,
        "steps": args.steps,
        "schedules": {k: list(schedule_for(opts, k).steps) for k in args.steps},
        "denoisers": list(args.denoisers),
        "stages": args.stages,
        "split": args.split,
        "threads_single": 1,
        "threads_per_stage": 1,
        "pin_cores": args.pin_cores,
        "cores": su.cores,
        "blocks": args.blocks,
        "max_seconds": args.max_seconds,
        "warmup_blocks": args.warmup_blocks,
        "dtype": opts.dtype,
        "seed": args.seed,
        "wan_presets": [] if args.no_wan else args.wan_presets,
        "wan_stages": args.wan_stages,
        "wan_budget_s": args.wan_budget_s,
    }
    log(
        f"framecast pipeline benchmark: {env['device_name']} ({su.cores} cores), torch "
        f"{env['torch']}, python {env['python']}, {env['platform']}"
    )
    log("config: " + json.dumps(config))
    cost_s = measure_cost_inputs(su, args)
    assert su.times is not None and su.link is not None
    splits = {
        s: [range(a, b) for a, b in predict(su.times, su.link, s, split=args.split).layers]
        for s in args.stages
    }
    results = measure_streams(su, args, splits)
    wan: list[dict[str, Any]] = []
    for name in [] if args.no_wan else args.wan_presets:
        log(f"Wan prediction: {name} (timing one block, budget {args.wan_budget_s:.0f} s)")
        wan.append(wan_prediction(name, args, su.link))
        log(f"  {wan[-1]['scale_note']}")
        for r in wan[-1]["predictions"]:
            who = "single" if r["stages"] == 0 else f"S={r['stages']}"
            log(
                f"  {r['denoiser']:12s} {who:7s} {r['video_fps']:9.5f} video fps, ttfb "
                f"{r['ttfb_s']:8.2f} s, speedup {r.get('speedup_vs_single', 1.0):.2f}"
            )
    env["load_average_at_end"] = list(os.getloadavg())
    embedded = model_kind(opts.model or "world") == "embedded"
    weights = "embedded bundle" if embedded else "random weights"
    result: dict[str, Any] = {
        "benchmark": "framecast.pipeline",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "config": config,
        "notes": NOTES | {"weights": weights},
        "cost_inputs": {
            "stage_times": times_json(su.times),
            "driver_ms": {f"{d}/{k}": 1e3 * s for (d, k), s in su.driver.items()},
            "transfer": transfer_json(su.link),
            "measure_s": cost_s,
        },
        "results": results,
        "wan_predictions": wan,
    }
    out = args.out or default_out(args.preset, env["device_name"], kind="pipeline")
    result["output_path"] = str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(result) + "\n", encoding="utf-8")
    log(f"wrote {out}")
    return result


NOTES = {
    "timing": (
        "wall clock per block after the warm-up (window fill + steps + "
        f"{EXTRA_WARMUP_BLOCKS} blocks); blocks_per_s = timed blocks / their wall time. "
        "ttfb_s counts from loop construction (cache allocation, first prompt encoding); "
        "the predicted ttfb starts from an empty pipe with the caches ready"
    ),
    "utilisation": (
        "measured: per stage, busy seconds / wall seconds over the timed blocks "
        "(Pipeline.stage_stats); predicted: compute per block / predicted block time"
    ),
    "speedup": "blocks/s over the single-process run of the same denoiser and steps",
    "single_process_stream_batch": (
        "a single-process stream batch runs each tick as one batched forward; the cost "
        "model counts its forwards one after another"
    ),
    "cost_model": (
        "engine.parallel.cost.predict; stage s pinned to core (s - 1) % cores as pin_cores "
        "does; the driver (this process) is assumed to have a core of its own, which it does "
        "not when stages >= cores"
    ),
}


def _row_line(row: dict[str, Any]) -> str:
    m, p = row["measured"], row["predicted"]
    who = "single" if row["runner"] == "single" else f"S={row['stages']}"
    util = m.get("utilisation")
    speed = "-" if row["speedup_vs_single"] is None else f"{row['speedup_vs_single']:.2f}"
    return (
        f"  {row['denoiser']:12s} steps {row['steps']} {who:7s} "
        f"{m['blocks_per_s']:7.2f} blocks/s (pred {p['blocks_per_s']:7.2f}) "
        f"{m['video_fps']:7.1f} video fps  ttfb {1e3 * m['ttfb_s']:6.1f} ms "
        f"(pred {1e3 * p['ttfb_s']:6.1f})  speedup "
        f"{speed} (pred {row['predicted_speedup_vs_single']:.2f})"
        + ("" if util is None else "  util " + " ".join(f"{u:.2f}" for u in util))
        + f"  [{m['blocks']} blocks]"
    )


def pipeline_bench_command(args: argparse.Namespace) -> int:
    return json_command(run_pipeline_bench, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pipeline_bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_pipeline_bench_arguments(parser)
    return pipeline_bench_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
