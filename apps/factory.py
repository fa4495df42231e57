"""Build a ready Stream from user options: model, decoder, prompt encoder, configs.

Shared by `framecast generate` and (later) `framecast serve`, so both accept
the same model options.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.cache import CacheConfig, PositionMode
from engine.denoisers import Denoiser
from engine.protocols import CausalGenerator, PromptEncoder, StreamingDecoder
from engine.schedule import FlowSchedule
from engine.stream import Stream, StreamConfig
from models.decoders import LatentPreviewDecoder
from models.embedded import BUNDLE_FILE, BUNDLES, load_bundle
from models.text import HashingPromptEncoder, PrecomputedPromptEncoder, SentenceEncoder
from models.wan.config import preset
from models.wan.loader import build_model
from models.wan.model import CausalWanModel

log = logging.getLogger(__name__)

VAE_SPATIAL = 8  # pixels per latent pixel (Wan VAE, TAEHV)
VAE_TEMPORAL = 4  # video frames per latent frame
SENTENCE_ENCODER_DIM = 384  # all-MiniLM-L6-v2 token embeddings


# Stream settings for presets without an embedded bundle (random or user weights).
GENERIC_DEFAULTS: dict[str, Any] = {
    "height": 128,
    "width": 128,
    "fps": 16,
    "steps": (1000, 750, 500, 250),
    "shift": 5.0,
    "context_step": 0,
    "sampler": "renoise",
    "block_frames": 3,
    "sinks": 3,
    "window": 12,
}
DEFAULT_MODEL = "world"  # the embedded, trained default (models/weights/world)


@dataclass(frozen=True)
class ModelOptions:
    """What a user picks on the command line; None means "the model's default"."""

    preset: str = DEFAULT_MODEL  # an embedded bundle name, or a models.wan preset
    checkpoint: Path | None = None
    use_ema: bool = False
    text_embeds: Path | None = None
    height: int | None = None  # video pixels
    width: int | None = None
    fps: int | None = None
    steps: tuple[int, ...] | None = None
    shift: float | None = None
    context_step: int | None = None
    sampler: str | None = None  # "renoise" (distilled checkpoints) or "euler"
    block_frames: int | None = None
    sinks: int | None = None
    window: int | None = None  # 0: global attention over max_frames
    max_frames: int = 21
    positions: PositionMode = "relative"
    denoiser: Denoiser = "plain"  # engine.denoisers: plain, stream_batch, rolling
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def embedded(self) -> bool:
        """A trained bundle: an embedded name, or a directory from `framecast train bundle`."""
        if self.checkpoint is not None:
            return False
        return self.preset in BUNDLES or (Path(self.preset) / BUNDLE_FILE).is_file()

    def resolved(self) -> ModelOptions:
        """These options with every None replaced by the model's default."""
        defaults = load_bundle(self.preset).defaults if self.embedded else GENERIC_DEFAULTS
        filled = {k: getattr(self, k) for k in GENERIC_DEFAULTS}
        for k, value in filled.items():
            if value is None:
                filled[k] = defaults.get(k, GENERIC_DEFAULTS[k])
        filled["steps"] = tuple(filled["steps"])
        return dataclasses.replace(self, **filled)

    def latent_hw(self, patch: tuple[int, int, int]) -> tuple[int, int]:
        assert self.height is not None and self.width is not None, "call resolved() first"
        step_h, step_w = VAE_SPATIAL * patch[1], VAE_SPATIAL * patch[2]
        if self.height % step_h or self.width % step_w:
            raise ValueError(
                f"--height/--width must be multiples of {step_h}x{step_w} pixels "
                f"(VAE 8x and patch {patch[1:]}), got {self.height}x{self.width}"
            )
        return self.height // VAE_SPATIAL, self.width // VAE_SPATIAL


