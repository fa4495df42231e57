"""Voice conversion of a live microphone over WebRTC: end to end at a real aiortc client,
and where the time goes.

A real aiortc client sends recorded held-out sentences (the packaged Piper
voice, 0.8 s of silence between them) as its microphone, in real time, to a
real server on 127.0.0.1 whose sessions convert audio (the WORLD converter by
default), and plays back the converted track. Every utterance's onset, the first
loud 20 ms after at least ``QUIET_S`` of quiet, is timed at five points:

    sent   the client's track hands the frame to aiortc (Opus, RTP)
    fed    the server's microphone reader hands it to the session
           (uplink: Opus both ends, loopback UDP, the server's jitter buffer)
    made   the converter returns its first loud piece (block + crossfade + compute)
    out    the session's WebRTC audio track hands it to aiortc (pacing, start margin)
    heard  the client's track returns it (Opus, loopback, the client's jitter buffer)

aiortc holds 4 audio frames (80 ms) in every receiver's jitter buffer; the
server's own receiver uses ``WebRTCConfig.microphone_buffer`` frames instead
(``--microphone-buffer``), the client keeps aiortc's default, as any aiortc
client would. Timing hooks wrap the session's ``feed_audio``, the converter's
``next_piece`` and the audio track's ``recv`` in this process only.

Usage::

    framecast bench-vc-live                      # JSON to out/bench_vc_live.json
    framecast bench-vc-live --microphone-buffer 4 --sentences 3
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from bench.env import environment, write_json
from bench.tts import HELD_OUT_SENTENCES
from engine.audio import AudioGenerator, AudioPiece

STAGES = ("sent", "fed", "made", "out", "heard")
QUIET_S = 0.4  # an onset follows at least this long without a loud frame
LOUD = 0.08  # peak (full scale 1.0) of a loud 20 ms frame
FRAME = 960  # 20 ms at 48 kHz


class RecordedMicrophone:
    """An aiortc audio track that plays int16 48 kHz mono in real time, 20 ms a frame.

    ``on_frame(time, peak)`` is called as each frame is handed to aiortc.
    """

    def __init__(self, pcm: np.ndarray, on_frame: Callable[[float, float], None] | None = None):
        from aiortc.mediastreams import MediaStreamTrack

        class Track(MediaStreamTrack):
            kind = "audio"

            def __init__(self) -> None:
                super().__init__()
                self.sent = 0
                self.t0: float | None = None

            async def recv(self) -> av.AudioFrame:
                if self.t0 is None:
                    self.t0 = time.monotonic()
                await asyncio.sleep(max(0.0, self.t0 + self.sent / 48_000 - time.monotonic()))
                piece = pcm[self.sent : self.sent + FRAME]
                piece = np.pad(piece, (0, FRAME - len(piece)))
                if on_frame is not None:
                    on_frame(time.monotonic(), float(np.abs(piece).max()) / 32768)
                frame = av.AudioFrame.from_ndarray(piece[None].astype(np.int16), layout="mono")
                frame.sample_rate, frame.pts = 48_000, self.sent
                frame.time_base = Fraction(1, 48_000)
                self.sent += FRAME
                return frame

        self.track = Track()
        self.seconds = len(pcm) / 48_000


class TimedConverter:
    """An AudioGenerator that records when each piece came out, and how loud it was."""

    def __init__(self, inner: AudioGenerator, record: Callable[[float, float], None]) -> None:
        self.inner = inner
        self.record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def next_piece(self) -> AudioPiece | None:
        piece = self.inner.next_piece()
        if piece is not None and len(piece.samples):
            self.record(time.monotonic(), float(np.abs(piece.samples).max()))
        return piece


def onsets(events: list[tuple[float, float]], loud: float = LOUD) -> list[float]:
    """Times of the first loud event after ``QUIET_S`` without one (events in time order)."""
    out, last_loud = [], -1e9
    for t, peak in events:
        if peak >= loud:
            if t - last_loud >= QUIET_S:
                out.append(t)
            last_loud = t
    return out


def follow(events: dict[str, list[tuple[float, float]]]) -> dict[str, list[float]]:
    """Each utterance's onset at ``sent``, then at every later stage the first loud event
    at or after the stage before it saw the utterance (utterances are 0.8 s apart, the
    path well under that, so an event cannot belong to the previous one)."""
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    for start in onsets(events["sent"]):
        t = start
        path = [t]
        for stage in STAGES[1:]:
            later = [e for e, peak in events[stage] if e >= t and peak >= LOUD]
            if not later or later[0] - start > 2.0:
                break
            t = later[0]
            path.append(t)
        if len(path) == len(STAGES):
            for stage, at in zip(STAGES, path, strict=True):
                times[stage].append(at)
    if not times["sent"]:
        raise RuntimeError("no utterance made it through every stage within 2 s")
    return times


def recorded_sentences(count: int) -> np.ndarray:
    """Held-out sentences in the packaged voice, 48 kHz int16, 0.8 s of silence around each."""
    from engine.audio import AudioStream
    from models.audio.asr import resample_mono
    from models.audio.tts import PiperSpeech, SpeechConfig

    voice = PiperSpeech.load(config=SpeechConfig(noise_scale=0.0, noise_w=0.0))
    gap = np.zeros(int(0.8 * 48_000), np.float32)
    parts = [gap]
    for sentence in HELD_OUT_SENTENCES[:count]:
        stream = AudioStream(voice, clock=lambda: 0.0)
        stream.feed_text(sentence)
        stream.end_input()
        pcm = np.concatenate([c.samples[:, 0] for c in iter(stream.next_chunk, None)])
        parts += [resample_mono(pcm, voice.sample_rate, 48_000), gap]
    return (np.clip(np.concatenate(parts), -1, 1) * 32767).astype(np.int16)


async def measure(a: argparse.Namespace) -> dict[str, Any]:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    import streaming.webrtc as webrtc
    from apps.server import SharedStreamFactory, load_converter
    from models.resolve import ModelOptions
    from streaming.session import SessionManager, StartParams

    events: dict[str, list[tuple[float, float]]] = {s: [] for s in STAGES}
    mic = RecordedMicrophone(
        recorded_sentences(a.sentences), lambda t, p: events["sent"].append((t, p))
    )
    converters = load_converter((a.semitones, a.formant))

    def timed_factory(params: StartParams) -> TimedConverter:
        return TimedConverter(converters(params), lambda t, p: events["made"].append((t, p)))

    speech_track = webrtc.SpeechAudioTrack
    base_recv = speech_track.recv

    async def timed_recv(self: webrtc.SpeechAudioTrack) -> av.AudioFrame:
        frame = await base_recv(self)
        peak = float(np.abs(frame.to_ndarray()).max()) / 32768
        events["out"].append((time.monotonic(), peak))
        return frame

    factory = SharedStreamFactory(ModelOptions(model="nano", height=64, width=64, fps=16))
    manager = SessionManager(factory, max_sessions=1, speech_factory=timed_factory)
    gateway = webrtc.WebRTCGateway(
        webrtc.WebRTCConfig(host_addresses=("127.0.0.1",), microphone_buffer=a.microphone_buffer)
    )
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    speech_track.recv = timed_recv  # type: ignore[method-assign]
    try:
        session = await manager.open({"prompt": "a cat"})
        base_feed = session.feed_audio

        def timed_feed(samples: np.ndarray, sample_rate: int) -> None:
            events["fed"].append((time.monotonic(), float(np.abs(samples).max())))
            base_feed(samples, sample_rate)

        session.feed_audio = timed_feed  # type: ignore[method-assign]
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver(mic.track, direction="sendrecv")
        tracks: dict[str, MediaStreamTrack] = {}
        pc.on("track", lambda t: tracks.__setitem__(t.kind, t))
        with webrtc.ice_host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        sdp, type_ = await gateway.answer(pc.localDescription.sdp, "offer", session)
        await pc.setRemoteDescription(RTCSessionDescription(sdp, type_))
        deadline = time.monotonic() + 20
        while "audio" not in tracks:
            if time.monotonic() > deadline:
                raise TimeoutError("the server's audio track never arrived")
            await asyncio.sleep(0.02)
        end = time.monotonic() + mic.seconds + 2.0
        while time.monotonic() < end:
            try:
                frame = await asyncio.wait_for(tracks["audio"].recv(), 5)
            except MediaStreamError:
                break
            assert isinstance(frame, av.AudioFrame)
            peak = float(np.abs(frame.to_ndarray()).max()) / 32768
            events["heard"].append((time.monotonic(), peak))
    finally:
        speech_track.recv = base_recv  # type: ignore[method-assign]
        await pc.close()
        await gateway.close()
        await manager.close_all()
        factory.close()

    times = follow(events)
    stages = {
        f"{a_}->{b_}": [1000 * (tb - ta) for ta, tb in zip(times[a_], times[b_], strict=True)]
        for a_, b_ in itertools.pairwise(STAGES)
    }
    total = [1000 * (h - s) for s, h in zip(times["sent"], times["heard"], strict=True)]
    return {
        "utterances": len(times["sent"]),
        "utterances_sent": len(onsets(events["sent"])),
        "end_to_end_ms": _summary(total),
        "stages_ms": {k: _summary(v) for k, v in stages.items()},
    }


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 1),
        "max": round(max(values), 1),
        "all": [round(v, 1) for v in values],
    }


def run(a: argparse.Namespace) -> dict[str, Any]:
    from streaming.speech import SpeechConfig as SessionSpeechConfig

    speech = SessionSpeechConfig()
    return {
        "benchmark": "vc_live",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "env": environment(torch.device("cpu")),
        "config": {
            "converter": f"world {a.semitones:+g} semitones, formant x{a.formant:g}",
            "sentences": a.sentences,
            "server_microphone_buffer_frames": a.microphone_buffer,
            "client_jitter_buffer_frames": 4,
            "speech_lead_s": speech.lead,
            "speech_input_margin_s": speech.input_margin,
            "transport": "WebRTC (aiortc both ends, Opus), 127.0.0.1",
            "video": "nano 64x64 at 16 fps beside the voice",
        },
        **asyncio.run(measure(a)),
    }


def add_vc_live_arguments(p: argparse.ArgumentParser) -> None:
    from streaming.webrtc import WebRTCConfig

    p.add_argument("--sentences", type=int, default=5, help="held-out sentences to send")
    p.add_argument("--semitones", type=float, default=4.0, help="pitch shift")
    p.add_argument("--formant", type=float, default=1.0, help="formant scale")
    p.add_argument(
        "--microphone-buffer",
        type=int,
        default=WebRTCConfig().microphone_buffer,
        help="audio frames (20 ms) the server's receiver holds before playing (aiortc: 4)",
    )
    p.add_argument("--out", type=Path, default=Path("out/bench_vc_live.json"), help="JSON file")


def vc_live_command(a: argparse.Namespace) -> int:
    result = run(a)
    write_json(result, a.out)
    e2e = result["end_to_end_ms"]
    parts = ", ".join(f"{k} {v['median']:.0f}" for k, v in result["stages_ms"].items())
    print(
        f"voice conversion over WebRTC, {result['utterances']} utterances: end to end median "
        f"{e2e['median']:.0f} ms (max {e2e['max']:.0f}); median ms per stage: {parts}; "
        f"wrote {a.out}",
        file=sys.stderr,
    )
    return 0
