"""The training job that spans sessions: checkpoints that resume exactly, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import fake_latent_set
from safetensors.torch import load_file

from models.train.generator import (
    GENERATOR_EMA_FILE,
    GENERATOR_FILE,
    GeneratorTrainConfig,
    GeneratorTrainer,
    edge_mask,
    loss_weights,
    motion_mask,
)
from models.train.job import TrainingJob, load_job, run_job
from models.train.latents import LatentSetConfig

ROOT = Path(__file__).resolve().parents[2]


def _config(data: Path, **kw: object) -> GeneratorTrainConfig:
    fields: dict[str, object] = dict(
        data=data, preset="nano", steps=1000, batch=2, log_every=2, lr=1e-3, warmup=2
    )
    fields.update(kw)
    return GeneratorTrainConfig(**fields)  # type: ignore[arg-type]


def test_checkpoint_restores_step_rng_and_weights(tmp_path: Path) -> None:
    fake_latent_set(tmp_path / "lat.pt")
    a = GeneratorTrainer(_config(tmp_path / "lat.pt"))
    for _ in range(4):
        a.step()
    a.save_checkpoint(tmp_path / "ck")
    for name in (GENERATOR_FILE, GENERATOR_EMA_FILE):
        assert all(
            v.dtype == torch.float16 for v in load_file(str(tmp_path / "ck" / name)).values()
        )

    b = GeneratorTrainer(_config(tmp_path / "lat.pt"))
    b.load_checkpoint(tmp_path / "ck", rewarm=3)
    assert b.step_count == 4 and b.curve == a.curve
    # the data position and the noise stream go on where they stopped
    assert torch.equal(a.sampler().latents, b.sampler().latents)
    assert torch.equal(torch.randn(5, generator=a.gen), torch.randn(5, generator=b.gen))
    for pa, pb in zip(a.ema.parameters(), b.ema.parameters(), strict=True):
        torch.testing.assert_close(pb, pa.half().float(), atol=0, rtol=0)
    # a warm restart: the learning rate climbs again from near zero
    assert b.lr() < a.lr() / 2
    a.step_count = b.step_count = 4 + 3  # past the re-warmup: the job's own schedule
    assert b.lr() == a.lr()


def test_motion_weights_mark_where_the_object_left_and_arrived() -> None:
    x0 = torch.zeros(1, 3, 16, 8, 8)
    x0[:, 0, :, 2, 2] = 2.0
    x0[:, 1, :, 2, 3] = 2.0  # moved one latent pixel right
    x0[:, 2, :, 2, 3] = 2.0  # stayed
    m = motion_mask(x0)
    assert m[0, 0].sum() == 0  # no previous frame
    assert m[0, 1, 2, 2] == 1 and m[0, 1, 2, 3] == 1 and m[0, 1].sum() == 2
    assert m[0, 2].sum() == 0
    w = loss_weights(x0, 0.0, 3.0)
    assert float(w[0, 1, 2, 3]) == 4.0 and float(w[0, 2, 2, 3]) == 1.0


def test_edge_weights_mark_the_outline_not_the_inside_or_far_away() -> None:
    x0 = torch.zeros(1, 1, 16, 12, 12)
    x0[:, 0, :, 3:8, 3:8] = 2.0  # a 5x5 square object
    e = edge_mask(x0)[0, 0]
    assert e[5, 5] == 0  # the middle of the object
    assert e[3, 3] == 1 and e[2, 5] == 1 and e[7, 7] == 1 and e[8, 5] == 1  # either side of it
    assert e[0, 0] == 0 and e[11, 11] == 0  # background far away
    assert e.sum() == 7 * 7 - 3 * 3  # the ring between the dilated and the eroded square
    w = loss_weights(x0, 0.0, 0.0, 2.0)
    assert float(w[0, 0, 3, 3]) == 3.0 and float(w[0, 0, 5, 5]) == 1.0


def _job(tmp_path: Path, **kw: object) -> TrainingJob:
    fake_latent_set(tmp_path / "lat.pt")
    fields: dict[str, object] = dict(
        folder=tmp_path / "job",
        recipe=_config(tmp_path / "lat.pt"),
        latents=LatentSetConfig(clips=6),
        total_steps=1000,
        eval_every=0,
    )
    fields.update(kw)
    job = TrainingJob(**fields)  # type: ignore[arg-type]
    job.write()
    return job


def test_job_resumes_where_it_stopped(tmp_path: Path) -> None:
    job = load_job(_job(tmp_path).folder)  # through job.json
    first = run_job(job, max_steps=6)
    assert first["step"] == 6 and len(first["segments"]) == 1
    second = run_job(load_job(job.folder), max_steps=10)
    assert second["step"] == 10
    assert [(s["start_step"], s["end_step"]) for s in second["segments"]] == [(0, 6), (6, 10)]
    assert [p[0] for p in second["curve"]] == [2, 4, 6, 8, 10]
    assert second["wall_s"] >= first["wall_s"]
    # the checkpoint is a bundle's generator: write_bundle takes it as is
    assert json.loads((job.checkpoint / "state.json").read_text())["wan"]["dim"] == 64


def test_job_evaluates_and_stops_on_request(tmp_path: Path) -> None:
    job = _job(tmp_path, eval_every=4)
    stop = threading.Event()
    seen: list[int] = []

    def evaluate(checkpoint: Path, step: int) -> dict[str, object]:
        assert (checkpoint / "state.json").is_file()
        seen.append(step)
        if step == 8:
            stop.set()
        return {"colour": 12.5}

    state = run_job(job, evaluate=evaluate, stop=stop)
    assert seen == [4, 8] and state["step"] == 8
    assert [(e["step"], e["colour"]) for e in state["evals"]] == [(4, 12.5), (8, 12.5)]


def test_load_job_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no training job"):
        load_job(tmp_path / "nowhere")
    job = _job(tmp_path)
    raw = json.loads((job.folder / "job.json").read_text())
    raw["recipe"]["learning_speed"] = 3
    (job.folder / "job.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="learning_speed"):
        load_job(job.folder)


def test_committed_job_is_valid() -> None:
    """The repository's own job (what every session resumes) loads."""
    job = load_job(ROOT / "training" / "world")
    assert job.recipe.preset in ("tiny", "tiny-p4")
    assert job.total_steps > 0
    assert job.sampler in ("euler", "renoise")


