"""`framecast` command line: generate, speak, convert, serve, bench, eval, info, train."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from apps.args import Parser, add_model_arguments, model_options
from engine.stream import SWITCH_MODES
from models.resolve import VAE_TEMPORAL, build_stream, resolve

log = logging.getLogger("framecast")


def _switch(text: str) -> tuple[int, str]:
    frame, sep, prompt = text.partition(":")
    if not sep or not frame.strip().isdigit() or not prompt.strip():
        raise argparse.ArgumentTypeError(f"--switch takes FRAME:PROMPT, got {text!r}")
    return int(frame), prompt.strip()


def cmd_generate(a: argparse.Namespace) -> int:
    from streaming.recording import Mp4Writer

    resolved = resolve(model_options(a))
    opts = resolved.options
    assert opts.block_frames is not None and opts.fps is not None
    assert opts.width is not None and opts.height is not None
    fps, width, height, block_frames = opts.fps, opts.width, opts.height, opts.block_frames
    if opts.window == 0:
        # global attention: room for every latent frame of the clip, in whole blocks
        blocks = math.ceil(math.ceil(a.frames / VAE_TEMPORAL) / block_frames)
        resolved = resolve(dataclasses.replace(opts, max_frames=blocks * block_frames))
    switches = sorted(a.switch or [])
    late = [f for f, _ in switches if f >= a.frames]
    if late:
        raise ValueError(
            f"--switch at frame {late[0]} never happens: the clip has {a.frames} frames "
            f"(0..{a.frames - 1}); raise --frames or switch earlier"
        )
    stream = build_stream(resolved, name="generate")
    stream.start(a.prompt)
    t0 = time.perf_counter()
    with Mp4Writer(a.out, fps=fps, width=width, height=height) as writer:
        for frame in stream.frames(max_frames=a.frames):
            while switches and frame.pts >= switches[0][0]:
                stream.switch_prompt(switches.pop(0)[1], mode=a.switch_mode)
            writer.write(frame)
            if (frame.pts + 1) % (fps * 2) == 0 or frame.pts + 1 == a.frames:
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
        fps,
        time.perf_counter() - t0,
        s.time_to_first_frame or 0,
    )
    return 0


def add_speak_arguments(p: argparse.ArgumentParser) -> None:
    from models.audio.tts import SpeechConfig

    d = SpeechConfig()
    p.add_argument("text", nargs="?", help="what to say (or --text, or --stdin)")
    p.add_argument("--text", dest="text_option", metavar="TEXT", help="what to say")
    p.add_argument(
        "--stdin", action="store_true", help="read text from stdin as it arrives (a pipe)"
    )
    p.add_argument("--out", type=Path, default=Path("out/speech.wav"), help="WAV file to write")
    p.add_argument("--marks", type=Path, help="also write the phoneme timings as JSON")
    p.add_argument("--voice", type=Path, help="a Piper .onnx voice (default: the packaged en_US)")
    p.add_argument("--length-scale", type=float, help="> 1 speaks slower (default: the voice's)")
    p.add_argument("--first-window", type=int, default=d.first_window, help="decoder frames")
    p.add_argument("--window", type=int, default=d.window, help="largest decoder window, frames")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    import wave

    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _progress_line(text: str, final: bool = False) -> None:
    """One status line on stderr: rewritten in place on a terminal, a line each elsewhere."""
    tty = sys.stderr.isatty()
    if tty or final:
        print(f"\r{text}" if tty else text, end="\n" if final else "", file=sys.stderr, flush=True)


def cmd_speak(a: argparse.Namespace) -> int:
    import json

    from engine.audio import AudioStream
    from models.audio.tts import PiperSpeech, SpeechConfig

    given = [x for x in (a.text, a.text_option) if x is not None]
    if len(given) + a.stdin != 1:
        raise ValueError("say what: give the text, --text TEXT or --stdin (exactly one)")
    config = SpeechConfig(first_window=a.first_window, window=a.window, length_scale=a.length_scale)
    speech = PiperSpeech.load(a.voice, config=config, threads=a.threads)
    stream = AudioStream(speech)
    chunks = []
    t0 = time.perf_counter()

    def take() -> None:
        while (chunk := stream.next_chunk()) is not None:
            chunks.append(chunk)
            made = sum(c.duration for c in chunks)
            _progress_line(
                f"{made:6.1f} s spoken  {made / (time.perf_counter() - t0):5.1f}x real time"
            )

    pieces = iter(sys.stdin.readline, "") if a.stdin else given
    for piece in pieces:
        stream.feed_text(piece)
        take()
    stream.end_input()
    take()
    if not chunks:
        raise ValueError("nothing to say: the text has no words")
    start = chunks[0].pts
    audio = np.concatenate([c.samples[:, 0] for c in chunks])
    _write_wav(a.out, audio, speech.sample_rate)
    if a.marks is not None:
        marks = [
            {"phoneme": m.phoneme, "start_s": (m.start - start) / speech.sample_rate,
             "end_s": (m.end - start) / speech.sample_rate}
            for c in chunks
            for m in c.marks
        ]  # fmt: skip
        a.marks.write_text(json.dumps(marks, indent=1) + "\n")
    s = stream.stats
    _progress_line(
        f"wrote {a.out}: {len(audio) / speech.sample_rate:.2f} s of speech, first audio "
        f"{(s.first_audio_history[0] if s.first_audio_history else 0) * 1000:.0f} ms, "
        f"real-time factor {s.real_time_factor or 0:.3f}",
        final=True,
    )
    return 0


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    from models.audio.dsp_vc import ConverterConfig

    d = ConverterConfig()
    p.add_argument("input", type=Path, help="audio file to convert (any format PyAV reads)")
    p.add_argument("--out", type=Path, default=Path("out/converted.wav"), help="WAV to write")
    p.add_argument("--semitones", type=float, default=d.semitones, help="pitch shift")
    p.add_argument("--formant", type=float, default=d.formant, help="> 1: a shorter vocal tract")
    p.add_argument(
        "--piece", type=float, default=0.02, help="seconds fed at a time, as a live input would"
    )
    p.add_argument(
        "--onnx",
        type=Path,
        help="a user's ONNX converter instead of WORLD (contract in docs/audio.md)",
    )


def cmd_convert(a: argparse.Namespace) -> int:
    import av

    from models.audio.dsp_vc import ConverterConfig, WorldVoiceConverter
    from models.audio.onnx_vc import OnnxVoiceConverter

    if not a.input.exists():
        raise FileNotFoundError(f"no audio file at {a.input}")
    vc: WorldVoiceConverter | OnnxVoiceConverter
    if a.onnx is not None:
        vc = OnnxVoiceConverter(a.onnx)
        rate, latency, what = vc.sample_rate, vc.latency, a.onnx.name
    else:
        config = ConverterConfig(semitones=a.semitones, formant=a.formant)
        vc = WorldVoiceConverter(config)
        rate, latency = config.sample_rate, config.latency
        what = f"{a.semitones:+.1f} semitones, formant x{a.formant:.2f}"
    try:
        container = av.open(str(a.input))
    except av.error.FFmpegError as e:
        raise ValueError(f"{a.input} is not an audio file PyAV can read: {e}") from None
    with container:
        if not container.streams.audio:
            raise ValueError(f"{a.input} has no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        pieces = []
        for frame in container.decode(audio=0):
            pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    x = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if not len(x):
        raise ValueError(f"{a.input} holds no audio samples")
    step = max(1, round(a.piece * rate))
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(x), step):
        vc.feed_audio(x[i : i + step], rate)
        while (piece := vc.next_piece()) is not None:
            out.append(piece.samples)
        if (i // step) % 50 == 0:
            _progress_line(f"{i / rate:6.1f} / {len(x) / rate:.1f} s converted")
    vc.end_input()
    while (piece := vc.next_piece()) is not None:
        out.append(piece.samples)
    y = np.concatenate(out)
    _write_wav(a.out, y, rate)
    wall = time.perf_counter() - t0
    _progress_line(
        f"wrote {a.out}: {len(y) / rate:.2f} s, {what}, algorithmic latency "
        f"{latency * 1000:.0f} ms, real-time factor {wall / (len(y) / rate):.3f}",
        final=True,
    )
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from bench.eval.report import EvalConfig, default_out, format_table, run_eval, write_report

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    config = EvalConfig(
        prompts=a.prompts,
        frames=a.frames,
        drift_frames=a.drift_frames,
        drift_window=a.drift_window,
        switches=a.switches,
        switch_mode=a.switch_mode,
        ablation=a.ablation,
        ablation_frames=a.ablation_frames,
        ablation_window=a.ablation_window,
        novel_words=a.novel_words,
        prompt_seed=a.prompt_seed,
        oracle=a.oracle,
    )
    report = run_eval(config, model_options(a), progress=_progress)
    out = a.out or default_out(a.model or "world", oracle=a.oracle)
    write_report(report, out)
    print(format_table(report), flush=True)
    _progress(f"wrote {out}")
    return 0


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    from bench.eval.report import EvalConfig

    d = EvalConfig()
    p.add_argument("--prompts", type=int, default=d.prompts, help="held-out prompts")
    p.add_argument("--frames", type=int, default=d.frames, help="video frames per clip")
    p.add_argument(
        "--drift-frames", type=int, default=d.drift_frames, help="drift stream length; 0 = skip"
    )
    p.add_argument(
        "--drift-window", type=int, default=d.drift_window, help="frames scored at each end"
    )
    p.add_argument("--switches", type=int, default=d.switches, help="prompt switches; 0 = skip")
    p.add_argument("--switch-mode", choices=SWITCH_MODES, default=d.switch_mode)
    p.add_argument("--ablation", action="store_true", help="sinks, window and switch-mode table")
    p.add_argument(
        "--ablation-frames", type=int, default=d.ablation_frames, help="drift length per variant"
    )
    p.add_argument(
        "--ablation-window", type=int, help="frames scored at each end (default: a quarter)"
    )
    p.add_argument(
        "--novel-words",
        action=argparse.BooleanOptionalAction,
        default=d.novel_words,
        help="held-out prompts may use words unseen in training",
    )
    p.add_argument("--prompt-seed", type=int, default=d.prompt_seed, help="held-out prompt set")
    p.add_argument("--oracle", action="store_true", help="score the ground truth (sanity check)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", type=Path, help="JSON path (default: ./eval_<model>_<date>.json)")
    add_model_arguments(p)


def cmd_info(a: argparse.Namespace) -> int:
    from models.wan.config import PRESETS
    from models.wan.loader import count_parameters

    if a.model is not None:
        import torch

        from models.footprint import format_footprint, profile_footprint
        from models.profiles import profile

        p = profile(a.model)
        print(p.describe())
        print()
        print(format_footprint(profile_footprint(p, torch.bfloat16), torch.bfloat16))
        return 0
    from models.embedded import BUNDLES, load_bundle
    from models.profiles import PROFILES

    print("embedded models (trained here, in the repo):")
    for name in BUNDLES:
        wan = load_bundle(name).wan_config
        print(
            f"{name:12s} {count_parameters(wan):>15,d} params  dim={wan.dim} "
            f"layers={wan.num_layers} heads={wan.num_heads} + its own decoder (default model)"
        )
    print("\nbare presets (random weights or --checkpoint):")
    for name, cfg in PRESETS.items():
        print(
            f"{name:12s} {count_parameters(cfg):>15,d} params  dim={cfg.dim} "
            f"layers={cfg.num_layers} heads={cfg.num_heads} ffn={cfg.ffn_dim} "
            f"text_dim={cfg.text_dim}"
        )
    print("\nmodel profiles (framecast info --model NAME):")
    for p in PROFILES.values():
        print(f"{p.name:16s} {p.summary}")
    return 0


def cmd_train_decoder(a: argparse.Namespace) -> int:
    from models.train import TrainConfig, train_autoencoder

    config = TrainConfig(
        steps=a.steps,
        batch=a.batch,
        frames=a.frames,
        size=a.size,
        crop=a.crop or None,
        foreground_weight=a.foreground_weight,
        lr=a.lr,
        seed=a.seed,
        log_every=a.log_every,
        out=a.out,
        device=a.device,
        threads=a.threads,
        eval_frames=a.eval_frames,
        init=a.init,
        freeze_encoder=a.freeze_encoder,
    )
    log.info("training the tiny autoencoder: %s", config)
    metrics = train_autoencoder(config, progress=_progress)
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
    p.add_argument(
        "--crop", type=int, default=d.crop or 0, help="train on random crops (8k); 0 = whole"
    )
    p.add_argument(
        "--foreground-weight",
        type=float,
        default=d.foreground_weight,
        help="extra loss weight on object pixels",
    )
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate")
    p.add_argument("--seed", type=int, default=d.seed, help="weights and data")
    p.add_argument("--log-every", type=int, default=d.log_every, help="steps per report")
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument(
        "--eval-frames", type=int, default=d.eval_frames, help="held-out clip frames; 0 = skip"
    )
    p.add_argument("--init", type=Path, help="start from the weights of a past run (its --out)")
    p.add_argument(
        "--freeze-encoder",
        action="store_true",
        help="train the decoder only (keeps the latent space a generator was trained on)",
    )


def cmd_train_latents(a: argparse.Namespace) -> int:
    from models.text import SentenceEncoder
    from models.train.autoencoder import load_autoencoder
    from models.train.latents import LatentSetConfig, build_latent_set, save_latent_set

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    config = LatentSetConfig(
        clips=a.clips,
        frames=a.frames,
        size=a.size,
        seed=a.seed,
        encode_batch=a.encode_batch,
        layout=a.layout,
        head_fraction=a.head_fraction,
    )
    encoder, _ = load_autoencoder(a.autoencoder)
    log.info("encoding world clips with %s: %s", a.autoencoder, config)
    data = build_latent_set(
        config, encoder, SentenceEncoder(max_tokens=config.text_len), progress=_progress
    )
    save_latent_set(data, a.out)
    log.info("wrote %s: latents %s", a.out, tuple(data["latents"].shape))
    return 0


def cmd_train_generator(a: argparse.Namespace) -> int:
    from models.train.generator import GeneratorTrainConfig, train_generator

    config = GeneratorTrainConfig(
        data=a.data,
        preset=a.model_preset,
        steps=a.steps,
        batch=a.batch,
        frames=a.frames,
        lr=a.lr,
        seed=a.seed,
        log_every=a.log_every,
        out=a.out,
        device=a.device,
        threads=a.threads,
        init=a.init,
        context_sigma_max=a.context_sigma_max,
        self_context=a.self_context,
        shift=a.shift,
        foreground_weight=a.foreground_weight,
        motion_weight=a.motion_weight,
        edge_weight=a.edge_weight,
        text_dropout=a.text_dropout,
        head=a.head,
        autocast=a.autocast,
    )
    log.info("training the causal generator: %s", config)
    metrics = train_generator(config, progress=_progress)
    log.info(
        "wrote %s: loss %.4f -> %.4f in %.0fs",
        a.out,
        metrics["loss_start"],
        metrics["loss_final"],
        metrics["wall_s"],
    )
    return 0


def cmd_train_resume(a: argparse.Namespace) -> int:
    from models.train.job import load_job, run_job, stop_on_signals

    job = load_job(a.job)
    evaluate = None
    if job.eval_every and not a.no_eval:
        from bench.learning_curves import checkpoint_scores

        def evaluate(checkpoint: Path, step: int) -> dict[str, object]:
            return checkpoint_scores(
                checkpoint, job.autoencoder, prompts=job.eval_prompts, sampler=job.sampler
            )

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    log.info("training job %s: %s", a.job, job.recipe)
    with stop_on_signals() as stop:
        state = run_job(
            job,
            minutes=a.minutes,
            max_steps=a.max_steps,
            progress=_progress,
            evaluate=evaluate,
            stop=stop,
        )
    log.info("job %s stopped at step %d; commit %s", a.job, state["step"], job.checkpoint)
    return 0


def cmd_train_bundle(a: argparse.Namespace) -> int:
    from models.train.bundle import write_bundle

    write_bundle(a.autoencoder, a.generator, a.out, sampler=a.sampler)
    log.info("wrote the embedded bundle %s", a.out)
    return 0


def _progress(report: object) -> None:
    print(report, file=sys.stderr, flush=True)


def add_train_subcommands(targets: argparse._SubParsersAction) -> None:
    from typing import get_args

    from engine.schedule import Sampler
    from models.train.bundle import DEFAULT_SAMPLER
    from models.train.generator import GeneratorTrainConfig
    from models.train.latents import LatentSetConfig

    tl = targets.add_parser("latents", help="encode world clips for generator training")
    dl = LatentSetConfig()
    tl.add_argument("--autoencoder", type=Path, default=Path("out/taehv"), help="trained AE dir")
    tl.add_argument("--out", type=Path, default=Path("out/world-latents.pt"))
    tl.add_argument("--clips", type=int, default=dl.clips)
    tl.add_argument("--frames", type=int, default=dl.frames, help="video frames per clip (4k)")
    tl.add_argument("--size", type=int, default=dl.size)
    tl.add_argument("--seed", type=int, default=dl.seed)
    tl.add_argument("--encode-batch", type=int, default=dl.encode_batch, help="clips per pass")
    tl.add_argument(
        "--layout",
        choices=("random", "canonical"),
        default=dl.layout,
        help="scene layout: canonical fixes first-frame positions and speed per prompt",
    )
    tl.add_argument(
        "--head-fraction",
        type=float,
        default=dl.head_fraction,
        help="fraction of clips starting at world frame 0 (a stream start); default: none fixed",
    )
    tl.add_argument("--threads", type=int, help="torch CPU threads")
    tl.set_defaults(func=cmd_train_latents)

    tg = targets.add_parser("generator", help="the tiny causal Wan DiT (teacher forcing)")
    dg = GeneratorTrainConfig()
    tg.add_argument("--data", type=Path, default=dg.data, help="from `framecast train latents`")
    tg.add_argument("--model-preset", default=dg.preset, help="models.wan preset to train")
    tg.add_argument("--out", type=Path, default=Path("out/generator"))
    tg.add_argument("--steps", type=int, default=dg.steps)
    tg.add_argument("--batch", type=int, default=dg.batch)
    tg.add_argument("--frames", type=int, default=dg.frames, help="latent frames per clip")
    tg.add_argument("--lr", type=float, default=dg.lr)
    tg.add_argument("--seed", type=int, default=dg.seed)
    tg.add_argument("--log-every", type=int, default=dg.log_every)
    tg.add_argument("--device", default=dg.device)
    tg.add_argument("--threads", type=int, help="torch CPU threads")
    tg.add_argument("--init", type=Path, help="continue from a past run's --out directory")
    tg.add_argument(
        "--self-context",
        type=float,
        default=dg.self_context,
        help="fraction of clips conditioned on the model's own x0 estimates",
    )
    tg.add_argument("--shift", type=float, default=dg.shift, help="sampling schedule shift")
    tg.add_argument(
        "--head",
        type=float,
        default=dg.head,
        help="chance a window of a clip that starts the world starts at its frame 0",
    )
    tg.add_argument(
        "--foreground-weight",
        type=float,
        default=dg.foreground_weight,
        help="extra loss weight on object latents (0: plain MSE)",
    )
    tg.add_argument(
        "--autocast",
        choices=("off", "bf16", "auto"),
        default=dg.autocast,
        help="bf16 autocast; auto: only where bf16 GEMMs measure >= 1.5x faster here",
    )
    tg.add_argument(
        "--motion-weight",
        type=float,
        default=dg.motion_weight,
        help="extra loss weight on latents that changed since the previous frame",
    )
    tg.add_argument(
        "--edge-weight",
        type=float,
        default=dg.edge_weight,
        help="extra loss weight on objects' outlines (where shapes differ)",
    )
    tg.add_argument(
        "--text-dropout",
        type=float,
        default=dg.text_dropout,
        help="chance each word piece of a training prompt is dropped",
    )
    tg.add_argument(
        "--context-sigma-max",
        type=float,
        default=dg.context_sigma_max,
        help="max noise on the clean (cache) copy: robustness to imperfect generated context",
    )
    tg.set_defaults(func=cmd_train_generator)

    from models.train.job import DEFAULT_JOB

    tr = targets.add_parser(
        "resume",
        help="go on with the current training job from its committed checkpoint",
        description="Resume a training job (job.json + checkpoint/) where it stopped and train "
        "until SIGTERM/Ctrl-C, --minutes or --max-steps; it saves on the way out. Run it in "
        "the background at low priority: nice -n 19 framecast train resume &",
    )
    tr.add_argument("--job", type=Path, default=DEFAULT_JOB, help="the job's folder")
    tr.add_argument("--minutes", type=float, help="stop after this much wall time")
    tr.add_argument("--max-steps", type=int, help="stop at this global step")
    tr.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    tr.add_argument(
        "--no-eval", action="store_true", help="skip the job's periodic held-out evaluation"
    )
    tr.set_defaults(func=cmd_train_resume)

    tb = targets.add_parser("bundle", help="assemble trained weights into an embedded bundle")
    tb.add_argument("--autoencoder", type=Path, default=Path("out/taehv"))
    tb.add_argument(
        "--generator",
        type=Path,
        default=Path("out/generator"),
        help="a `train generator` --out folder or a job's checkpoint folder",
    )
    tb.add_argument("--out", type=Path, default=Path("models/weights/world"))
    tb.add_argument(
        "--sampler",
        choices=get_args(Sampler),
        default=DEFAULT_SAMPLER,
        help="the step rule the bundle streams with (a training job's is its job.json 'sampler')",
    )
    tb.set_defaults(func=cmd_train_bundle)


def add_bench_pipeline(sub: argparse._SubParsersAction) -> None:
    """`framecast bench-pipeline` (bench/pipeline_bench.py)."""
    from bench.pipeline_bench import add_pipeline_bench_arguments, pipeline_bench_command

    p = sub.add_parser(
        "bench-pipeline", help="pipeline parallelism: measured streams next to the cost model"
    )
    add_pipeline_bench_arguments(p)
    p.set_defaults(func=pipeline_bench_command)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="framecast", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="stream a clip to an MP4 file")
    g.add_argument("--prompt", required=True, help="what to generate")
    g.add_argument("--frames", type=int, default=48, help="video frames to write")
    g.add_argument("--out", type=Path, default=Path("out/clip.mp4"), help="MP4 file to write")
    g.add_argument(
        "--switch",
        type=_switch,
        action="append",
        metavar="FRAME:PROMPT",
        help="switch the prompt at a video frame (repeatable)",
    )
    g.add_argument(
        "--switch-mode",
        choices=SWITCH_MODES,
        default="recache",
        help="how a switch treats the past",
    )
    add_model_arguments(g)
    g.set_defaults(func=cmd_generate)

    from apps.server import add_serve_arguments, serve_command

    sv = sub.add_parser("serve", help="live sessions: web page, WebRTC, WebSocket, /metrics")
    add_serve_arguments(sv)
    sv.set_defaults(func=serve_command)

    from bench.stream import add_bench_arguments, bench_command

    b = sub.add_parser("bench", help="streaming benchmark (JSON to --out)")
    add_bench_arguments(b)
    b.set_defaults(func=bench_command)

    from bench.e2e import add_e2e_arguments, e2e_command

    e = sub.add_parser(
        "bench-e2e", help="end-to-end benchmark of a real model: denoise + decode, TTFF, FPS"
    )
    add_e2e_arguments(e)
    e.set_defaults(func=e2e_command)
    add_bench_pipeline(sub)

    from bench.tts import add_tts_bench_arguments, tts_bench_command

    bt = sub.add_parser(
        "bench-tts", help="streaming TTS: first audio, real-time factor, underruns, WER (JSON)"
    )
    add_tts_bench_arguments(bt)
    bt.set_defaults(func=tts_bench_command)

    from bench.vc import add_vc_bench_arguments, vc_bench_command

    bv = sub.add_parser(
        "bench-vc", help="voice conversion: latency, block compute, RTF, pitch, WER (JSON)"
    )
    add_vc_bench_arguments(bv)
    bv.set_defaults(func=vc_bench_command)

    from bench.vc_live import add_vc_live_arguments, vc_live_command

    bl = sub.add_parser(
        "bench-vc-live",
        help="voice conversion of a live microphone over WebRTC: end to end, stage by stage (JSON)",
    )
    add_vc_live_arguments(bl)
    bl.set_defaults(func=vc_live_command)

    from bench.av_sync import add_av_sync_arguments, av_sync_command

    ba = sub.add_parser(
        "bench-av-sync",
        help="audio/video skew of one session at a real websockets client over minutes (JSON)",
    )
    add_av_sync_arguments(ba)
    ba.set_defaults(func=av_sync_command)

    sp = sub.add_parser("speak", help="text to speech with the streaming Piper voice (WAV)")
    add_speak_arguments(sp)
    sp.set_defaults(func=cmd_speak)

    cv = sub.add_parser(
        "convert", help="voice conversion of an audio file, fed as a live input would be (WAV)"
    )
    add_convert_arguments(cv)
    cv.set_defaults(func=cmd_convert)

    ev = sub.add_parser(
        "eval", help="prompt adherence, drift and switch response on held-out prompts (JSON)"
    )
    add_eval_arguments(ev)
    ev.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="list presets, parameter counts and model profiles")
    i.add_argument(
        "--model",
        default=None,
        help="print one public model profile (self-forcing, causvid, longlive, "
        "rolling-forcing) and its components' memory at bf16",
    )
    i.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train a model on the procedural world")
    targets = t.add_subparsers(dest="target", required=True)
    td = targets.add_parser(
        "decoder", help="the tiny streaming autoencoder (progress on stderr, weights to --out)"
    )
    add_train_arguments(td)
    td.set_defaults(func=cmd_train_decoder)
    add_train_subcommands(targets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO
        if args.verbose or args.command not in ("bench", "bench-e2e", "eval")
        else logging.WARNING,
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
    except BrokenPipeError:  # `framecast info | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
