"""What one generator training step costs, and how much of the machine it uses.

For each recipe variant (patch size, batch, dtype) this times the real training step
of models/train/generator.py (teacher-forcing loss, backward, gradient clip, AdamW,
EMA) on random latents of the embedded model's shape, counts its FLOPs with
``torch.utils.flop_counter`` (forward and backward, counted, not estimated), and
divides by the machine's measured matmul rate: the fraction says how far a step is
from what this CPU can do, so the cost of a recipe is known before it is trained.

The matmul rate is measured for float32 and bfloat16 at the model's own GEMM shape
and at a square 1024 GEMM; bfloat16 variants only make sense where the CPU runs
bf16 matmuls natively (faster than fp32), which is measured, never assumed.

Usage::

    python -m bench.train_cost                     # all variants, JSON to ./train_cost_*.json
    python -m bench.train_cost --patch 2 4 --batch 8 32 --dtype float32 --steps 5
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.env import environment, slug
from engine.schedule import FlowSchedule
from models.embedded import load_bundle
from models.train.generator import Batch, GeneratorTrainConfig, teacher_forcing_loss
from models.wan.model import CausalWanModel

LATENT_HW = (16, 16)  # the embedded model's 128x128 video


def matmul_rate(dtype: torch.dtype, m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """Measured GFLOP/s of an [m, k] @ [k, n] product (median of timed repeats)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times) / 1e9


@dataclasses.dataclass(frozen=True)
class Variant:
    patch: int  # spatial patch size (1, p, p)
    batch: int
    dtype: str  # "float32", or "bfloat16" (autocast)
    frames: int = 6
    self_context: float = 0.0

    @property
    def name(self) -> str:
        return f"patch{self.patch}_b{self.batch}_{self.dtype}_f{self.frames}"


def make_step(v: Variant, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """The training step of ``v`` as a closure, and its shape facts."""
    wan = dataclasses.replace(load_bundle("world").wan_config, patch_size=(1, v.patch, v.patch))
    model = CausalWanModel(wan).init_weights(seed, zero_head=True).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    config = GeneratorTrainConfig(
        batch=v.batch, frames=v.frames, self_context=v.self_context, seed=seed
    )
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    levels = torch.tensor(FlowSchedule(steps=config.sample_steps, shift=config.shift).sigmas)
    gen = torch.Generator().manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    batch = Batch(
        torch.randn(v.batch, v.frames, wan.in_dim, *LATENT_HW, generator=g),
        torch.randn(v.batch, wan.text_len, wan.text_dim, generator=g),
        torch.ones(v.batch, v.frames),
    )
    autocast = v.dtype == "bfloat16"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = teacher_forcing_loss(model, batch, config, levels, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - config.ema)

    tokens_per_frame = (LATENT_HW[0] // v.patch) * (LATENT_HW[1] // v.patch)
    facts = {
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_frame": tokens_per_frame,
        # teacher forcing feeds every clip twice (clean cache copy + noisy copy)
        "tokens_per_step": 2 * v.batch * v.frames * tokens_per_frame,
        "clips_per_step": v.batch,
    }
    return step, facts


def measure(v: Variant, steps: int, rates: dict[str, float]) -> dict[str, Any]:
    step, facts = make_step(v)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    achieved = flops / s / 1e9
    return {
        **dataclasses.asdict(v),
        **facts,
        "step_s_median": s,
        "step_s_all": times,
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": achieved,
        "fraction_of_model_gemm_rate": achieved / rates[f"model_gemm_{v.dtype}"],
        "tokens_per_s": facts["tokens_per_step"] / s,
        "clips_per_s": v.batch / s,
        "clip_frames_per_s": v.batch * v.frames / s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--patch", type=int, nargs="+", default=[2, 4], help="spatial patch sizes")
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="clips per step")
    p.add_argument(
        "--dtype", nargs="+", default=["float32", "bfloat16"], help="float32, bfloat16"
    )
    p.add_argument("--frames", type=int, default=6, help="latent frames per clip")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, help="JSON path (default ./train_cost_<cpu>_<date>.json)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    env = environment(torch.device("cpu"))
    print(f"{env['cpu_model']}, torch {env['torch']}, {env['threads']} threads", file=sys.stderr)
    wan = load_bundle("world").wan_config
    # the model's most common GEMM: tokens x dim @ dim x ffn (batch 8, patch 2)
    m = 2 * 8 * a.frames * (LATENT_HW[0] // 2) * (LATENT_HW[1] // 2)
    rates = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        rates[f"model_gemm_{name}"] = matmul_rate(dtype, m, wan.dim, wan.ffn_dim)
        rates[f"square1024_{name}"] = matmul_rate(dtype, 1024, 1024, 1024)
    native_bf16 = rates["model_gemm_bfloat16"] > rates["model_gemm_float32"]
    print(f"matmul GFLOP/s: {json.dumps({k: round(v, 1) for k, v in rates.items()})}; "
          f"bf16 {'faster' if native_bf16 else 'slower'} than fp32", file=sys.stderr)  # fmt: skip
    rows = []
    for dtype in a.dtype:
        if dtype == "bfloat16" and not native_bf16:
            print("skipping bfloat16: slower than float32 on this CPU", file=sys.stderr)
            continue
        for patch in a.patch:
            for batch in a.batch:
                row = measure(Variant(patch, batch, dtype, a.frames), a.steps, rates)
                rows.append(row)
                print(
                    f"{row['patch']=} {row['batch']=} {dtype}: {row['step_s_median']:.3f} s/step, "
                    f"{row['clip_frames_per_s']:.0f} clip frames/s, "
                    f"{row['gflop_per_step']:.1f} GFLOP/step, {row['achieved_gflops']:.1f} GFLOP/s "
                    f"= {100 * row['fraction_of_model_gemm_rate']:.0f}% of the GEMM rate",
                    file=sys.stderr,
                )
    result = {
        "benchmark": "framecast.train_cost",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
        "environment": env,
        "matmul_gflops": rates,
        "native_bf16": native_bf16,
        "latent_hw": LATENT_HW,
        "rows": rows,
    }
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    out = a.out or Path.cwd() / f"train_cost_{slug(env['cpu_model'] or 'cpu')}_{date}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
