"""Audio generators and the stream that puts their output on a session clock.

An audio generator (streaming TTS, voice conversion) is chunked, causal and
stateful like the video generators: input arrives in pieces (text as a
language model writes it, microphone audio 20 ms at a time), and output
leaves in pieces as soon as each is made, never waiting for the whole.

Usage (a worker thread; the session never calls ``next_piece`` on its event loop)::

    stream = AudioStream(generator)
    stream.feed_text("Hello there, ")
    stream.feed_text("how are you?")
    stream.end_input()
    while (chunk := stream.next_chunk()) is not None:   # AudioChunk, pts in samples
        ...
    stream.cancel()                                      # barge-in: drop what is pending

pts count samples at the generator's rate from the stream's start. Speech is
not continuous: when a piece is made after the previous one has finished
playing (``clock`` says so), its pts jump to the clock's now (a gap of
silence; plus ``start_margin``), so audio never plays late to keep an old
timeline; otherwise it follows the previous piece back to back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

import av
import numpy as np

from engine.media import AudioChunk, PhonemeMark

InputKind: TypeAlias = Literal["text", "audio"]


@dataclass(frozen=True)
class AudioPiece:
    """What a generator hands the stream: samples and the phonemes in them.

    Mark times are in samples from the start of this piece (they may end after it).
    """

    samples: np.ndarray  # float32 [N] mono or [N, channels]
    marks: tuple[PhonemeMark, ...] = ()
    end_of_utterance: bool = False  # the last piece of what was asked so far


@runtime_checkable
class AudioGenerator(Protocol):
    """A chunked, causal, stateful, cancellable audio generator.

    ``feed_*`` and ``cancel`` may be called from any thread while
    ``next_piece`` runs on the stream's worker: implementations guard their
    state, and a ``cancel`` during ``next_piece`` makes it return None.
    """

    @property
    def sample_rate(self) -> int: ...

    @property
    def channels(self) -> int: ...

    @property
    def takes(self) -> InputKind:
        """What it is fed: "text" (feed_text) or "audio" (feed_audio)."""
        ...

    def feed_text(self, text: str) -> None:
        """More input text (raises TypeError for generators that take no text)."""
        ...

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """More input audio, float32 [N] or [N, channels] (TypeError where none is taken)."""
        ...

    def end_input(self) -> None:
        """The input is complete for now: speak what is still held back."""
        ...

    def next_piece(self) -> AudioPiece | None:
        """Make the next piece of output (the model work happens here); None when idle."""
        ...

    def cancel(self) -> None:
        """Forget all pending input and output (barge-in)."""
        ...

    def reset(self) -> None:
        """Back to a fresh state (cancel, and clear any memory of past input)."""
        ...


@dataclass
class AudioStats:
    """What a listener would measure: first audio, real-time factor, underruns."""

    pieces: int = 0
    samples: int = 0
    seconds: float = 0.0  # of audio made
    compute_s: float = 0.0  # wall time inside next_piece for pieces that made audio
    first_audio_s: float | None = None  # input start -> first piece out, for the last utterance
    underruns: int = 0  # pieces of an utterance made after the previous one had played out
    cancels: int = 0
    first_audio_history: list[float] = field(default_factory=list)

    @property
    def real_time_factor(self) -> float | None:
        """Compute seconds per second of audio (< 1: faster than real time)."""
        return None if not self.seconds else self.compute_s / self.seconds


class AudioStream:
    """One audio generator on a session clock: pieces -> AudioChunks with pts."""

    def __init__(
        self,
        generator: AudioGenerator,
        *,
        clock: Callable[[], float] = time.monotonic,
        start_time: float | None = None,
        start_margin: float = 0.0,
    ) -> None:
        self.generator = generator
        # seconds between "now" and a piece that starts after silence: room for the next
        # pieces of a generator paced by its input (a converter makes one per input block,
        # just in time), so the jitter of its compute does not open gaps
        self.start_margin = start_margin
        self.sample_rate = generator.sample_rate
        self.time_base = Fraction(1, self.sample_rate)
        self.clock = clock
        self.start_time = clock() if start_time is None else start_time
        self.stats = AudioStats()
        self._next_pts = 0  # where the next piece goes when it follows on
        self._input_since: float | None = None  # when input arrived with no audio out yet
        self._speaking = False  # an utterance is under way: a late piece is an underrun
        self._lock = threading.Lock()

    def now_pts(self) -> int:
        """The clock's now in samples since the stream started."""
        return int((self.clock() - self.start_time) * self.sample_rate)

    def feed_text(self, text: str) -> None:
        self._mark_input()
        self.generator.feed_text(text)

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        self._mark_input()
        self.generator.feed_audio(samples, sample_rate)

    def end_input(self) -> None:
        self.generator.end_input()

    def cancel(self) -> None:
        """Barge-in: the generator drops its work; the timeline restarts at the next input."""
        self.generator.cancel()
        with self._lock:
            self._input_since = None
            self._speaking = False
            self.stats.cancels += 1
            self._next_pts = min(self._next_pts, self.now_pts())

    def next_chunk(self) -> AudioChunk | None:
        """The next piece on the clock, or None when the generator is idle."""
        t0 = time.perf_counter()
        piece = self.generator.next_piece()
        elapsed = time.perf_counter() - t0
        if piece is None or not len(piece.samples):
            with self._lock:
                self._speaking = False  # waiting for input is not an underrun
            return None
        samples = np.asarray(piece.samples, np.float32)
        if samples.ndim == 1:
            samples = samples[:, None]
        with self._lock:
            s = self.stats
            now = self.now_pts()
            if self._next_pts < now:  # the previous audio has played out: start now
                s.underruns += int(self._speaking)
                self._next_pts = now + round(self.start_margin * self.sample_rate)
            pts = self._next_pts
            self._next_pts += len(samples)
            if self._input_since is not None:
                s.first_audio_s = self.clock() - self._input_since
                s.first_audio_history.append(s.first_audio_s)
                self._input_since = None
            self._speaking = not piece.end_of_utterance
            s.pieces += 1
            s.samples += len(samples)
            s.seconds += len(samples) / self.sample_rate
            s.compute_s += elapsed
        marks = tuple(PhonemeMark(m.phoneme, pts + m.start, pts + m.end) for m in piece.marks)
        return AudioChunk(samples, self.sample_rate, pts, self.time_base, marks)

    def _mark_input(self) -> None:
        """Input that finds the stream silent starts a first-audio measurement."""
        with self._lock:
            if self._input_since is None and not self._speaking:
                self._input_since = self.clock()


