"""A session's voice: text in over the control channel, paced 20 ms audio frames out.

SessionSpeech runs one AudioGenerator (streaming TTS) for a LiveSession:
- ``say`` feeds text as it arrives; model work runs on the voice's own worker
  thread (never on the event loop, never behind the video's blocks);
- generation runs at most ``SpeechConfig.lead`` seconds ahead of the session
  clock, so a ``cancel`` (barge-in) has little to throw away;
- ``cancel`` drops the text, the generator's work in flight and every chunk not
  yet taken, and bumps ``epoch`` so transports drop what they hold.

PacedAudio turns the chunks into 20 ms frames at 48 kHz (what Opus and WebRTC
carry), each released ``SpeechConfig.lead`` seconds before it is due on the
session clock: a client never holds more than that of unplayed audio, which
bounds how long speech goes on after a barge-in. With ``silence=True`` (WebRTC)
the gaps between utterances are filled with silent frames, so the RTP clock
never jumps; WebSocket clients get speech only.

Usage::

    speech = SessionSpeech("s1", generator, SpeechConfig(), start_time=time.monotonic())
    speech.say("Hello there, ", final=False)
    paced = PacedAudio(speech, silence=False)
    frame = await paced.next_frame()       # PacedFrame: int16 [960, channels], pts at 48 kHz
    speech.cancel()
    await speech.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from engine.audio import AudioFramer, AudioGenerator, AudioStream, InputKind
from engine.media import AudioChunk

log = logging.getLogger(__name__)

FRAME_RATE = 48_000  # Hz: Opus and WebRTC audio
FRAME_SECONDS = 0.020  # seconds per frame
FRAME_SAMPLES = int(FRAME_RATE * FRAME_SECONDS)  # 960
FRAME_TIME_BASE = Fraction(1, FRAME_RATE)


class SpeechClosed(Exception):
    """The session's voice is closed."""


@dataclass(frozen=True)
class SpeechConfig:
    """How far ahead a session's voice runs."""

    lead: float = 0.06  # seconds of audio made and sent before it is due (bounds barge-in)
    generate_ahead: float = 0.5  # seconds the generator may run ahead of the clock
    # a converter's output starts this long after it is made: its blocks come just in time
    # (one per input block), and this absorbs their compute jitter instead of gaps
    input_margin: float = 0.04

    def __post_init__(self) -> None:
        if not 0 <= self.lead <= self.generate_ahead:
            raise ValueError(
                f"need 0 <= lead <= generate_ahead, got {self.lead}, {self.generate_ahead}"
            )


@dataclass(frozen=True)
class PacedFrame:
    samples: np.ndarray  # int16 [FRAME_SAMPLES, channels]
    pts: int  # at FRAME_RATE, on the session clock
    discontinuity: bool  # audio was dropped (barge-in) or a gap starts here
    silent: bool  # filler between utterances


class SessionSpeech:
    """One session's AudioGenerator on the session clock; see the module docstring."""

    def __init__(
        self,
        session_id: str,
        generator: AudioGenerator,
        config: SpeechConfig | None = None,
        *,
        start_time: float | None = None,
    ) -> None:
        self.id = session_id
        self.config = config or SpeechConfig()
        margin = self.config.input_margin if generator.takes == "audio" else 0.0
        self.stream = AudioStream(
            generator, clock=time.monotonic, start_time=start_time, start_margin=margin
        )
        self.epoch = 0  # bumped by cancel
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"voice-{session_id}")
        self._chunks: asyncio.Queue[AudioChunk | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._closed = False
        self.said = 0  # "say" messages
        self.heard = 0.0  # seconds of input audio
        self._task = asyncio.get_running_loop().create_task(
            self._produce(), name=f"voice-{session_id}"
        )

    @property
    def sample_rate(self) -> int:
        return self.stream.sample_rate

    @property
    def channels(self) -> int:
        return self.stream.generator.channels

    @property
    def takes(self) -> InputKind:
        """What the generator is fed: "text" (say) or "audio" (a microphone)."""
        return self.stream.generator.takes

    def clock_seconds(self) -> float:
        """The session clock: seconds since the voice's start time."""
        return self.stream.clock() - self.stream.start_time

    def say(self, text: str, final: bool = False) -> None:
        """More text; ``final`` speaks what the chunker still holds (the end of a turn)."""
        if self._closed:
            raise SpeechClosed(f"the voice of session {self.id} is closed")
        self.said += 1
        self.stream.feed_text(text)  # string work only: fine on the event loop
        if final:
            self.stream.end_input()
        self._wake.set()

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """Input audio (a microphone) for a converting generator; TypeError for a voice."""
        if self._closed:
            raise SpeechClosed(f"the voice of session {self.id} is closed")
        self.heard += len(samples) / sample_rate
        self.stream.feed_audio(samples, sample_rate)
        self._wake.set()

    def cancel(self) -> int:
        """Barge-in; returns the epoch that frames made from now on carry."""
        self.stream.cancel()
        self.epoch += 1
        while not self._chunks.empty():
            self._chunks.get_nowait()
        self._interrupt.set()
        log.info("[%s] speech cancelled", self.id)
        return self.epoch

    async def next_chunk(self) -> AudioChunk:
        """The next chunk made; raises SpeechClosed once the voice is closed."""
        chunk = await self._chunks.get()
        if chunk is None:
            self._chunks.put_nowait(None)  # every later caller sees the end too
            raise SpeechClosed(f"the voice of session {self.id} is closed")
        return chunk

    def stats(self) -> dict[str, Any]:
        s = self.stream.stats
        return {
            "sample_rate": self.sample_rate,
            "audio_seconds": round(s.seconds, 3),
            "audio_pieces": s.pieces,
            "first_audio_s": None if s.first_audio_s is None else round(s.first_audio_s, 4),
            "real_time_factor": None
            if s.real_time_factor is None
            else round(s.real_time_factor, 4),
            "underruns": s.underruns,
            "cancels": s.cancels,
            "says": self.said,
            "input_seconds": round(self.heard, 3),
        }

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stream.cancel()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False)
        self._chunks.put_nowait(None)

    async def _produce(self) -> None:
        aloop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while True:
                    epoch = self.epoch
                    chunk = await aloop.run_in_executor(self._executor, self.stream.next_chunk)
                    if chunk is None:
                        break
                    if epoch != self.epoch:
                        continue  # made for text a cancel dropped
                    self._chunks.put_nowait(chunk)
                    ahead = chunk.time + chunk.duration - self.clock_seconds()
                    if ahead > self.config.generate_ahead:
                        self._interrupt.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(
                                self._interrupt.wait(), ahead - self.config.generate_ahead
                            )
        except asyncio.CancelledError:
            raise
        except Exception:  # a failing voice ends the speech, not the session's video
            log.exception("[%s] speech generation failed", self.id)
            self._closed = True
            self._chunks.put_nowait(None)


