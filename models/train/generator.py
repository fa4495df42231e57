"""Train a tiny causal Wan DiT on world latents for few-step, block-causal streaming.

Objective: flow matching with teacher forcing (CausVid's setup). Every training
clip is fed twice in one pass (``CausalWanModel.forward_teacher``): a clean copy
that plays the KV cache and a noisy copy whose blocks are denoised against the
clean earlier blocks, so every frame trains under inference's exact attention
pattern. Three choices aim at what streaming needs:

- Few steps: most noisy frames sit exactly at the sampling schedule's noise
  levels (``sample_steps`` warped by ``shift``), the rest anywhere in (0, 1],
  so a 4-step sampler visits levels the model knows best.
- Long rollouts: the clean copy is lightly re-noised (sigma up to
  ``context_sigma_max``, told to the model through its timestep), so generated
  context, which is never perfect, looks like training context; and half the
  clips put frame 0 (the attention sink) a few latent frames before the rest,
  as the rolling cache does after the window moves on.
- Prompt switches: some clips splice the start of one scene before another
  scene under the second scene's prompt, with the loss only on the second
  scene's frames, which is what KV-recache presents after a switch.
- Stream starts: a block with no context is what a stream's first block is,
  so frame 0 of a training window is trained only when it is a world clip's
  frame 0 (latent sets record where each clip starts). A window cut from the
  middle of a clip would teach the first block that an object may be
  anywhere and moving against its prompt (after a bounce): a blur.

A run is a pure function of its config and latent set on one machine (seeded
weights, batch sampler and noise). Weights are saved with an EMA copy.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from engine.schedule import FlowSchedule
from models.train.autoencoder import Progress, hardware, lr_scale
from models.train.latents import load_latent_set
from models.train.precision import autocast_dtype
from models.wan.config import preset
from models.wan.model import CausalWanModel

GENERATOR_FILE = "generator.safetensors"
GENERATOR_EMA_FILE = "generator_ema.safetensors"
GENERATOR_SIDECAR = "generator.json"
CHECKPOINT_STATE = "state.json"  # a resumable checkpoint's step, RNG states and curves


@dataclass(frozen=True)
class GeneratorTrainConfig:
    """One teacher-forcing run of a tiny causal Wan DiT on a latent set."""

    data: Path = Path("out/world-latents.pt")
    preset: str = "tiny"
    # Override the preset's pooled prompt in adaLN (None: as the preset has it); for ablations.
    prompt_modulation: bool | None = None
    steps: int = 3000
    batch: int = 8
    frames: int = 6  # latent frames per training clip (>= sinks + window + block)
    block_frames: int = 1
    lr: float = 6e-4
    warmup: int = 100
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    ema: float = 0.998
    sample_steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    on_schedule: float = 0.7  # fraction of noisy frames exactly at a sampling level
    context_sigma_max: float = 0.1
    sink_gap: float = 0.5  # fraction of clips whose frame 0 comes earlier than the rest
    switch: float = 0.15  # fraction of clips that splice two scenes (prompt switch)
    self_context: float = 0.0  # fraction of clips whose cache copy is the model's own x0
    # Chance that a window of a clip starting at world frame 0 starts there too
    # (0: windows start anywhere, as for the committed model).
    head: float = 0.0
    # Extra loss weight on latent pixels that differ from their frame's background
    # (see `foreground_weights`): objects cover a tenth of a frame but carry the prompt.
    foreground_weight: float = 0.0
    # Extra loss weight on latent pixels that changed since the previous frame (where
    # an object left and where it arrived): copying the last frame stops being cheap.
    motion_weight: float = 0.0
    # Extra loss weight on the object's outline (latent pixels on the border of the
    # foreground mask, see `edge_mask`): where a square's corners and a triangle's
    # slopes are decided, and where a blob and a shape differ.
    edge_weight: float = 0.0
    # Chance that each word piece of a training prompt is dropped (zeroed): the model
    # learns to read the prompt from several of its words, not one phrasing's tokens,
    # for phrasings and words it never saw.
    text_dropout: float = 0.0
    # "off": float32; "bf16": bf16 autocast; "auto": bf16 only where this machine's bf16
    # GEMMs measure >= 1.5x faster than float32 (models/train/precision.py)
    autocast: str = "off"
    seed: int = 0
    log_every: int = 50
    save_every: int = 250  # steps between snapshots of the weights in ``out`` (stop any time)
    out: Path | None = None
    device: str = "cpu"
    threads: int | None = None
    init: Path | None = None  # continue from a past run's --out (weights and EMA; new optimizer)

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "frames", "block_frames", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.frames % self.block_frames:
            raise ValueError("frames must be a multiple of block_frames")
        if self.autocast not in ("off", "bf16", "auto"):
            raise ValueError(f"autocast must be off, bf16 or auto, got {self.autocast!r}")
        for name in ("on_schedule", "sink_gap", "switch", "self_context", "head", "text_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1]")
        if self.sink_gap + self.switch > 1.0:
            raise ValueError("sink_gap + switch must not exceed 1")


@dataclass
class Batch:
    latents: Tensor  # [B, F, C, h, w] normalised clean latents
    context: Tensor  # [B, T, 384]
    loss_mask: Tensor  # [B, F] 1 where the frame is trained


class ClipSampler:
    """Seeded batches of training clips from a latent set (see the module doc)."""

    def __init__(self, data: dict[str, Any], config: GeneratorTrainConfig) -> None:
        mean, std = data["mean"].float(), data["std"].float()
        self.latents = (data["latents"].float() - mean[:, None, None]) / std[:, None, None]
        self.embeds = data["embeds"].float()
        self.prompt_index = data["prompt_index"]
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        n, length = self.latents.shape[:2]
        if length < config.frames + 1:
            raise ValueError(
                f"latent clips have {length} frames; need frames + 1 = {config.frames + 1}"
            )
        self.clips, self.length = n, length
        # Older latent sets do not record starts: every window's frame 0 is trained.
        starts = data.get("starts")
        self.starts_known = starts is not None
        self.is_head = np.zeros(n, dtype=bool) if starts is None else (starts.numpy() == 0)

    def _offset(self, clip: int, count: int) -> int:
        """Where a window of ``count`` frames of ``clip`` starts (0: at the clip's start)."""
        if self.config.head > 0 and self.is_head[clip] and self.rng.random() < self.config.head:
            return 0
        return int(self.rng.integers(self.length - count + 1))

    def _pick(self, clip: int, start: int, count: int) -> Tensor:
        return self.latents[clip, start : start + count]

    def __call__(self) -> Batch:
        c, rng, f = self.config, self.rng, self.config.frames
        xs, ctx, masks = [], [], []
        for _ in range(c.batch):
            clip = int(rng.integers(self.clips))
            mask = torch.ones(f)
            r = float(rng.random())
            if r < c.switch:
                other = int(rng.integers(self.clips - 1))
                other += other >= clip
                k = int(rng.integers(1, f // 2 + 1))
                a = self._pick(other, self._offset(other, k), k)
                b = self._pick(clip, self._offset(clip, f - k), f - k)
                x = torch.cat([a, b])
                mask[:k] = 0.0
            elif r < c.switch + c.sink_gap:
                gap = int(rng.integers(1, self.length - f + 1))
                x = torch.cat([self._pick(clip, 0, 1), self._pick(clip, gap + 1, f - 1)])
                if self.starts_known:
                    mask[0] = float(self.is_head[clip])
            else:
                start = self._offset(clip, f)
                x = self._pick(clip, start, f)
                if self.starts_known:
                    mask[0] = float(self.is_head[clip] and start == 0)
            phrasing = int(rng.integers(self.prompt_index.shape[1]))
            xs.append(x)
            embed = self.embeds[int(self.prompt_index[clip, phrasing])]
            if c.text_dropout > 0:
                embed = _drop_words(embed, c.text_dropout, rng)
            ctx.append(embed)
            masks.append(mask)
        return Batch(torch.stack(xs), torch.stack(ctx), torch.stack(masks))


def _drop_words(embed: Tensor, rate: float, rng: np.random.Generator) -> Tensor:
    """[T, D] token embeddings with each word piece (not [CLS]/[SEP]) zeroed with
    probability ``rate``: zero rows read as padding (see pooled_prompt), so the
    prompt must be read from whichever words are left."""
    real = int((embed.abs().sum(dim=-1) > 0).sum())
    drop = np.zeros(embed.shape[0], dtype=bool)
    drop[1 : real - 1] = rng.random(max(0, real - 2)) < rate
    if not drop.any():
        return embed
    out = embed.clone()
    out[torch.from_numpy(drop)] = 0.0
    return out


def teacher_forcing_loss(
    model: CausalWanModel,
    batch: Batch,
    config: GeneratorTrainConfig,
    sigma_levels: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Masked flow-matching MSE of the noisy copy given the lightly noised clean copy."""
    x0 = batch.latents
    b, f = x0.shape[:2]
    device = x0.device
    on = torch.rand(b, f, generator=generator, device=device) < config.on_schedule
    level = sigma_levels[
        torch.randint(len(sigma_levels), (b, f), generator=generator, device=device)
    ]
    anywhere = torch.rand(b, f, generator=generator, device=device).clamp_min(0.02)
    sigma = torch.where(on, level, anywhere)
    noise = torch.randn(x0.shape, generator=generator, device=device)
    s = sigma[..., None, None, None]
    noisy = (1 - s) * x0 + s * noise
    ctx_sigma = config.context_sigma_max * torch.rand(b, f, generator=generator, device=device)
    cs = ctx_sigma[..., None, None, None]
    clean = (1 - cs) * x0 + cs * torch.randn(x0.shape, generator=generator, device=device)
    if config.self_context > 0:
        clean = _self_context(model, batch, config, sigma_levels, generator, clean)
    flow = model.forward_teacher(
        noisy,
        1000 * sigma,
        clean,
        1000 * ctx_sigma,
        batch.context,
        block_frames=config.block_frames,
    )
    err = (flow - (noise - x0)).pow(2).mean(dim=2)  # [B, F, h, w]
    if config.foreground_weight > 0 or config.motion_weight > 0 or config.edge_weight > 0:
        w = loss_weights(x0, config.foreground_weight, config.motion_weight, config.edge_weight)
        err = (err * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3))
    else:
        err = err.mean(dim=(2, 3))  # [B, F]
    return (err * batch.loss_mask).sum() / batch.loss_mask.sum().clamp_min(1.0)


FOREGROUND_THRESHOLD = 0.5  # mean squared distance (in std units) from the frame's median


def foreground_weights(x0: Tensor, weight: float) -> Tensor:
    """[B, F, C, h, w] clean latents -> [B, F, h, w] loss weights, 1 + weight on objects.

    The per-frame, per-channel median over positions is the background's latent
    (objects cover well under half a frame); a latent pixel whose channels sit far
    from it is an object or its edge. Plain MSE spends most of its gradient on the
    background, which the model gets right early (background accuracy ~98%
    while colour was ~30%).
    """
    return 1.0 + weight * foreground_mask(x0).float()


def foreground_mask(x0: Tensor) -> Tensor:
    """[B, F, C, h, w] clean latents -> [B, F, h, w] True on objects (see foreground_weights)."""
    median = x0.flatten(3).median(dim=3).values[..., None, None]
    return (x0 - median).pow(2).mean(dim=2) > FOREGROUND_THRESHOLD


MOTION_THRESHOLD = 0.5  # mean squared change (in std units) since the previous frame


def motion_mask(x0: Tensor) -> Tensor:
    """[B, F, C, h, w] clean latents -> [B, F, h, w] 1 where a latent pixel changed
    since the previous frame (frame 0 has no previous frame: all 0)."""
    moved = (x0[:, 1:] - x0[:, :-1]).pow(2).mean(dim=2) > MOTION_THRESHOLD
    return torch.cat([torch.zeros_like(moved[:, :1]), moved], dim=1).float()


def edge_mask(x0: Tensor) -> Tensor:
    """[B, F, C, h, w] clean latents -> [B, F, h, w] 1 on the border of each object:
    the foreground mask (see foreground_weights) dilated minus eroded, 3x3."""
    far = foreground_mask(x0).float()
    flat = far.flatten(0, 1)[:, None]  # [B*F, 1, h, w]
    dilated = torch.nn.functional.max_pool2d(flat, 3, stride=1, padding=1)
    eroded = -torch.nn.functional.max_pool2d(-flat, 3, stride=1, padding=1)
    return (dilated - eroded).view_as(far)


def loss_weights(x0: Tensor, foreground: float, motion: float, edge: float = 0.0) -> Tensor:
    """[B, F, h, w] per-pixel loss weights: 1, plus ``foreground`` on objects, plus
    ``motion`` where the frame changed, plus ``edge`` on objects' outlines (see
    foreground_weights, motion_mask and edge_mask)."""
    w = foreground_weights(x0, foreground) if foreground > 0 else torch.ones_like(x0[:, :, 0])
    if motion > 0:
        w = w + motion * motion_mask(x0)
    if edge > 0:
        w = w + edge * edge_mask(x0)
    return w


@torch.no_grad()
def _self_context(
    model: CausalWanModel,
    batch: Batch,
    config: GeneratorTrainConfig,
    sigma_levels: Tensor,
    generator: torch.Generator,
    clean: Tensor,
) -> Tensor:
    """Replace the cache copy of some clips by the model's own one-pass x0 estimates.

    Streaming commits what the model made, which is blurrier and fainter than
    data; trained only on data, each block loses a little more of an object
    until it fades (seen in early samples). Here the model denoises every frame
    from a sampling noise level given the true past, and its x0 estimates
    become the past the noisy copy must continue from, towards the true frames.
    """
    x0 = batch.latents
    b, f = x0.shape[:2]
    device = x0.device
    pick = sigma_levels[
        torch.randint(len(sigma_levels), (b, f), generator=generator, device=device)
    ]
    s = pick[..., None, None, None]
    noise = torch.randn(x0.shape, generator=generator, device=device)
    noisy = (1 - s) * x0 + s * noise
    zero = torch.zeros(b, f, device=device)
    flow = model.forward_teacher(
        noisy, 1000 * pick, x0, zero, batch.context, block_frames=config.block_frames
    )
    estimate = noisy - s * flow
    use = torch.rand(b, generator=generator, device=device) < config.self_context
    return torch.where(use[:, None, None, None, None], estimate, clean)


class GeneratorTrainer:
    """The state of one generator run: weights, EMA, optimiser, batch sampler and RNGs.

    ``step()`` trains one batch. ``save_checkpoint``/``load_checkpoint`` keep what
    a run needs to go on in another process or on another machine (see
    models/train/job.py): fp16 weights and EMA, the step, the sampler's and the
    noise generator's RNG states, the loss curve and the wall time so far. The
    optimiser is not kept (a warm restart: ``rewarm`` steps of linear warmup after
    a resume), which keeps a checkpoint small enough to commit.
    """

    def __init__(self, config: GeneratorTrainConfig, *, total_steps: int | None = None) -> None:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.config = config
        self.total_steps = total_steps or config.steps  # the learning-rate schedule's horizon
        self.device = torch.device(config.device)
        self.data = load_latent_set(config.data)
        self.sampler = ClipSampler(self.data, config)
        wan = preset(config.preset)
        # the data decides the input widths: latent channels and prompt embedding shape
        channels = self.data["latents"].shape[2]
        text_len, text_dim = self.data["embeds"].shape[1:]
        wan = dataclasses.replace(
            wan, in_dim=channels, out_dim=channels, text_dim=text_dim, text_len=text_len
        )
        if config.prompt_modulation is not None:
            wan = dataclasses.replace(wan, prompt_modulation=config.prompt_modulation)
        model = CausalWanModel(wan).init_weights(config.seed, zero_head=True)
        self.model = model.to(self.device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        if config.init is not None:
            for module, name in ((self.model, GENERATOR_FILE), (self.ema, GENERATOR_EMA_FILE)):
                state = load_file(str(config.init / name), device=str(self.device))
                module.load_state_dict({k: v.float() for k, v in state.items()})
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        schedule = FlowSchedule(steps=config.sample_steps, shift=config.shift)
        self.levels = torch.tensor(schedule.sigmas, device=self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(config.seed)
        self.autocast = autocast_dtype(config.autocast, self.device)
        self.step_count = 0
        self.resumed_at = 0  # the step a warm restart began at (re-warmup from there)
        self.rewarm = 0
        self.curve: list[list[float]] = []  # [step, mean loss since the last point]
        self.wall_before = 0.0  # seconds trained by earlier processes of this run
        self._window = torch.zeros((), device=self.device)
        self._window_start = 0
        self._t0 = time.perf_counter()

    @property
    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self._t0

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (spent on evaluation, say) out of the run's wall time."""
        self._t0 += seconds

    def lr(self) -> float:
        c = self.config
        scale = lr_scale(min(self.step_count, self.total_steps - 1), self.total_steps, c.warmup)
        if self.rewarm and self.step_count - self.resumed_at < self.rewarm:
            scale *= (self.step_count - self.resumed_at + 1) / self.rewarm
        return c.lr * scale

    def step(self) -> Progress | None:
        """One optimiser step; a Progress report every ``log_every`` steps, else None."""
        c = self.config
        for group in self.opt.param_groups:
            group["lr"] = self.lr()
        batch = self.sampler()
        batch = Batch(*(t.to(self.device) for t in (batch.latents, batch.context, batch.loss_mask)))
        with torch.autocast(
            self.device.type,
            dtype=self.autocast or torch.float32,
            enabled=self.autocast is not None,
        ):
            loss = teacher_forcing_loss(self.model, batch, c, self.levels, self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.opt.step()
        with torch.no_grad():
            decay = min(c.ema, (1 + self.step_count) / (10 + self.step_count))
            for pe, pm in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        self._window += loss.detach()
        self.step_count += 1
        return None if self.step_count % c.log_every else self.flush_report()

    def flush_report(self) -> Progress | None:
        """The report for steps since the last one (the end of a run between log points)."""
        done = self.step_count
        if done == self._window_start:
            return None
        mean = float(self._window) / (done - self._window_start)
        self._window.zero_()
        self._window_start = done
        self.curve.append([done, mean])
        rate = (done - self.resumed_at) / max(1e-9, time.perf_counter() - self._t0)
        target = max(self.total_steps, done)
        return Progress(done, target, mean, rate, (target - done) / rate)

    def metrics(self) -> dict[str, Any]:
        return _metrics(self.curve, self.step_count, self.wall_s)

    def save(self, out: Path) -> None:
        """Float32 weights and EMA plus the sidecar, as `train generator` writes them."""
        save_generator(out, self.model, self.ema, self.config, self.data, self.metrics())

    def save_checkpoint(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        """fp16 weights and EMA plus ``state.json``: everything a resume needs but AdamW.

        Written to a temporary folder first and renamed, so a run stopped mid-write
        keeps its previous checkpoint.
        """
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for module, name in ((self.model, GENERATOR_FILE), (self.ema, GENERATOR_EMA_FILE)):
            state = {
                k: v.detach().to("cpu", torch.float16).contiguous()
                for k, v in module.state_dict().items()
            }
            save_file(state, str(tmp / name), metadata={"format": "pt"})
        state = {
            "step": self.step_count,
            "wall_s": self.wall_s,
            "curve": self.curve,
            "sampler_rng": self.sampler.rng.bit_generator.state,
            "noise_rng": base64.b64encode(self.gen.get_state().numpy().tobytes()).decode(),
            "wan": dataclasses.asdict(self.model.config),
            "latent_mean": self.data["mean"].tolist(),
            "latent_std": self.data["std"].tolist(),
            "latent_set": self.data["meta"],
            **(extra or {}),
        }
        (tmp / CHECKPOINT_STATE).write_text(json.dumps(state, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)

    def load_checkpoint(self, folder: Path, rewarm: int = 50) -> dict[str, Any]:
        """Continue from ``save_checkpoint``'s folder; returns its state.json."""
        state = json.loads((folder / CHECKPOINT_STATE).read_text())
        for module, name in ((self.model, GENERATOR_FILE), (self.ema, GENERATOR_EMA_FILE)):
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint {folder} has no {name}")
            weights = load_file(str(path), device=str(self.device))
            module.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
        self.step_count = self.resumed_at = self._window_start = int(state["step"])
        self.rewarm = rewarm
        self.curve = [list(p) for p in state["curve"]]
        self.wall_before = float(state["wall_s"])
        self._t0 = time.perf_counter()
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        raw = np.frombuffer(base64.b64decode(state["noise_rng"]), dtype=np.uint8).copy()
        self.gen.set_state(torch.from_numpy(raw))
        return state


def train_generator(
    config: GeneratorTrainConfig, progress: Callable[[Progress], None] | None = None
) -> dict[str, Any]:
    """Train from scratch (or from ``config.init``); save weights, EMA and a sidecar to
    ``config.out`` every ``save_every`` steps and at the end."""
    trainer = GeneratorTrainer(config)
    for _ in range(config.steps):
        report = trainer.step()
        done = trainer.step_count
        if report is None and done == config.steps:
            report = trainer.flush_report()
        if report is not None and progress is not None:
            progress(report)
        if config.out is not None and (done % config.save_every == 0 or done == config.steps):
            trainer.save(config.out)
    return trainer.metrics()


def _metrics(curve: list[list[float]], steps: int, wall: float) -> dict[str, Any]:
    return {
        "steps_done": steps,
        "loss_start": curve[0][1] if curve else float("nan"),
        "loss_final": curve[-1][1] if curve else float("nan"),
        "loss_curve": curve,
        "wall_s": wall,
        "steps_per_s": steps / wall,
        "hardware": hardware(),
    }


def save_generator(
    out: Path,
    model: CausalWanModel,
    ema: CausalWanModel,
    config: GeneratorTrainConfig,
    data: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for module, name in ((model, GENERATOR_FILE), (ema, GENERATOR_EMA_FILE)):
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(out / name), metadata={"format": "pt"})
    cfg = dataclasses.asdict(config)
    cfg["data"], cfg["out"] = str(config.data), str(config.out)
    cfg["init"] = None if config.init is None else str(config.init)
    sidecar = {
        "wan": dataclasses.asdict(model.config),
        "latent_mean": data["mean"].tolist(),
        "latent_std": data["std"].tolist(),
        "latent_set": data["meta"],
        "config": cfg,
        **metrics,
    }
    (out / GENERATOR_SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
