"""Train the TAEHV-style autoencoder (models/decoders/taehv.py) on world clips.

The encoder and decoder (``TAEHVConfig.tiny()``) are trained end to end on
reconstruction (foreground-weighted MSE on pixels in [0, 1]) with AdamW. A run is a pure
function of its ``TrainConfig`` on a given machine: the weights are initialised
from ``seed``, the data stream is ``WorldClips(seed=seed)``, and
``torch.manual_seed(seed)`` covers anything else.

Output directory (``TrainConfig.out``)::

    encoder.safetensors   TinyVideoEncoder state dict
    decoder.safetensors   TinyVideoDecoder state dict
    train.json            config, loss curve, final loss, held-out PSNR,
                          wall time and hardware

Usage::

    metrics = train_autoencoder(TrainConfig(steps=800, size=64, out=Path("out/taehv")))
    encoder, decoder = load_autoencoder(Path("out/taehv"))
    evaluate_autoencoder(encoder, decoder)   # {"psnr_batch": ..., "psnr_stream": ...}
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.decoders.taehv import TAEHVConfig, TinyVideoDecoder, TinyVideoEncoder, _run_clip
from models.train.data import WorldClips, clip_batch

HELDOUT_SEEDS = tuple(range(1_000_000, 1_000_008))  # scenes for evaluation, one clip each
ENCODER_FILE = "encoder.safetensors"
DECODER_FILE = "decoder.safetensors"
SIDECAR_FILE = "train.json"


@dataclass(frozen=True)
class TrainConfig:
    """One training run of the tiny autoencoder on world clips."""

    steps: int = 800  # optimizer steps
    batch: int = 4  # clips per step
    frames: int = 8  # frames per clip, a multiple of 4 (2 latent frames for 8)
    size: int = 128  # rendered clip height = width in pixels, a multiple of 8
    crop: int | None = 64  # train on random crops of this side (None: whole frames)
    foreground_weight: float = 10.0  # extra loss weight on object pixels (see reconstruction_loss)
    lr: float = 1e-3  # AdamW peak learning rate (cosine decay to 10% after warmup)
    grad_clip: float = 1.0  # max global gradient norm
    warmup: int = 20  # linear warmup steps
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    seed: int = 0  # weights, data stream and torch RNG
    log_every: int = 25  # steps between progress reports (each one syncs the host)
    out: Path | None = None  # directory for weights + train.json; None = keep nothing
    device: str = "cpu"  # "cpu" or "cuda" (data is rendered on the CPU either way)
    threads: int | None = None  # torch CPU threads; None = torch's default
    eval_frames: int = 16  # frames per held-out clip (0 disables evaluation)
    init: Path | None = None  # start from this run's weights (a directory from a past run)
    freeze_encoder: bool = False  # train the decoder only: the latent space stays as it is,
    # so a generator trained on this encoder's latents keeps working with the new decoder

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.frames < 4 or self.frames % 4:
            raise ValueError(f"frames must be a positive multiple of 4, got {self.frames}")
        if self.size < 8 or self.size % 8:
            raise ValueError(f"size must be a positive multiple of 8, got {self.size}")
        if self.crop is not None and (self.crop % 8 or not 8 <= self.crop <= self.size):
            raise ValueError(f"crop must be a multiple of 8 in [8, size], got {self.crop}")
        if self.foreground_weight < 0:
            raise ValueError(f"foreground_weight must be >= 0, got {self.foreground_weight}")
        if self.eval_frames < 0 or self.eval_frames % 4:
            raise ValueError(f"eval_frames must be a multiple of 4, got {self.eval_frames}")
        if not (self.lr > 0 and self.grad_clip > 0) or self.weight_decay < 0 or self.warmup < 0:
            raise ValueError(f"bad optimizer settings: {self}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class Progress:
    """One progress report: mean loss over the steps since the last report."""

    step: int
    steps: int
    loss: float
    steps_per_s: float
    eta_s: float  # seconds left at the current rate

    def __str__(self) -> str:
        return (
            f"step {self.step}/{self.steps}  loss {self.loss:.5f}  "
            f"{self.steps_per_s:.2f} steps/s  eta {self.eta_s:.0f}s"
        )


def foreground_mask(target: Tensor, tol: float = 0.1) -> Tensor:
    """1.0 where a pixel differs from its frame's background, else 0.0: [B, T, 1, H, W].

    The background is the per-frame median colour (objects cover well under
    half of a frame), so no labels are needed.
    """
    bg = target.flatten(3).median(dim=3).values[..., None, None]  # [B, T, 3, 1, 1]
    return ((target - bg).abs().amax(dim=2, keepdim=True) > tol).to(target.dtype)


def reconstruction_loss(recon: Tensor, target: Tensor, foreground_weight: float = 0.0) -> Tensor:
    """Pixel MSE with object pixels weighted ``1 + foreground_weight`` (normalised).

    Objects cover a few percent of a frame, so plain MSE first settles on a
    flat background and the objects arrive slowly and blurred (measured: 17.6
    dB after 700 steps, about the background-only score). Weighting the object
    pixels makes their shapes and colours the bulk of the loss from the start.
    L1 was tried too: its median-seeking gradient sinks objects into the background.
    """
    if foreground_weight == 0.0:
        return F.mse_loss(recon, target)
    weight = 1.0 + foreground_weight * foreground_mask(target)
    return ((recon - target).pow(2) * weight).sum() / (weight.sum() * recon.shape[2])


def decode_unclamped(decoder: TinyVideoDecoder, latents: Tensor) -> Tensor:
    """``decoder.decode`` without the final clamp to [0, 1]: [B, F, C, h, w] -> [B, 4F, 3, H, W].

    Training loss is taken before the clamp. Through the clamp, a pixel pushed out
    of [0, 1] gets no gradient, and an early large step can push every pixel out
    (the run then never recovers). Clamping only moves outputs towards targets in
    [0, 1], so the clamped decode's error is never larger than the trained one.
    """
    rgb = _run_clip(decoder.layers, latents)
    return rgb[:, decoder.config.trim_start_frames :]


def hardware() -> dict[str, Any]:
    """Where a run happened: CPU model, torch version and threads, GPU if used."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def lr_scale(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then cosine from 1 to 0.1 at the last step (step counts from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / span))