def test_cli_resume_saves_on_sigterm(tmp_path: Path) -> None:
    """`framecast train resume` in a real process: SIGTERM finishes the step and saves."""
    job = _job(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "apps.cli", "train", "resume", "--job", str(job.folder)]
    proc = subprocess.Popen(
        [*cmd, "--threads", "1"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # wait for training to be under way
        if "step 4/" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, rest
    state = json.loads((job.checkpoint / "state.json").read_text())
    assert state["step"] >= 4
    proc2 = subprocess.run(
        [*cmd, "--max-steps", str(state["step"] + 2)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc2.returncode == 0, proc2.stderr
    assert f"resumed {job.folder} at step {state['step']}" in proc2.stderr
    assert json.loads((job.checkpoint / "state.json").read_text())["step"] == state["step"] + 2


def test_time_stopped_by_sigstop_is_not_counted_as_training(tmp_path: Path) -> None:
    """Sessions pause the job with SIGSTOP while they time things; a real process is
    stopped for 8 s mid-run and its recorded wall time leaves those seconds out."""
    job = _job(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "apps.cli", "train", "resume", "--job", str(job.folder)]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*cmd, "--threads", "1", "--no-eval"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # training under way, with a step time to compare against
        if "step 8/" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGSTOP)
    time.sleep(8.0)
    proc.send_signal(signal.SIGCONT)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[1]
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, rest
    state = json.loads((job.checkpoint / "state.json").read_text())
    segment = state["segments"][-1]
    assert segment.get("paused_s", 0.0) >= 6.0, segment
    assert segment["wall_s"] <= elapsed - 6.0, (segment, elapsed)
    assert state["wall_s"] <= elapsed - 6.0


def test_bf16_autocast_trains_and_keeps_float32_weights(tmp_path: Path) -> None:
    fake_latent_set(tmp_path / "lat.pt")
    with pytest.raises(ValueError, match="autocast"):
        _config(tmp_path / "lat.pt", autocast="fp8")
    trainer = GeneratorTrainer(_config(tmp_path / "lat.pt", autocast="bf16", lr=3e-3))
    assert trainer.autocast == torch.bfloat16
    for _ in range(20):
        trainer.step()
    losses = [loss for _, loss in trainer.curve]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    # "auto" decides by measuring this machine; either answer is valid, never an error
    auto = GeneratorTrainer(_config(tmp_path / "lat.pt", autocast="auto")).autocast
    assert auto in (None, torch.bfloat16)
