"""Assemble a trained autoencoder and generator into an embedded bundle (models/embedded.py).

The generator's EMA weights become ``generator.safetensors``; the stream
defaults follow from how it was trained: its block size, a cache of one sink
and the rest of the training clip as the window (so inference never attends
further than training did), and its sampling schedule.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, get_args

from engine.schedule import Sampler
from models.embedded import BUNDLE_FILE
from models.train.autoencoder import DECODER_FILE, ENCODER_FILE, SIDECAR_FILE
from models.train.generator import CHECKPOINT_STATE, GENERATOR_EMA_FILE, GENERATOR_SIDECAR

SINKS = 1  # attention-sink latent frames of the embedded default
# The step rule a bundle streams with unless told otherwise: the deterministic flow
# ODE suited the patch-(1,2,2) generators; which rule suits a generator is measured
# (the training job records its own in job.json: see docs/models/world.md).
DEFAULT_SAMPLER: Sampler = "euler"


def stream_defaults(
    generator_config: dict[str, Any],
    size: int,
    fps: int = 16,
    sampler: Sampler = DEFAULT_SAMPLER,
) -> dict[str, Any]:
    frames, block = generator_config["frames"], generator_config["block_frames"]
    return {
        "height": size,
        "width": size,
        "fps": fps,
        "steps": list(generator_config["sample_steps"]),
        "shift": generator_config["shift"],
        "context_step": 0,
        "sampler": sampler,
        "block_frames": block,
        "sinks": SINKS,
        "window": frames - SINKS - block,
    }


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("config", "steps_done", "loss_start", "loss_final", "wall_s", "steps_per_s", "hardware")
    out = {k: record[k] for k in keep if k in record}
    out.update({k: v for k, v in record.items() if k.startswith("psnr")})
    return out


def _record(folder: Path, names: tuple[str, ...]) -> dict[str, Any]:
    for name in names:
        if (folder / name).is_file():
            record: dict[str, Any] = json.loads((folder / name).read_text())
            return record
    raise FileNotFoundError(f"{folder} has none of {', '.join(names)}")


def write_bundle(
    autoencoder: Path, generator: Path, out: Path, *, sampler: Sampler = DEFAULT_SAMPLER
) -> dict[str, Any]:
    """Copy the weights into ``out`` and write its ``bundle.json``; returns that JSON.

    ``autoencoder``: a `train decoder` run or a bundle (its decoder and encoder are
    reused). ``generator``: a `train generator` run or a job's checkpoint folder.
    ``sampler``: the step rule the bundle streams with by default.
    """
    if sampler not in get_args(Sampler):
        raise ValueError(f"sampler must be one of {get_args(Sampler)}, got {sampler!r}")
    ae = _record(autoencoder, (SIDECAR_FILE, BUNDLE_FILE))
    gen = _record(generator, (GENERATOR_SIDECAR, CHECKPOINT_STATE))
    if "taehv" not in ae or "wan" not in gen:
        raise ValueError(f"{autoencoder} or {generator} is not a training run or bundle")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(autoencoder / DECODER_FILE, out / "decoder.safetensors")
    shutil.copyfile(autoencoder / ENCODER_FILE, out / "encoder.safetensors")
    shutil.copyfile(generator / GENERATOR_EMA_FILE, out / "generator.safetensors")
    size = int(gen["latent_set"]["config"]["size"])
    meta = {
        "name": out.name,
        "wan": gen["wan"],
        "taehv": ae["taehv"],
        "latent_mean": gen["latent_mean"],
        "latent_std": gen["latent_std"],
        "defaults": stream_defaults(gen["config"], size, sampler=sampler),
        "training": {
            "autoencoder": _summary(ae.get("training", {}).get("autoencoder", ae)),
            "generator": _summary(gen),
            "latent_set": gen["latent_set"],
        },
    }
    (out / BUNDLE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
