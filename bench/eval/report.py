"""`framecast eval`: every metric of bench.eval.evaluate once, a table, a JSON record.

The record holds what makes a number comparable later: the machine (CPU or
GPU model, torch version, load), the exact configuration (model options with
every default filled in, the eval settings), and the date. Progress lines go
to a callback (stderr in the CLI) so that stdout carries only the table.

Usage::

    report = run_eval(EvalConfig(prompts=8, drift_frames=0), ModelOptions(model="nano"))
    print(format_table(report))
    write_report(report, default_out("nano", oracle=False))
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.env import environment
from bench.eval.evaluate import (
    ATTRIBUTES,
    EngineSource,
    OracleSource,
    ablation,
    adherence,
    default_variants,
    drift,
    pick_drift_prompt,
    switch_pairs,
    switch_response,
)
from bench.eval.sources import ClipSource
from engine.stream import SWITCH_MODES, SwitchMode
from models.embedded import BundleError
from models.resolve import GENERIC_DEFAULTS, VAE_TEMPORAL, ModelOptions
from models.world import heldout_prompts

Progress = Callable[[str], None]
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class EvalConfig:
    """What `framecast eval` measures; frame counts are video frames."""

    prompts: int = 64  # held-out prompts for adherence and consistency
    frames: int = 32  # frames per adherence clip (the detector reads motion from 2 s)
    drift_frames: int = 10000  # length of the drift stream; 0 skips drift
    drift_window: int = 1000  # frames scored at each end of the drift stream
    segment: int = 32  # frames per scored drift segment
    switches: int = 20  # prompt switches; 0 skips switch response
    switch_mode: SwitchMode = "recache"
    blocks_before: int = 4  # blocks of prompt A before a switch
    max_blocks_after: int = 6  # blocks watched for prompt B after it
    ablation: bool = False
    ablation_frames: int = 2000  # drift stream length per ablation variant
    ablation_window: int | None = None  # None: min(drift_window, ablation_frames // 4)
    novel_words: bool = True  # held-out prompts may use words unseen in training
    prompt_seed: int = 0
    oracle: bool = False  # score the ground truth (the harness's sanity check)

    def __post_init__(self) -> None:
        if self.prompts < 1 or self.frames < 2:
            raise ValueError(f"need --prompts >= 1 and --frames >= 2, got {self}")
        if self.drift_frames and 2 * self.drift_window > self.drift_frames:
            raise ValueError(
                f"--drift-window {self.drift_window} twice does not fit in "
                f"--drift-frames {self.drift_frames}"
            )
        if self.drift_frames and self.drift_window < self.segment:
            raise ValueError(f"--drift-window must be >= {self.segment} frames (one segment)")
        if self.switches < 0 or self.switch_mode not in SWITCH_MODES:
            raise ValueError(f"bad switch settings: {self.switches} {self.switch_mode!r}")
        if self.ablation and 2 * self.ablation_scored_window > self.ablation_frames:
            raise ValueError(f"--ablation-frames {self.ablation_frames} is too short")

    @property
    def ablation_scored_window(self) -> int:
        if self.ablation_window is not None:
            return self.ablation_window
        return min(self.drift_window, self.ablation_frames // 4)


def filled_options(opts: ModelOptions) -> ModelOptions:
    """Model options with every default filled in.

    Generic defaults stand in where the model cannot be loaded, which is
    fine only for the oracle (it draws no model output).
    """
    try:
        return opts.resolved()
    except (BundleError, ValueError):
        fill = {
            k: v if getattr(opts, k) is None else getattr(opts, k)
            for k, v in GENERIC_DEFAULTS.items()
        }
        return dataclasses.replace(opts, **fill)


def _with_cache_room(opts: ModelOptions, frames: int) -> ModelOptions:
    """Global attention (window 0) needs room for the longest stream, in whole blocks."""
    if opts.window != 0:
        return opts
    assert opts.block_frames is not None
    blocks = math.ceil(math.ceil(frames / VAE_TEMPORAL) / opts.block_frames)
    return dataclasses.replace(opts, max_frames=max(opts.max_frames, blocks * opts.block_frames))


def jsonable(obj: Any) -> Any:
    """Dataclasses to dicts, paths to strings, tuples to lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def run_eval(
    config: EvalConfig, opts: ModelOptions, progress: Progress | None = None
) -> dict[str, Any]:
    """Every metric the config asks for; returns the JSON-ready report."""
    t0 = time.perf_counter()
    filled = filled_options(opts) if config.oracle else opts.resolved()
    assert filled.block_frames is not None and filled.height is not None
    assert filled.width is not None
    h, w, block_frames = filled.height, filled.width, filled.block_frames
    need = max(
        config.frames,
        config.drift_frames,
        config.ablation_frames if config.ablation else 0,
        (config.blocks_before + config.max_blocks_after) * block_frames * VAE_TEMPORAL,
    )
    filled = _with_cache_room(filled, need)
    pool = heldout_prompts(
        max(config.prompts, 3 * config.switches + 2),
        config.prompt_seed,
        novel_words=config.novel_words,
    )
    prompts, scenes = pool[: config.prompts], {p.prompt: p.scene for p in pool}
    pairs = switch_pairs(pool, config.switches)

    def make_source(o: ModelOptions) -> ClipSource:
        if config.oracle:
            assert o.block_frames is not None
            frames = o.block_frames * VAE_TEMPORAL
            return OracleSource(scenes, height=h, width=w, block_frames=frames)
        return EngineSource(o)

    source = make_source(filled)
    results: dict[str, Any] = {"adherence": adherence(source, prompts, config.frames, progress)}
    drift_prompt = None
    if config.drift_frames:
        drift_prompt = pick_drift_prompt(
            prompts, config.drift_frames, config.drift_window, config.segment, h, w
        )
        results["drift"] = drift(
            source, drift_prompt, config.drift_frames, config.drift_window, config.segment, progress
        )
    if pairs:
        results["switch"] = switch_response(
            source,
            pairs,
            config.switch_mode,
            config.blocks_before,
            config.max_blocks_after,
            progress,
        )
    if config.ablation:
        window = config.ablation_scored_window
        results["ablation"] = ablation(
            make_source,
            default_variants(filled),
            pick_drift_prompt(prompts, config.ablation_frames, window, config.segment, h, w),
            pairs,
            config.ablation_frames,
            window,
            config.segment,
            progress,
        )
    return {
        "command": "framecast eval",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": "oracle" if config.oracle else "engine",
        "device": environment(torch.device(filled.device)),
        "config": {"eval": jsonable(config), "model": jsonable(filled)},
        "drift_prompt": None if drift_prompt is None else drift_prompt.prompt,
        "results": jsonable(results),
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a few plain-text tables."""
    r, m = report["results"], report["config"]["model"]
    a = r["adherence"]
    what = (
        "the ground truth (oracle)"
        if report["source"] == "oracle"
        else f"model {m['model']}, sinks {m['sinks']}, window {m['window']}"
    )
    lines = [
        f"framecast eval: {what}, {m['height']}x{m['width']}, "
        f"{report['device']['device_name']}, {report['date']}",
        "",
        f"adherence: {a['clips']} held-out prompts x {a['frames']} frames (% of clips)",
        "  " + "".join(f"{k:>11s}" for k in (*ATTRIBUTES, "all")),
        "  " + "".join(f"{a['accuracy'][k]:11.1f}" for k in (*ATTRIBUTES, "all")),
        "",
        "temporal consistency (% of clips): "
        f"objects persist {a['consistency']['presence_pct']:.1f}, "
        f"stable count {a['consistency']['stable_count_pct']:.1f}, "
        f"both {a['consistency']['consistent_pct']:.1f}",
    ]
    if "drift" in r:
        d = r["drift"]
        lines += [
            "",
            f"drift: {d['total_frames']} frames, {d['first']['segments']} segments of "
            f"{d['segment']} frames per window, {d['fps']:.1f} fps",
            f"  first {d['first']['end'] - d['first']['start']} frames "
            f"{d['first']['adherence_pct']:.1f}%   last "
            f"{d['last']['end'] - d['last']['start']} frames {d['last']['adherence_pct']:.1f}%"
            f"   drop {d['drop_points']:.1f} points",
            f"  prompt: {d['prompt']}",
        ]
    if "switch" in r:
        s = r["switch"]
        mean = "-" if s["mean_blocks"] is None else f"{s['mean_blocks']:.2f}"
        lines += [
            "",
            f"switch response ({s['mode']}, {s['switches']} switches after "
            f"{s['blocks_before']} blocks): within 2 blocks {s['met_within_2_pct']:.1f}%, "
            f"within {s['max_blocks_after']} {s['met_pct']:.1f}%, mean {mean} blocks",
        ]
    if "ablation" in r:
        ab = r["ablation"]
        lines += [
            "",
            f"ablation: drift over {ab['total_frames']} frames (windows of {ab['window']}), "
            f"{ab['switches']} switches",
            f"  {'variant':28s} {'first%':>7s} {'last%':>7s} {'drop':>6s} "
            f"{'switch<=2%':>11s} {'blocks':>7s}",
        ]
        for row in ab["rows"]:
            mean = row["switch_mean_blocks"]
            lines.append(
                f"  {row['name']:28s} {_pct(row['drift_first_pct']):>7s} "
                f"{_pct(row['drift_last_pct']):>7s} {_pct(row['drift_drop_points']):>6s} "
                f"{row['switch_within_2_pct']:11.1f} {'-' if mean is None else f'{mean:.2f}':>7s}"
            )
    return "\n".join(lines)


def default_out(preset: str, *, oracle: bool) -> Path:
    """./eval_<model name>_<date>.json (eval_oracle_... for the oracle), in the current
    directory, never the source tree."""
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
    name = "oracle" if oracle else (Path(preset).name or "model")
    return Path.cwd() / f"eval_{name}_{date}.json"


def write_report(report: dict[str, Any], path: Path) -> None:
    """The report as indented JSON (strict: no NaN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