def train_autoencoder(
    config: TrainConfig, progress: Callable[[Progress], None] | None = None
) -> dict[str, Any]:
    """Train encoder + decoder from scratch; save them to ``config.out`` if set.

    Returns the metrics also written to ``train.json``: ``loss_start`` (mean of
    the first report window), ``loss_final`` (last window), ``loss_curve``
    ([step, loss] per report), ``wall_s`` and ``steps_per_s`` of the training
    loop, ``hardware``, and ``evaluate_autoencoder``'s PSNRs.
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    taehv = TAEHVConfig.tiny()
    encoder = TinyVideoEncoder(taehv, seed=config.seed).to(device).train()
    decoder = TinyVideoDecoder(taehv, seed=config.seed + 1).to(device).train()
    if config.init is not None:
        encoder, decoder = load_autoencoder(config.init, device=str(device))
        decoder.train()
        if not config.freeze_encoder:
            encoder.train()
    if config.freeze_encoder:
        encoder.eval().requires_grad_(False)
        params = list(decoder.parameters())
    else:
        params = [*encoder.parameters(), *decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    data = iter(WorldClips(config.batch, config.frames, config.size, config.seed, config.crop))

    curve: list[list[float]] = []
    window = torch.zeros((), device=device)  # loss summed since the last report (no sync)
    window_start = 0
    t0 = time.perf_counter()
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = config.lr * lr_scale(step, config.steps, config.warmup)
        x = next(data).to(device, non_blocking=True)
        if config.freeze_encoder:
            with torch.no_grad():
                z = encoder(x)
        else:
            z = encoder(x)
        recon = decode_unclamped(decoder, z)
        loss = reconstruction_loss(recon, x[:, taehv.trim_start_frames :], config.foreground_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        window += loss.detach()
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            mean = float(window) / (done - window_start)  # host sync: one per report
            window.zero_()
            window_start = done
            curve.append([done, mean])
            elapsed = time.perf_counter() - t0
            rate = done / elapsed
            if progress is not None:
                progress(Progress(done, config.steps, mean, rate, (config.steps - done) / rate))
    if device.type == "cuda":
        torch.cuda.synchronize()  # host sync: wall time covers the queued GPU work
    wall = time.perf_counter() - t0

    metrics: dict[str, Any] = {
        "loss_start": curve[0][1],
        "loss_final": curve[-1][1],
        "loss_curve": curve,
        "wall_s": wall,
        "steps_per_s": config.steps / wall,
        "hardware": hardware(),
    }
    encoder.eval()
    decoder.eval()
    if config.eval_frames:
        metrics.update(
            evaluate_autoencoder(encoder, decoder, frames=config.eval_frames, size=config.size)
        )
        if config.size >= 64:  # the detector needs objects of a few pixels at least
            metrics.update(reconstruction_adherence(encoder, decoder, size=config.size))
    if config.out is not None:
        save_autoencoder(config.out, encoder, decoder, config, metrics)
    return metrics


def _config_json(config: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["out"] = None if config.out is None else str(config.out)
    d["init"] = None if config.init is None else str(config.init)
    return d


def save_autoencoder(
    out: Path,
    encoder: TinyVideoEncoder,
    decoder: TinyVideoDecoder,
    config: TrainConfig,
    metrics: dict[str, Any],
) -> None:
    """Write the two safetensors files and the ``train.json`` sidecar into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    taehv = dataclasses.asdict(encoder.config)
    meta = {"format": "pt", "taehv": json.dumps(taehv)}
    for module, name in ((encoder, ENCODER_FILE), (decoder, DECODER_FILE)):
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(out / name), metadata=meta)
    sidecar = {"taehv": taehv, "config": _config_json(config), **metrics}
    (out / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2) + "\n")