class PacedAudio:
    """A SessionSpeech as 20 ms, 48 kHz int16 frames released ``lead`` s before they are due."""

    def __init__(self, speech: SessionSpeech, *, silence: bool) -> None:
        self.speech = speech
        self.silence = silence
        self.framer = AudioFramer(FRAME_RATE, FRAME_SAMPLES, speech.channels)
        self._epoch = speech.epoch
        self._next_pts: int | None = None  # pts of the next frame out
        self._discontinuity = True
        self._pending: asyncio.Task[AudioChunk] | None = None
        self.frames_sent = 0
        self.silent_frames = 0

    async def next_frame(self) -> PacedFrame:
        lead = self.speech.config.lead
        while True:
            if self.speech.epoch != self._epoch:  # barge-in: drop what is held
                self._epoch = self.speech.epoch
                self.framer.clear()
                self._discontinuity = True
            popped = self.framer.pop()
            if popped is not None:
                samples, pts = popped
                if self._next_pts is not None and pts < self._next_pts:
                    pts = self._next_pts  # never step back on the wire
                return await self._release(samples, pts, silent=False)
            clock = self.speech.clock_seconds()
            if self.framer.held:  # the tail of an utterance: more of it, or pad it when due
                until = (self.framer.end_pts - self.framer.held) / FRAME_RATE - lead
                chunk = await self._chunk(max(0.0, until - clock))
                if chunk is None:
                    self.framer.end_run()
                    continue
            elif self.silence:  # speech, or a silent frame once the next one is due
                # Wait for speech until the frame is due, not ``lead`` before: a converter's
                # blocks come just in time (one per input block, due ``input_margin`` after
                # they are made), and a filler sent early would push every later block back
                # by a frame (measured: 40 ms more end to end over WebRTC).
                now_pts = round(clock * FRAME_RATE)
                at = now_pts if self._next_pts is None else max(self._next_pts, now_pts)
                chunk = await self._chunk(max(0.0, at / FRAME_RATE - clock))
                if chunk is None:
                    zeros = np.zeros((FRAME_SAMPLES, self.framer.channels), np.float32)
                    return await self._release(zeros, at, silent=True)
            else:
                chunk = await self._chunk(None)
                assert chunk is not None
            if self.speech.epoch != self._epoch:
                continue  # made before a cancel that came meanwhile
            if self._next_pts is not None:
                self.framer.align(self._next_pts)
            self.framer.push(chunk)

    async def _chunk(self, timeout: float | None) -> AudioChunk | None:
        """The next chunk, or None after ``timeout`` seconds (the pending get is kept)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.speech.next_chunk())
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            return None
        task, self._pending = self._pending, None
        return task.result()

    async def _release(self, samples: np.ndarray, pts: int, silent: bool) -> PacedFrame:
        due = pts / FRAME_RATE - self.speech.config.lead
        delay = due - self.speech.clock_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        discontinuity = self._discontinuity or (
            self._next_pts is not None and pts != self._next_pts
        )
        self._discontinuity = False
        self._next_pts = pts + FRAME_SAMPLES
        self.frames_sent += 1
        self.silent_frames += silent
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
        return PacedFrame(pcm, pts, discontinuity, silent)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
