"""Equal-time proxy runs of generator recipes, scored on held-out prompts over time.

Issue 13 asks for recipes to be chosen by learning curves, not single runs:
each recipe trains for the same wall time from the same seed, a snapshot of its
EMA weights is saved every ``snap_minutes``, and after the run every snapshot
is scored by the world's detector on held-out prompts (phrasings and words never
seen in training). Scoring is outside the timed training, so every recipe gets
the same training time whatever its evaluation costs. The JSON keeps every
point; ``plot`` draws one panel per attribute (PNG).

    python -m bench.learning_curves run --recipes bench/recipes/issue13.json --minutes 10
    python -m bench.learning_curves plot bench/results/curves_*.json --out docs/models/curves.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

import torch

from bench.env import environment
from bench.eval.evaluate import adherence
from bench.eval.sources import EngineSource
from bench.eval.teacher_forced import teacher_forced_scores
from engine.schedule import Sampler
from models.embedded import load_bundle
from models.resolve import ModelOptions
from models.train.bundle import DEFAULT_SAMPLER, write_bundle
from models.train.generator import GeneratorTrainConfig, GeneratorTrainer
from models.world import heldout_prompts

SCORES = ("background", "colour", "shape", "motion", "all")


def checkpoint_scores(
    checkpoint: Path,
    autoencoder: Path,
    *,
    prompts: int = 24,
    frames: int = 32,
    steps: tuple[int, ...] | None = None,
    sampler: Sampler = DEFAULT_SAMPLER,
    one_step: bool = True,
) -> dict[str, Any]:
    """Held-out adherence (percent) of a checkpoint's EMA weights, streamed by the engine.

    ``one_step``: also score the one-step estimate at the last sampling level under
    teacher forcing (bench/eval/teacher_forced.py), as ``one_step``.
    """
    with tempfile.TemporaryDirectory(prefix="framecast-curve-") as tmp:
        bundle = Path(tmp) / "bundle"
        write_bundle(autoencoder, checkpoint, bundle, sampler=sampler)
        source = EngineSource(ModelOptions(model=str(bundle), steps=steps), name="curve")
        result = adherence(source, heldout_prompts(prompts), frames=frames)
        if one_step:
            loaded = load_bundle(bundle)
            last = min(steps or loaded.defaults["steps"])
            forced = teacher_forced_scores(loaded, prompts=prompts, levels=(last,))[str(last)]
    scores: dict[str, Any] = {k: result.accuracy[k] for k in (*SCORES, "size", "count")}
    if one_step:
        scores["one_step"] = {"level": last, **forced}
    scores["presence"] = result.consistency.presence_pct
    scores["prompts"] = prompts
    scores["sampler"] = sampler
    return scores


def _recipe(base: dict[str, Any], overrides: dict[str, Any]) -> GeneratorTrainConfig:
    fields = {**base, **overrides}
    for key in ("data", "out", "init"):
        if fields.get(key) is not None:
            fields[key] = Path(fields[key])
    if "sample_steps" in fields:
        fields["sample_steps"] = tuple(fields["sample_steps"])
    return GeneratorTrainConfig(**fields)


def proxy_run(
    name: str,
    config: GeneratorTrainConfig,
    *,
    minutes: float,
    snap_minutes: float,
    folder: Path,
    autoencoder: Path,
    prompts: int,
    sampler: Sampler = DEFAULT_SAMPLER,
) -> dict[str, Any]:
    """Train ``config`` for ``minutes`` of wall time, then score every snapshot."""
    trainer = GeneratorTrainer(config, total_steps=config.steps)
    snaps: list[tuple[Path, int, float]] = []
    next_snap = 60 * snap_minutes
    t0 = time.perf_counter()
    losses: list[list[float]] = []
    while True:
        report = trainer.step()
        elapsed = time.perf_counter() - t0
        if report is not None:
            losses.append([report.step, round(elapsed, 1), report.loss])
            print(f"[{name}] {report}", file=sys.stderr, flush=True)
        if elapsed >= next_snap or elapsed >= 60 * minutes:
            snap = folder / name / f"t{round(elapsed)}"
            trainer.save_checkpoint(snap, {"config": _jsonable(config)})
            snaps.append((snap, trainer.step_count, elapsed))
            next_snap += 60 * snap_minutes
        if elapsed >= 60 * minutes:
            break
    points = []
    for snap, step, elapsed in snaps:
        scores = checkpoint_scores(snap, autoencoder, prompts=prompts, sampler=sampler)
        print(f"[{name}] step {step} ({elapsed:.0f} s): {scores}", file=sys.stderr, flush=True)
        points.append({"step": step, "wall_s": round(elapsed, 1), **scores})
    return {
        "name": name,
        "config": _jsonable(config),
        "steps": trainer.step_count,
        "steps_per_s": trainer.step_count / (60 * minutes),
        "loss_curve": losses,
        "points": points,
    }


def _jsonable(config: GeneratorTrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def run_command(a: argparse.Namespace) -> int:
    spec = json.loads(a.recipes.read_text())
    base, recipes = spec["base"], spec["recipes"]
    only = set(a.only or recipes)
    unknown = only - set(recipes)
    if unknown:
        raise SystemExit(f"unknown recipes {sorted(unknown)}; the file has {sorted(recipes)}")
    env = environment(torch.device(base.get("device", "cpu")))
    out = a.out or Path(f"curves_{time.strftime('%Y%m%d-%H%M%S')}.json")
    report: dict[str, Any] = {
        "what": "equal-time proxy runs, held-out adherence per snapshot",
        "minutes": a.minutes,
        "snap_minutes": a.snap_minutes,
        "prompts": a.prompts,
        "sampler": a.sampler,
        "environment": env,
        "runs": [],
    }
    if out.is_file():  # add to an earlier report (one recipe per invocation, say)
        report["runs"] = json.loads(out.read_text())["runs"]
    for name in recipes:
        if name not in only:
            continue
        config = _recipe(base, recipes[name])
        print(f"[{name}] {config}", file=sys.stderr, flush=True)
        run = proxy_run(
            name,
            config,
            minutes=a.minutes,
            snap_minutes=a.snap_minutes,
            folder=a.snapshots,
            autoencoder=a.autoencoder,
            prompts=a.prompts,
            sampler=a.sampler,
        )
        run["cpu"] = env.get("cpu_model")
        report["runs"] = [r for r in report["runs"] if r["name"] != name] + [run]
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {out}", file=sys.stderr)
        if not a.keep_snapshots:
            shutil.rmtree(a.snapshots / name, ignore_errors=True)
    return 0


def heldout_latent_set(like: Path, autoencoder: Path, clips: int) -> dict[str, Any]:
    """A latent set of the first ``clips`` held-out scenes, each with its held-out prompt,
    normalised like ``like`` (the job's set, so checkpoints move between the two).

    For memorisation probes: a recipe trained on it and scored on the same prompts
    (``--prompts clips``) shows what the architecture can draw at all.
    """
    from models.text import SentenceEncoder
    from models.train.autoencoder import load_autoencoder
    from models.world.render import render_clip

    base = torch.load(like, weights_only=False)
    encoder, _ = load_autoencoder(autoencoder)
    frames, size = base["latents"].shape[1] * 4, int(base["meta"]["config"]["size"])
    text = SentenceEncoder()
    cases = heldout_prompts(clips)
    latents, embeds = [], torch.zeros(clips, *base["embeds"].shape[1:], dtype=torch.float16)
    with torch.inference_mode():
        for i, case in enumerate(cases):
            clip = render_clip(case.scene, frames, size, size)
            x = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div(255.0)[None]
            latents.append(encoder(x)[0].to(torch.float16))
            e = text.encode(case.prompt)[: embeds.shape[1]]
            embeds[i, : e.shape[0]] = e.to(torch.float16)
    phrasings = base["prompt_index"].shape[1]
    return {
        **base,
        "latents": torch.stack(latents),
        "embeds": embeds,
        "prompt_index": torch.arange(clips)[:, None].repeat(1, phrasings),
        "starts": torch.zeros(clips, dtype=torch.int64),
        "prompts": [c.prompt for c in cases],
        "meta": {**base["meta"], "heldout_clips": clips, "normalised_like": str(like)},
    }


def heldout_set_command(a: argparse.Namespace) -> int:
    data = heldout_latent_set(a.like, a.autoencoder, a.clips)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, a.out)
    print(f"wrote {a.out}: {a.clips} held-out clips", file=sys.stderr)
    return 0


def plot_command(a: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install -e '.[dev]'") from None
    runs = [r for path in a.reports for r in json.loads(path.read_text())["runs"]]
    fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 3.4), sharey=True)
    for ax, key in zip(axes, SCORES, strict=True):
        for run in runs:
            xs = [p["wall_s"] / 60 for p in run["points"]]
            ax.plot(xs, [p[key] for p in run["points"]], marker="o", label=run["name"])
        ax.set_title(key)
        ax.set_xlabel("training minutes (2-core CPU)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy %")
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=90)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.learning_curves",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train each recipe for the same wall time, then score")
    r.add_argument("--recipes", type=Path, required=True, help='{"base": {...}, "recipes": {...}}')
    r.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    r.add_argument("--minutes", type=float, default=10.0, help="training wall time per recipe")
    r.add_argument("--snap-minutes", type=float, default=2.5, help="between scored snapshots")
    r.add_argument("--prompts", type=int, default=24, help="held-out prompts per snapshot")
    r.add_argument("--autoencoder", type=Path, default=Path("models/weights/world"))
    r.add_argument(
        "--sampler",
        choices=get_args(Sampler),
        default=DEFAULT_SAMPLER,
        help="step rule the snapshots are streamed with",
    )
    r.add_argument("--snapshots", type=Path, default=Path("out/curves"))
    r.add_argument("--keep-snapshots", action="store_true")
    r.add_argument("--out", type=Path, help="report JSON (default: curves_<time>.json in cwd)")
    r.set_defaults(func=run_command)
    h = sub.add_parser("heldout-set", help="a latent set of held-out scenes (memorisation probe)")
    h.add_argument("--like", type=Path, required=True, help="the job's latent set (its stats)")
    h.add_argument("--autoencoder", type=Path, default=Path("training/world/autoencoder"))
    h.add_argument("--clips", type=int, default=16)
    h.add_argument("--out", type=Path, default=Path("out/train/heldout16.pt"))
    h.set_defaults(func=heldout_set_command)
    q = sub.add_parser("plot", help="one panel per attribute, one line per recipe")
    q.add_argument("reports", type=Path, nargs="+")
    q.add_argument("--out", type=Path, default=Path("docs/models/learning_curves.png"))
    q.set_defaults(func=plot_command)
    a = p.parse_args(argv)
    return int(a.func(a))


if __name__ == "__main__":
    raise SystemExit(main())