class AudioFramer:
    """AudioChunks of any rate and length -> fixed frames at one rate, on the chunks' timeline.

    Transports send audio in fixed frames (Opus and WebRTC: 20 ms at 48 kHz).
    Chunks are resampled with PyAV (one resampler per run of contiguous audio,
    so there are no seams between chunks) and placed at their pts: a chunk that
    starts more than a frame after the held audio ends starts a new run after
    silence (the resampler's delay and pts rounding stay well under a frame);
    one that starts earlier follows on without overlapping.

    Usage::

        framer = AudioFramer(rate=48_000, frame_samples=960)
        framer.push(chunk)
        while (frame := framer.pop()) is not None:   # (float32 [960, channels], pts at 48 kHz)
            ...
        framer.end_run()                              # the speech paused: pad and release the tail
    """

    def __init__(self, rate: int = 48_000, frame_samples: int = 960, channels: int = 1) -> None:
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        self.rate, self.frame_samples, self.channels = rate, frame_samples, channels
        self._layout = "mono" if channels == 1 else "stereo"
        self._held = np.zeros((0, channels), np.float32)
        self._held_pts = 0  # pts (at rate) of _held[0]
        self._resampler: Any = None
        self._source_rate = 0

    @property
    def end_pts(self) -> int:
        """Where the audio pushed so far ends, at ``rate``."""
        return self._held_pts + len(self._held)

    @property
    def held(self) -> int:
        """Samples waiting to make a full frame."""
        return len(self._held)

    def align(self, pts: int) -> None:
        """When nothing is held, start the next run no earlier than ``pts`` (frames already
        sent up to there, e.g. silence)."""
        if not len(self._held) and self._resampler is None:
            self._held_pts = max(self._held_pts, pts)

    def clear(self) -> None:
        """Forget everything held (barge-in)."""
        self._held = self._held[:0]
        self._resampler = None

    def push(self, chunk: AudioChunk) -> None:
        samples = np.asarray(chunk.samples, np.float32)
        if samples.ndim != 2 or samples.shape[1] != self.channels:
            raise ValueError(f"expected float32 [N, {self.channels}] samples, got {samples.shape}")
        start = round(chunk.pts * chunk.time_base * self.rate)
        if (
            self._resampler is None
            or start > self.end_pts + self.frame_samples
            or chunk.sample_rate != self._source_rate
        ):
            self.end_run()
            if len(self._held):  # silence between the held audio and the new run
                gap = max(0, start - self.end_pts)
                self._held = np.concatenate(
                    [self._held, np.zeros((gap, self.channels), np.float32)]
                )
            else:
                self._held_pts = max(start, self._held_pts)
            self._source_rate = chunk.sample_rate
            self._resampler = av.AudioResampler(format="flt", layout=self._layout, rate=self.rate)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.reshape(1, -1)), format="flt", layout=self._layout
        )
        frame.sample_rate = chunk.sample_rate
        self._append(self._resampler.resample(frame))

    def end_run(self) -> None:
        """Release the resampler's tail and pad the held audio to a whole frame."""
        if self._resampler is not None:
            self._append(self._resampler.resample(None))
            self._resampler = None
        partial = len(self._held) % self.frame_samples
        if partial:
            pad = np.zeros((self.frame_samples - partial, self.channels), np.float32)
            self._held = np.concatenate([self._held, pad])

    def pop(self) -> tuple[np.ndarray, int] | None:
        """The next whole frame and its pts, or None until one is held."""
        if len(self._held) < self.frame_samples:
            return None
        frame, self._held = self._held[: self.frame_samples], self._held[self.frame_samples :]
        pts = self._held_pts
        self._held_pts += self.frame_samples
        return frame, pts

    def _append(self, frames: list[Any]) -> None:
        parts = [f.to_ndarray().reshape(-1, self.channels) for f in frames]
        if parts:
            self._held = np.concatenate([self._held, *parts])


class StreamResampler:
    """Live mono audio at any rate -> float32 at ``rate``, one PyAV resampler across calls.

    A fresh resampler per piece would drop its filter delay at every call and
    squeeze the timeline (20 ms pieces lost a third of their samples: a pitch
    shift of its own); this one carries the delay over, so pieces join exactly.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._source_rate = 0
        self._resampler: Any = None

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """float32 [N] or [N, channels] (mixed to mono) -> float32 [M] at ``rate``."""
        x = np.asarray(samples, np.float32)
        mono = x if x.ndim == 1 else x.mean(axis=1)
        if sample_rate == self.rate:
            return mono.copy()
        if self._resampler is None or sample_rate != self._source_rate:
            self._source_rate = sample_rate
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(mono[None]), format="flt", layout="mono"
        )
        frame.sample_rate = sample_rate
        parts = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def reset(self) -> None:
        self._resampler = None