# --dtype names, shared by every command that builds a model
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_steps(text: str) -> tuple[int, ...]:
    """Parse denoising steps "1000,750,500,250" for argparse (``type=parse_steps``).

    Empty pieces are skipped, so a trailing comma is harmless. Raises
    argparse.ArgumentTypeError, which argparse reports as a usage error, on a
    piece that is not an integer or when no step is given. Range and order are
    FlowSchedule's to check.
    """
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"steps must be comma-separated integers, got {text!r}"
        ) from None
    if not steps:
        raise argparse.ArgumentTypeError(f"steps must name at least one step, got {text!r}")
    return steps


def build_generator(opts: ModelOptions) -> tuple[CausalWanModel, StreamingDecoder]:
    """The generator and its decoder, loaded offline (options already resolved)."""
    if opts.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {opts.dtype!r}")
    if opts.embedded:
        bundle = load_bundle(opts.preset)
        model = bundle.generator(device=opts.device, dtype=DTYPES[opts.dtype])
        return model, bundle.decoder(device=opts.device)
    config = preset(opts.preset)
    if opts.checkpoint is None:
        log.warning(
            "preset %r: no checkpoint given, using seeded random weights (output is "
            "structured noise, not trained video)",
            opts.preset,
        )
    model = build_model(
        config,
        checkpoint=opts.checkpoint,
        device=opts.device,
        dtype=DTYPES[opts.dtype],
        seed=opts.seed,
        use_ema=opts.use_ema,
    )
    return model, LatentPreviewDecoder(config.out_dim, device=opts.device)


@dataclass(frozen=True)
class GeneratorSpec:
    """Builds the generator in another process (a pipeline stage keeps only its blocks).

    Picklable, so engine.parallel can hand it to the stage processes it spawns."""

    opts: ModelOptions

    def __call__(self, layers: range) -> CausalWanModel:
        model, _ = build_generator(self.opts.resolved())
        model.keep_layers(layers)
        return model.eval()


def build_stream(
    opts: ModelOptions, *, name: str = "stream", generator: CausalGenerator | None = None
) -> Stream:
    """Everything a session needs, loaded offline. ``generator`` replaces the model's
    forwards (a pipeline's PipelinedGenerator); the decoder and encoder stay local."""
    opts = opts.resolved()
    model, decoder = build_generator(opts)
    if generator is not None:
        model.keep_layers(range(0))  # only its config is needed here: free the blocks
    config = model.config
    encoder: PromptEncoder
    if opts.text_embeds is not None:
        encoder = PrecomputedPromptEncoder(opts.text_embeds)
    elif config.text_dim == 4096:
        raise ValueError(
            f"preset {opts.preset!r} expects UMT5-XXL prompt embeddings, which cannot be "
            "computed here: pass --text-embeds FILE (a [T, 4096] tensor or {prompt: tensor})"
        )
    elif config.text_dim == SENTENCE_ENCODER_DIM:
        encoder = SentenceEncoder(max_tokens=config.text_len)  # all-MiniLM-L6-v2, from its wheel
    else:
        log.warning("using the word-hashing prompt encoder (keys on words, not meaning)")
        encoder = HashingPromptEncoder(config.text_dim, config.text_len)
    latent_hw = opts.latent_hw(config.patch_size)
    assert opts.steps is not None and opts.block_frames is not None and opts.fps is not None
    assert opts.shift is not None and opts.context_step is not None and opts.sinks is not None
    if not opts.window:
        cache = CacheConfig.global_attention(max_frames=opts.max_frames, positions=opts.positions)
    else:
        cache = CacheConfig.rolling_window(opts.sinks, opts.window, positions=opts.positions)
    stream_config = StreamConfig(
        block_frames=opts.block_frames,
        latent_hw=latent_hw,
        schedule=FlowSchedule(
            steps=opts.steps,
            shift=opts.shift,
            context_step=opts.context_step,
            sampler=opts.sampler,  # type: ignore[arg-type]  # FlowSchedule validates it
        ),
        cache=cache,
        fps=opts.fps,
        seed=opts.seed,
        denoiser=opts.denoiser,
    )
    return Stream(generator or model, decoder, encoder, stream_config, name=name)
