"""Argument definitions every command shares (no command imports another).

Every option says its default in ``--help``; an option whose default is "whatever
the chosen model was made for" says so instead of printing None.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.denoisers import DENOISERS
from models.embedded import BUNDLES
from models.profiles import PROFILES
from models.resolve import DECODERS, DTYPES, ModelOptions, parse_steps
from models.wan.config import PRESETS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """ArgumentDefaultsHelpFormatter, with None shown as the model's own default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or not action.option_strings:
            return text
        if action.default is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            return text
        if action.default is None:
            return text + " (default: the model's own)"
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help (and its subcommands' help) shows every default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    d = ModelOptions()
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        "--preset",
        dest="model",
        default=None,
        help=f"the embedded trained model ({', '.join(BUNDLES)}, or a bundle directory), a "
        f"public model profile ({', '.join(PROFILES)}; needs --weights), or a bare preset "
        f"({', '.join(PRESETS)}; random weights or --checkpoint). Default: {BUNDLES[0]}, or "
        "what --checkpoint's shapes say",
    )
    g.add_argument(
        "--weights",
        type=Path,
        help="folder with a public model's files: DiT checkpoint, Wan2.1_VAE.pth or "
        "taew2_1.pth, models_t5_umt5-xxl-enc-bf16.pth and google/umt5-xxl/ "
        "(`framecast info --model NAME` lists them)",
    )
    g.add_argument(
        "--checkpoint", type=Path, help="the DiT file (.pt/.safetensors): Self-Forcing, CausVid, "
        "LongLive layouts; overrides the one in --weights",
    )  # fmt: skip
    g.add_argument("--ema", action="store_true", help="load 'generator_ema' from the checkpoint")
    g.add_argument(
        "--lora",
        type=Path,
        help="a peft LoRA folded into the DiT at load time (LongLive's lora.pt; found in "
        "--weights when the profile has one)",
    )
    g.add_argument("--lora-alpha", type=float, help="the LoRA's alpha (peft files omit it)")
    g.add_argument(
        "--text-embeds", type=Path, help="precomputed prompt embeddings instead of UMT5"
    )
    g.add_argument(
        "--decoder",
        choices=DECODERS,
        default=d.decoder,
        help="auto: the model's own (the bundle's, the Wan VAE for profiles, a linear preview "
        "for bare presets); wan-vae, taehv (fast), preview",
    )
    g.add_argument(
        "--text-offload",
        choices=["none", "cpu", "swap"],
        default=d.text_offload,
        help="where UMT5-XXL lives: beside the DiT, on the CPU, or swapped in per new prompt",
    )
    g.add_argument("--height", type=int, help="video pixels")
    g.add_argument("--width", type=int, help="video pixels")
    g.add_argument("--fps", type=int, help="output frame rate")
    g.add_argument("--steps", type=parse_steps, help="denoising steps, e.g. 1000,750,500,250")
    g.add_argument("--shift", type=float, help="timestep shift: 5.0 Self-Forcing, 8.0 CausVid")
    g.add_argument("--context-step", type=int, help="noise level of committed frames")
    g.add_argument(
        "--sampler",
        choices=["renoise", "euler"],
        help="step rule: renoise (distilled checkpoints) or euler (flow ODE)",
    )
    g.add_argument("--block-frames", type=int, help="latent frames per block")
    g.add_argument("--sinks", type=int, help="pinned first latent frames")
    g.add_argument("--window", type=int, help="recent latent frames kept; 0 = global attention")
    g.add_argument(
        "--positions",
        choices=["relative", "absolute"],
        help="absolute: the reference's (public profiles); relative: sinks before the window",
    )
    g.add_argument(
        "--denoiser",
        choices=DENOISERS,
        help="plain (Self-Forcing loop, the reference), stream_batch (one block per step in "
        "flight) or rolling (Rolling Forcing window); see docs/parallel.md",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="noise seed")
    g.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default=d.dtype, choices=sorted(DTYPES), help="weights and compute")


def model_options(a: argparse.Namespace) -> ModelOptions:
    return ModelOptions(
        model=a.model,
        weights=a.weights,
        checkpoint=a.checkpoint,
        use_ema=a.ema,
        lora=a.lora,
        lora_alpha=a.lora_alpha,
        text_embeds=a.text_embeds,
        decoder=a.decoder,
        text_offload=a.text_offload,
        height=a.height,
        width=a.width,
        fps=a.fps,
        steps=a.steps,
        shift=a.shift,
        context_step=a.context_step,
        sampler=a.sampler,
        block_frames=a.block_frames,
        sinks=a.sinks,
        window=a.window,
        positions=a.positions,
        denoiser=a.denoiser,
        seed=a.seed,
        device=a.device,
        dtype=a.dtype,
    )
