"""The pipeline-parallel speedup on this machine, measured in alternating rounds.

Issue target: a 2-stage pipeline of the embedded default reaches >= 1.6x the
throughput of one process running the same configuration, each process on one
CPU thread. This CPU sits in a shared VM whose speed drifts by +-20% between
minutes, so a single pair of runs can say anything; here the single process and
the pipeline alternate for ``--rounds`` rounds (ABAB...) and the medians and the
per-round ratios are reported.

    python bench/pipeline_speedup.py --size 128 256 --rounds 5

Prints the device, versions and configuration, then the JSON (also written to
bench/results/pipeline_speedup_<device>_<date>.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from a checkout

from bench.env import environment  # noqa: E402
from bench.pipeline_bench import cache_config_for, run_stream, schedule_for  # noqa: E402
from engine.loop import LoopConfig  # noqa: E402
from engine.parallel import Pipeline, PipelineConfig  # noqa: E402
from models.resolve import GeneratorSpec, ModelOptions, resolve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="world")
    p.add_argument("--size", type=int, nargs="+", default=[128, 256], help="video pixels")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--denoiser", default="stream_batch", choices=["plain", "stream_batch"])
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per run")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    env = environment(torch.device("cpu"))
    print(
        f"device {env['device_name']}, torch {env['torch']}, python {env['python']}",
        file=sys.stderr,
    )
    results: list[dict[str, Any]] = []
    for size in args.size:
        resolved = resolve(ModelOptions(model=args.preset, height=size, width=size))
        opts = resolved.options
        spec = GeneratorSpec(opts)
        model = spec(range(spec(range(0)).num_layers))
        hw = resolved.stream.latent_hw
        assert opts.block_frames is not None
        loop_config = LoopConfig(opts.block_frames, hw)
        cache = cache_config_for(opts)
        schedule = schedule_for(opts, args.steps)
        context = torch.randn(
            1,
            model.config.text_len,
            model.config.text_dim,
            generator=torch.Generator().manual_seed(0),
        )
        config = PipelineConfig(stages=args.stages, threads_per_stage=1)
        pipe = Pipeline.spawn(spec, config)
        rounds = []
        try:
            for r in range(args.rounds):
                row = {}
                for name, gen, pp in (("single", model, None), ("pipeline", pipe.generator, pipe)):
                    row[name] = run_stream(
                        gen, pp, args.denoiser, schedule, loop_config, cache, context,
                        warmup=8, blocks=100_000, max_seconds=args.seconds, seed=0,
                    )  # fmt: skip
                ratio = row["pipeline"]["blocks_per_s"] / row["single"]["blocks_per_s"]
                print(
                    f"{size}px round {r + 1}: single {row['single']['blocks_per_s']:.2f} "
                    f"pipeline {row['pipeline']['blocks_per_s']:.2f} blocks/s ({ratio:.2f}x)",
                    file=sys.stderr,
                )
                rounds.append({"ratio": ratio, **{k: _brief(v) for k, v in row.items()}})
        finally:
            pipe.close()
        results.append(
            {
                "size": size,
                "rounds": rounds,
                "median_single_blocks_per_s": statistics.median(
                    x["single"]["blocks_per_s"] for x in rounds
                ),
                "median_pipeline_blocks_per_s": statistics.median(
                    x["pipeline"]["blocks_per_s"] for x in rounds
                ),
                "median_ratio": statistics.median(x["ratio"] for x in rounds),
                "min_ratio": min(x["ratio"] for x in rounds),
                "max_ratio": max(x["ratio"] for x in rounds),
                "median_ttfb_single_s": statistics.median(x["single"]["ttfb_s"] for x in rounds),
                "median_ttfb_pipeline_s": statistics.median(
                    x["pipeline"]["ttfb_s"] for x in rounds
                ),
            }
        )
    out = {
        "benchmark": "pipeline_speedup",
        "environment": env,
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "threads_single": 1,
            "threads_per_stage": 1,
            "pin_cores": False,
            "note": "single = one process, 1 torch thread; pipeline = driver process + "
            f"{args.stages} stage processes with 1 torch thread each, unpinned; runs alternate",
        },
        "results": results,
    }
    date = time.strftime("%Y%m%d")
    slug = env["device_name"].lower().replace(" ", "-")
    path = args.out or REPO / "bench" / "results" / f"pipeline_speedup_{slug}_{date}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    keep = ("blocks", "wall_s", "blocks_per_s", "video_fps", "ttfb_s", "utilisation")
    return {k: run[k] for k in keep if k in run}


if __name__ == "__main__":
    raise SystemExit(main())
