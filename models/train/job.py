"""A training job that spans sessions: one recipe, one folder, resumed where it stopped.

The embedded model needs far more CPU time than one session gives, so its
training is a *job*: a folder (``training/world`` in the repository, outside
the installed package) holding

    job.json                    the recipe, the latent set it trains on, the horizon
    checkpoint/                 fp16 weights and EMA + state.json (step, RNG states,
                                loss curve, held-out scores, wall time per segment)

``framecast train resume`` loads the job, rebuilds the latent set if this
machine lacks it (deterministic from its seed; about ten minutes on 2 cores),
restores the checkpoint and trains until it is stopped (SIGTERM or Ctrl-C: it
finishes the step, saves, exits 0), a time limit passes, or the horizon is
reached. It saves every ``save_minutes`` too, so a killed process loses little.
The optimiser is not in the checkpoint: a resume is a warm restart with a short
re-warmup, which keeps the checkpoint small enough to commit every session.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.schedule import Sampler
from models.train.autoencoder import hardware
from models.train.bundle import DEFAULT_SAMPLER
from models.train.generator import CHECKPOINT_STATE, GeneratorTrainConfig, GeneratorTrainer
from models.train.latents import LatentSetConfig

JOB_FILE = "job.json"
CHECKPOINT_DIR = "checkpoint"
DEFAULT_JOB = Path("training/world")

# A step that takes this many times the usual step time (and at least PAUSE_MIN_S) was
# paused, not trained: sessions stop the job with SIGSTOP while they time things, and
# the job's wall time should say how long it trained.
PAUSE_FACTOR = 10.0
PAUSE_MIN_S = 5.0

# (checkpoint folder, step) -> scores to record, e.g. held-out adherence in percent
Evaluator = Callable[[Path, int], dict[str, Any]]


@dataclass(frozen=True)
class TrainingJob:
    """What ``job.json`` holds; paths in it are relative to the repository root (cwd)."""

    folder: Path
    recipe: GeneratorTrainConfig
    latents: LatentSetConfig
    autoencoder: Path = Path("models/weights/world")  # encodes the latent set
    total_steps: int = 100_000  # the learning-rate schedule's horizon
    rewarm: int = 50  # warmup steps after each resume (the optimiser starts fresh)
    save_minutes: float = 10.0
    eval_every: int = 1000  # steps between held-out evaluations (0: never)
    eval_prompts: int = 16
    sampler: Sampler = DEFAULT_SAMPLER  # the step rule its evaluations and bundles use
    note: str = ""

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT_DIR

    def to_json(self) -> dict[str, Any]:
        recipe = dataclasses.asdict(self.recipe)
        for key in ("data", "out", "init"):
            recipe[key] = None if recipe[key] is None else str(recipe[key])
        recipe["sample_steps"] = list(self.recipe.sample_steps)
        return {
            "recipe": recipe,
            "latents": dataclasses.asdict(self.latents),
            "autoencoder": str(self.autoencoder),
            "total_steps": self.total_steps,
            "rewarm": self.rewarm,
            "save_minutes": self.save_minutes,
            "eval_every": self.eval_every,
            "eval_prompts": self.eval_prompts,
            "sampler": self.sampler,
            "note": self.note,
        }

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / JOB_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def load_job(folder: Path) -> TrainingJob:
    """Read ``folder/job.json``; unknown or missing fields are named."""
    path = folder / JOB_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no training job at {folder} (missing {JOB_FILE}); the embedded model's job is "
            f"{DEFAULT_JOB}, run from the repository root"
        )
    raw = json.loads(path.read_text())
    try:
        recipe_fields = dict(raw.pop("recipe"))
        latents = LatentSetConfig(**raw.pop("latents"))
    except KeyError as e:
        raise ValueError(f"{path} has no {e.args[0]!r} section") from None
    for key in ("data", "out", "init"):
        if recipe_fields.get(key) is not None:
            recipe_fields[key] = Path(recipe_fields[key])
    recipe_fields["sample_steps"] = tuple(recipe_fields["sample_steps"])
    known = {f.name for f in dataclasses.fields(GeneratorTrainConfig)}
    unknown = set(recipe_fields) - known
    if unknown:
        raise ValueError(f"{path}: unknown recipe fields {sorted(unknown)}")
    if "autoencoder" in raw:
        raw["autoencoder"] = Path(raw["autoencoder"])
    try:
        return TrainingJob(folder, GeneratorTrainConfig(**recipe_fields), latents, **raw)
    except TypeError as e:
        raise ValueError(f"{path}: {e}") from None


def ensure_latent_set(job: TrainingJob, progress: Callable[[object], None] | None = None) -> None:
    """Build the job's latent set if this machine does not have it yet."""
    if job.recipe.data.is_file():
        return
    from models.text import SentenceEncoder
    from models.train.autoencoder import load_autoencoder
    from models.train.latents import build_latent_set, save_latent_set

    if progress is not None:
        progress(f"building the latent set {job.recipe.data} ({job.latents.clips} clips) first")
    encoder, _ = load_autoencoder(job.autoencoder)
    data = build_latent_set(
        job.latents, encoder, SentenceEncoder(max_tokens=job.latents.text_len), progress=progress
    )
    save_latent_set(data, job.recipe.data)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM/SIGINT (main thread only), so a step can finish and save."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: object) -> None:
        event.set()

    for s in previous:
        signal.signal(s, handler)
    try:
        yield event
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_job(
    job: TrainingJob,
    *,
    minutes: float | None = None,
    max_steps: int | None = None,
    progress: Callable[[object], None] | None = None,
    evaluate: Evaluator | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Resume (or start) ``job`` and train until stopped; returns the saved state."""
    ensure_latent_set(job, progress)
    trainer = GeneratorTrainer(job.recipe, total_steps=job.total_steps)
    state: dict[str, Any] = {"segments": [], "evals": []}
    if (job.checkpoint / CHECKPOINT_STATE).is_file():
        state = trainer.load_checkpoint(job.checkpoint, rewarm=job.rewarm)
        if progress is not None:
            progress(f"resumed {job.folder} at step {trainer.step_count}")
    elif progress is not None:
        progress(f"starting {job.folder} from scratch")
    segments: list[dict[str, Any]] = list(state.get("segments", []))
    evals: list[dict[str, Any]] = list(state.get("evals", []))
    segment = {
        "start_step": trainer.step_count,
        "end_step": trainer.step_count,
        "wall_s": 0.0,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "hardware": hardware(),
        "autocast": None if trainer.autocast is None else str(trainer.autocast),
    }
    stop = stop or threading.Event()
    t0 = last_save = time.perf_counter()
    deadline = None if minutes is None else t0 + 60 * minutes
    last = job.total_steps if max_steps is None else min(job.total_steps, max_steps)

    step_s: float | None = None  # smoothed seconds per step
    paused = 0.0  # seconds the job was stopped (SIGSTOP) or starved: not training time

    def save() -> dict[str, Any]:
        segment["end_step"] = trainer.step_count
        segment["wall_s"] = time.perf_counter() - t0 - paused
        extra = {
            "segments": [*segments, segment],
            "evals": evals,
            "config": job.to_json()["recipe"],
        }
        trainer.save_checkpoint(job.checkpoint, extra)
        return json.loads((job.checkpoint / CHECKPOINT_STATE).read_text())

    t_iter = time.perf_counter()
    while trainer.step_count < last and not stop.is_set():
        if deadline is not None and time.perf_counter() >= deadline:
            break
        report = trainer.step()
        if report is not None and progress is not None:
            progress(report)
        timed = True  # this iteration's time is one step's (plus logging)
        if evaluate is not None and job.eval_every and trainer.step_count % job.eval_every == 0:
            saved = save()
            t_eval = time.perf_counter()
            scores = evaluate(job.checkpoint, trainer.step_count)
            trainer.exclude(time.perf_counter() - t_eval)  # wall time counts training only
            last_save = time.perf_counter()
            evals.append({"step": trainer.step_count, "wall_s": saved["wall_s"], **scores})
            if progress is not None:
                progress(f"step {trainer.step_count}: held-out {scores}")
            timed = False
        if time.perf_counter() - last_save >= 60 * job.save_minutes:
            save()
            last_save = time.perf_counter()
        now = time.perf_counter()
        took, t_iter = now - t_iter, now
        if not timed:
            continue
        if step_s is not None and took > max(PAUSE_FACTOR * step_s, PAUSE_MIN_S):
            trainer.exclude(took - step_s)  # a session paused the job (kill -STOP)
            paused += took - step_s
            segment["paused_s"] = round(paused, 1)
        else:
            step_s = took if step_s is None else 0.9 * step_s + 0.1 * took
    report = trainer.flush_report()  # the loss since the last log point joins the curve
    if report is not None and progress is not None:
        progress(report)
    final = save()
    if progress is not None:
        progress(
            f"saved {job.checkpoint} at step {trainer.step_count} "
            f"({final['wall_s'] / 3600:.2f} h trained in all)"
        )
    return final
