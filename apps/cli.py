"""`framecast` command line: generate, bench, info, train."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

from apps.factory import VAE_TEMPORAL, ModelOptions, build_stream, parse_steps
from engine.stream import SWITCH_MODES

log = logging.getLogger("framecast")


def _switch(text: str) -> tuple[int, str]:
    frame, sep, prompt = text.partition(":")
    if not sep or not frame.strip().isdigit() or not prompt.strip():
        raise argparse.ArgumentTypeError(f"--switch takes FRAME:PROMPT, got {text!r}")
    return int(frame), prompt.strip()


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    d = ModelOptions()
    g = p.add_argument_group("model")
    g.add_argument("--preset", default=d.preset, help="tiny, nano, wan2.1-1.3b, wan2.1-14b")
    g.add_argument(
        "--checkpoint", type=Path, help=".pt or .safetensors (Self-Forcing, CausVid, LongLive)"
    )
    g.add_argument("--ema", action="store_true", help="load 'generator_ema' from the checkpoint")
    g.add_argument("--text-embeds", type=Path, help="precomputed prompt embeddings (Wan presets)")
    g.add_argument("--height", type=int, default=d.height, help="video pixels")
    g.add_argument("--width", type=int, default=d.width, help="video pixels")
    g.add_argument("--fps", type=int, default=d.fps)
    g.add_argument("--steps", type=parse_steps, default=d.steps, help="e.g. 1000,750,500,250")
    g.add_argument("--shift", type=float, default=d.shift, help="5.0 Self-Forcing, 8.0 CausVid")
    g.add_argument(
        "--context-step", type=int, default=d.context_step, help="noise of committed frames"
    )
    g.add_argument(
        "--block-frames", type=int, default=d.block_frames, help="latent frames per block"
    )
    g.add_argument("--sinks", type=int, default=d.sinks, help="pinned first latent frames")
    g.add_argument(
        "--window", type=int, default=d.window, help="recent latent frames kept; 0 = global"
    )
    g.add_argument("--positions", choices=["relative", "absolute"], default=d.positions)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--device", default=d.device)
    g.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16", "float16"])


def model_options(a: argparse.Namespace) -> ModelOptions:
    return ModelOptions(
        preset=a.preset,
        checkpoint=a.checkpoint,
        use_ema=a.ema,
        text_embeds=a.text_embeds,
        height=a.height,
        width=a.width,
        fps=a.fps,
        steps=a.steps,
        shift=a.shift,
        context_step=a.context_step,
        block_frames=a.block_frames,
        sinks=0 if a.window == 0 else a.sinks,
        window=None if a.window == 0 else a.window,
        positions=a.positions,
        seed=a.seed,
        device=a.device,
        dtype=a.dtype,
    )


def cmd_generate(a: argparse.Namespace) -> int:
    from streaming.recording import Mp4Writer

    opts = model_options(a)
    if a.window == 0:
        # global attention: room for every latent frame of the clip, in whole blocks
        blocks = math.ceil(math.ceil(a.frames / VAE_TEMPORAL) / a.block_frames)
        opts = ModelOptions(**{**opts.__dict__, "max_frames": blocks * a.block_frames})
    switches = sorted(a.switch or [])
    stream = build_stream(opts, name="generate")
    stream.start(a.prompt)
    t0 = time.perf_counter()
    with Mp4Writer(a.out, fps=a.fps, width=a.width, height=a.height) as writer:
        for frame in stream.frames(max_frames=a.frames):
            while switches and frame.pts >= switches[0][0]:
                stream.switch_prompt(switches.pop(0)[1], mode=a.switch_mode)
            writer.write(frame)
            if (frame.pts + 1) % (a.fps * 2) == 0 or frame.pts + 1 == a.frames:
                elapsed = time.perf_counter() - t0
                print(
                    f"\r{frame.pts + 1}/{a.frames} frames  {(frame.pts + 1) / elapsed:6.1f} fps",
                    end="" if sys.stderr.isatty() else "\n",  # \r only on a terminal
                    file=sys.stderr,
                    flush=True,
                )
    print(file=sys.stderr)
    s = stream.stats
    stream.close()
    log.info(
        "wrote %s: %d frames at %d fps, %.2fs, time to first frame %.3fs",
        a.out,
        writer.frames_written,
        a.fps,
        time.perf_counter() - t0,
        s.time_to_first_frame or 0,
    )
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from models.wan.config import PRESETS
    from models.wan.loader import count_parameters

    for name, cfg in PRESETS.items():
        print(
            f"{name:12s} {count_parameters(cfg):>15,d} params  dim={cfg.dim} "
            f"layers={cfg.num_layers} heads={cfg.num_heads} ffn={cfg.ffn_dim} "
            f"text_dim={cfg.text_dim}"
        )
    return 0


def cmd_train_decoder(a: argparse.Namespace) -> int:
    from models.train import TrainConfig, train_autoencoder

    config = TrainConfig(
        steps=a.steps,
        batch=a.batch,
        frames=a.frames,
        size=a.size,
        lr=a.lr,
        seed=a.seed,
        log_every=a.log_every,
        out=a.out,
        device=a.device,
        threads=a.threads,
        eval_frames=a.eval_frames,
    )
    log.info("training the tiny autoencoder: %s", config)
    metrics = train_autoencoder(config, progress=lambda p: print(p, file=sys.stderr, flush=True))
    summary = ", ".join(
        f"{k} {metrics[k]:.4f}"
        for k in ("loss_start", "loss_final", "psnr_batch", "psnr_stream", "wall_s")
        if k in metrics
    )
    log.info("wrote %s: %s", a.out, summary)
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from models.train import TrainConfig

    d = TrainConfig()
    p.add_argument("--out", type=Path, default=Path("out/taehv"), help="weights + train.json")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    p.add_argument("--batch", type=int, default=d.batch, help="clips per step")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per clip (4k)")
    p.add_argument("--size", type=int, default=d.size, help="clip height = width (8k)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate")
    p.add_argument("--seed", type=int, default=d.seed, help="weights and data")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps per report")
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument(
        "--eval-frames", type=int, default=d.eval_frames, help="held-out clip frames; 0 = skip"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="framecast", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="stream a clip to an MP4 file")
    g.add_argument("--prompt", required=True)
    g.add_argument("--frames", type=int, default=48, help="video frames to write")
    g.add_argument("--out", type=Path, default=Path("out/clip.mp4"))
    g.add_argument(
        "--switch",
        type=_switch,
        action="append",
        metavar="FRAME:PROMPT",
        help="switch the prompt at a video frame (repeatable)",
    )
    g.add_argument("--switch-mode", choices=SWITCH_MODES, default="recache")
    add_model_arguments(g)
    g.set_defaults(func=cmd_generate)

    from apps.bench import add_bench_arguments, bench_command

    b = sub.add_parser("bench", help="streaming benchmark (JSON to bench/results/)")
    add_bench_arguments(b)
    b.set_defaults(func=bench_command)

    i = sub.add_parser("info", help="list presets and parameter counts")
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train a model on the procedural world")
    targets = t.add_subparsers(dest="target", required=True)
    td = targets.add_parser(
        "decoder", help="the tiny streaming autoencoder (progress on stderr, weights to --out)"
    )
    add_train_arguments(td)
    td.set_defaults(func=cmd_train_decoder)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command != "bench" else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "frames", 1) < 1:
        print("framecast: --frames must be >= 1", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"framecast: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
