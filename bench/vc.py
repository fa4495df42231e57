"""Voice-conversion benchmark: latency, real-time factor, chunk timing, pitch accuracy, WER.

The WORLD converter (models/audio/dsp_vc.py) is fed held-out sentences in the
packaged voice 20 ms at a time, as a live microphone would feed it:

- algorithmic latency: what the converter holds back by design (block + crossfade);
- compute per block: the time ``next_piece`` takes per output block (p50, p90,
  max), and the real-time factor over the whole input; end-to-end latency at a
  live input is about algorithmic latency + one block's compute;
- pitch: the frame-wise shift of the output's F0 over the input's, in
  semitones (Harvest), against the requested shift;
- intelligibility: WER of input and output by Whisper tiny.en.

Usage::

    framecast bench-vc                        # JSON to out/bench_vc.json
    framecast bench-vc --semitones -3 --formant 0.9
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.env import environment, write_json
from bench.tts import HELD_OUT_SENTENCES
from engine.audio import AudioStream
from models.audio.asr import SpeechRecognizer, word_error_rate
from models.audio.dsp_vc import ConverterConfig, WorldVoiceConverter
from models.audio.pitch import pitch_shift
from models.audio.tts import PiperSpeech, SpeechConfig


def run(a: argparse.Namespace) -> dict[str, Any]:
    text = " ".join(HELD_OUT_SENTENCES[: a.sentences])
    voice = PiperSpeech.load(config=SpeechConfig(noise_scale=0.0, noise_w=0.0))
    stream = AudioStream(voice, clock=lambda: 0.0)
    stream.feed_text(text)
    stream.end_input()
    source = np.concatenate([c.samples[:, 0] for c in iter(stream.next_chunk, None)])
    rate = voice.sample_rate
    config = ConverterConfig(semitones=a.semitones, formant=a.formant, block=a.block)
    vc = WorldVoiceConverter(config)
    step = round(0.02 * rate)
    blocks: list[float] = []
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(source), step):
        vc.feed_audio(source[i : i + step], rate)
        while True:
            b0 = time.perf_counter()
            piece = vc.next_piece()
            if piece is None:
                break
            blocks.append(time.perf_counter() - b0)
            out.append(piece.samples)
    wall = time.perf_counter() - t0
    converted = np.concatenate(out)
    seconds = len(converted) / config.sample_rate
    shift, spread = pitch_shift(
        source, rate, converted, config.sample_rate, delay=config.crossfade
    )
    result: dict[str, Any] = {
        "benchmark": "vc",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "env": environment(torch.device("cpu")),
        "versions": {p: version(p) for p in ("pyworld-prebuilt", "av", "numpy")},
        "config": {**vars(config), "input": f"{a.sentences} held-out sentences, packaged voice"},
        "audio_seconds": seconds,
        "algorithmic_latency_s": config.latency,
        "block_compute_s": {
            "p50": float(np.percentile(blocks, 50)),
            "p90": float(np.percentile(blocks, 90)),
            "max": max(blocks),
            "blocks": len(blocks),
        },
        "end_to_end_estimate_s": config.latency + float(np.percentile(blocks, 90)),
        "real_time_factor": wall / seconds,
        "pitch": {
            "requested_semitones": a.semitones,
            "measured_semitones": shift,
            "iqr_semitones": spread,
        },
    }
    if not a.no_wer:
        asr = SpeechRecognizer()
        result["wer"] = {
            "input": word_error_rate(text, asr.transcribe(source, rate)),
            "output": word_error_rate(text, asr.transcribe(converted, config.sample_rate)),
        }
    return result


def add_vc_bench_arguments(p: argparse.ArgumentParser) -> None:
    d = ConverterConfig()
    p.add_argument("--semitones", type=float, default=d.semitones, help="pitch shift")
    p.add_argument("--formant", type=float, default=d.formant, help="envelope stretch")
    p.add_argument("--block", type=float, default=d.block, help="seconds of input per step")
    p.add_argument("--sentences", type=int, default=10, help="held-out sentences as input")
    p.add_argument("--no-wer", action="store_true", help="skip the speech-recognition check")
    p.add_argument("--out", type=Path, default=Path("out/bench_vc.json"), help="JSON file")


def vc_bench_command(a: argparse.Namespace) -> int:
    result = run(a)
    write_json(result, a.out)
    b, p = result["block_compute_s"], result["pitch"]
    line = (
        f"{result['env']['cpu_model']}: algorithmic latency "
        f"{result['algorithmic_latency_s'] * 1000:.0f} ms, block compute p90 "
        f"{b['p90'] * 1000:.0f} ms, RTF {result['real_time_factor']:.3f}, pitch "
        f"{p['measured_semitones']:+.2f} st for {p['requested_semitones']:+.1f}"
    )
    if "wer" in result:
        w = result["wer"]
        line += f", WER {w['input'] * 100:.1f}% -> {w['output'] * 100:.1f}%"
    print(line, file=sys.stderr)
    print(json.dumps(result))
    return 0