def load_autoencoder(out: Path, device: str = "cpu") -> tuple[TinyVideoEncoder, TinyVideoDecoder]:
    """Fresh modules with the weights saved by ``train_autoencoder`` (strict), in eval mode.

    ``out`` is a training run's folder or a shipped bundle (models/weights/world),
    whose ``bundle.json`` holds the same ``taehv`` config.
    """
    sidecar_path = out / SIDECAR_FILE
    if not sidecar_path.exists() and (out / "bundle.json").exists():
        sidecar_path = out / "bundle.json"
    if not sidecar_path.exists():
        raise FileNotFoundError(
            f"{out} holds no autoencoder: expected {SIDECAR_FILE} (a `framecast train decoder`"
            " run) or bundle.json (a shipped bundle such as models/weights/world)"
        )
    sidecar = json.loads(sidecar_path.read_text())
    fields: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in sidecar["taehv"].items()
    }
    taehv = TAEHVConfig(**fields)
    encoder = TinyVideoEncoder(taehv)
    decoder = TinyVideoDecoder(taehv)
    encoder.load_state_dict(load_file(str(out / ENCODER_FILE), device=device), strict=True)
    decoder.load_state_dict(load_file(str(out / DECODER_FILE), device=device), strict=True)
    return encoder.to(device).eval(), decoder.to(device).eval()


def heldout_clips(seeds: Sequence[int], frames: int, size: int) -> Tensor:
    """One clip per seed, [len(seeds), frames, 3, size, size] in [0, 1]."""
    clips = [clip_batch(np.random.default_rng(s), 1, frames, size, size) for s in seeds]
    return torch.cat(clips)


def _psnr(recon: Tensor, target: Tensor) -> float:
    """Mean over clips of each clip's PSNR in dB (peak 1.0)."""
    mse = (recon.float() - target.float()).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())


def evaluate_autoencoder(
    encoder: TinyVideoEncoder,
    decoder: TinyVideoDecoder,
    *,
    seeds: Sequence[int] = HELDOUT_SEEDS,
    frames: int = 16,
    size: int = 64,
) -> dict[str, float]:
    """PSNR on held-out scenes, decoding the whole clip and streaming one latent at a time.

    Returns ``psnr_batch``, ``psnr_stream`` (dB) and ``stream_max_abs_diff``, the
    largest pixel difference between the two paths (float rounding only). The
    decoder's stream is reset before and after.
    """
    device = next(decoder.parameters()).device
    x = heldout_clips(seeds, frames, size).to(device)
    trim = decoder.config.trim_start_frames
    with torch.inference_mode():
        z = encoder(x)
        batch = decoder.decode(z)
        decoder.reset()
        pushed = [decoder.push(z[:, i : i + 1]) for i in range(z.shape[1])]
        stream = torch.cat([*pushed, decoder.flush()], dim=1)
        decoder.reset()
    target = x[:, trim:]
    return {
        "psnr_batch": _psnr(batch, target),
        "psnr_stream": _psnr(stream, target),
        "stream_max_abs_diff": float((stream - batch).abs().max()),
    }


def reconstruction_adherence(
    encoder: TinyVideoEncoder,
    decoder: TinyVideoDecoder,
    *,
    clips: int = 24,
    frames: int = 32,
    size: int = 128,
    seed: int = 2_000_000,
) -> dict[str, float]:
    """Percent of held-out scenes whose *reconstruction* the world detector reads correctly,
    per attribute: the ceiling any generator decoded by this decoder can reach."""
    from models.world import WorldStream, check, detect, scene_for_seed

    device = next(decoder.parameters()).device
    totals: dict[str, int] = {}
    for i in range(clips):
        scene = scene_for_seed(seed + i)
        clip = WorldStream(scene, size, size).next_frames(frames)
        x = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div(255.0)[None].to(device)
        with torch.inference_mode():
            rgb = decoder.decode(encoder(x))[0]
        out = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for k, ok in check(scene, detect(out)).items():
            totals[k] = totals.get(k, 0) + int(ok)
    return {f"recon_{k}": 100.0 * v / clips for k, v in totals.items()}
