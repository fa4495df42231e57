"""The generator's training set: world clips encoded once by the trained TAEHV encoder.

Encoding is the expensive part of a generator step on a CPU (about 0.5 s per
32-frame 128x128 clip on two cores), so clips are encoded once and reused for
many epochs. Each clip keeps its scene, so prompts are drawn fresh from the
train phrasings, and a few phrasings per clip are embedded by the sentence
encoder up front.

File layout (``torch.save``)::

    latents      float16 [N, L, C, h, w]   raw encoder output (not normalised)
    mean, std    float32 [C]               per-channel statistics over all latents
    embeds       float16 [P, T, 384]       prompt token embeddings, zero-padded to T
    prompt_index int64   [N, K]            row of ``embeds`` for phrasing k of clip n
    starts       int64   [N]               world frame each clip starts at (0: a stream start)
    prompts      list[str] (P)             the phrasings, for inspection
    meta         dict                      size, frames, seed, encoder sidecar, wall time

The generator trains on ``(latents - mean) / std``; the same statistics travel
with the committed weights so that sampled latents are de-normalised before
decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.decoders.taehv import TinyVideoEncoder
from models.text import SentenceEncoder
from models.train.data import MAX_START_FRAME
from models.world import WorldStream, make_prompt, sample_scene
from models.world.scene import Layout, Scene


@dataclass(frozen=True)
class LatentSetConfig:
    """How many clips, how long, at what size; a pure function of ``seed``."""

    clips: int = 1600
    frames: int = 32  # video frames per clip (8 latent frames)
    size: int = 128
    phrasings: int = 3  # train prompts embedded per clip
    text_len: int = 32  # token rows kept per prompt (the generator's text_len)
    seed: int = 1  # differs from the autoencoder's data stream (seed 0)
    encode_batch: int = 2  # small passes keep activations in cache (8 was 2x slower)
    layout: Layout = "random"  # scene layout (models.world.scene.sample_scene)
    # Fraction of clips that start at frame 0, where a stream starts; the rest
    # start anywhere in the first MAX_START_FRAME frames and teach continuation,
    # bounces included. None: every clip starts anywhere (the committed model's set).
    head_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.clips < 1 or self.phrasings < 1 or self.encode_batch < 1:
            raise ValueError(f"clips, phrasings and encode_batch must be >= 1: {self}")
        if self.frames < 4 or self.frames % 4:
            raise ValueError(f"frames must be a positive multiple of 4, got {self.frames}")
        if self.size % 8:
            raise ValueError(f"size must be a multiple of 8, got {self.size}")
        if self.head_fraction is not None and not 0.0 <= self.head_fraction <= 1.0:
            raise ValueError(f"head_fraction must be in [0, 1], got {self.head_fraction}")


def _render(scene: Scene, start: int, frames: int, size: int) -> np.ndarray:
    stream = WorldStream(scene, height=size, width=size)
    stream.frame_index = start
    return stream.next_frames(frames)


def build_latent_set(
    config: LatentSetConfig,
    encoder: TinyVideoEncoder,
    text: SentenceEncoder,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Render, encode and embed ``config.clips`` clips; returns the dict described above."""
    rng = np.random.default_rng(config.seed)
    scenes: list[Scene] = []
    starts: list[int] = []
    for _ in range(config.clips):
        scenes.append(sample_scene(rng, layout=config.layout))
        if config.head_fraction is None:
            starts.append(int(rng.integers(MAX_START_FRAME)))
        elif rng.random() < config.head_fraction:
            starts.append(0)
        else:
            starts.append(int(rng.integers(1, MAX_START_FRAME)))

    t0 = time.perf_counter()
    chunks: list[Tensor] = []
    device = next(encoder.parameters()).device
    with torch.inference_mode():
        for first in range(0, config.clips, config.encode_batch):
            idx = range(first, min(config.clips, first + config.encode_batch))
            clips = np.stack(
                [_render(scenes[i], starts[i], config.frames, config.size) for i in idx]
            )
            x = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float().div_(255.0)
            chunks.append(encoder(x.to(device)).to("cpu", torch.float16))
            done = idx[-1] + 1
            if progress is not None and done % 40 < config.encode_batch:
                rate = done / (time.perf_counter() - t0)
                progress(
                    f"encoded {done}/{config.clips} clips, {rate:.1f} clips/s, "
                    f"eta {(config.clips - done) / rate:.0f}s"
                )
    latents = torch.cat(chunks)
    flat = latents.float().transpose(0, 2).flatten(1)  # [C, everything]
    mean, std = flat.mean(dim=1), flat.std(dim=1)

    prompts: list[str] = []
    rows: dict[str, int] = {}
    index = np.empty((config.clips, config.phrasings), dtype=np.int64)
    for n, scene in enumerate(scenes):
        for k in range(config.phrasings):
            p = make_prompt(scene, "train", rng)
            if p not in rows:
                rows[p] = len(prompts)
                prompts.append(p)
            index[n, k] = rows[p]
    embeds = torch.zeros(len(prompts), config.text_len, 384, dtype=torch.float16)
    for i, p in enumerate(prompts):
        e = text.encode(p)[: config.text_len]
        embeds[i, : e.shape[0]] = e.to(torch.float16)
    if progress is not None:
        progress(f"embedded {len(prompts)} prompts")
    return {
        "latents": latents,
        "mean": mean,
        "std": std,
        "embeds": embeds,
        "prompt_index": torch.from_numpy(index),
        "starts": torch.tensor(starts, dtype=torch.int64),
        "prompts": prompts,
        "meta": {"config": asdict(config), "wall_s": time.perf_counter() - t0},
    }


def save_latent_set(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)


def load_latent_set(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"no latent set at {path}: build one with `framecast train latents --out {path}`"
        )
    data: dict[str, Any] = torch.load(path, weights_only=False)
    return data
