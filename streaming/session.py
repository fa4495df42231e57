"""Live sessions: one engine Stream each, paced to real time, where the newest frame wins.

A transport (WebSocket, WebRTC) asks the SessionManager for a session and then
only pulls: ``next_frame()`` for video, ``handle_control()`` for the client's
JSON messages. Everything that keeps a stream live is here, once, for both:

- model work runs on the session's own single worker thread, never on the
  event loop, so one slow or failing model cannot stall other sessions;
- frames are released on the generator's clock (pts / fps after the session
  clock's anchor), never faster than real time; when generation falls behind,
  the clock is re-anchored instead of bursting to catch up, so no backlog forms;
- the next block is made "just in time" (when the current block's remaining
  play time is about what a block takes to make), so a prompt switch shows
  within about one block and generation never runs far ahead of the viewer;
- a latest-frame queue (capacity 1) between the clock and the transport: a slow
  consumer gets the newest frame and the older ones are dropped and counted,
  so delay cannot accumulate (Daydream Scope #559, aiortc #1192).

Usage::

    manager = SessionManager(stream_factory, max_sessions=4)
    session = await manager.open({"prompt": "a red circle moving left"})
    try:
        while True:
            frame = await session.next_frame()      # raises SessionClosed when it ends
            ...
            reply = await session.handle_control('{"type": "stats"}')
    finally:
        await session.close()                       # frees the KV cache (stream.close())
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Generic, Literal, TypeAlias, TypeVar

import numpy as np

from engine.audio import AudioGenerator
from engine.media import AudioChunk, VideoFrame
from engine.stream import Stream
from streaming.control import (
    BAD_VALUE,
    CLOSED,
    MODEL_ERROR,
    NO_AUDIO,
    Cancel,
    ControlError,
    Pause,
    Resume,
    Say,
    Start,
    StartParams,
    Stats,
    Stop,
    SwitchMode,
    SwitchPrompt,
    ack,
    busy_reply,
    error_reply,
    parse_control,
    parse_start,
    stats_reply,
)
from streaming.metrics_export import MetricType, PromText
from streaming.speech import FRAME_RATE, SessionSpeech, SpeechClosed, SpeechConfig

log = logging.getLogger(__name__)

StreamFactory: TypeAlias = Callable[[StartParams], Stream]
SpeechFactory: TypeAlias = Callable[[StartParams], AudioGenerator]
SessionState: TypeAlias = Literal["running", "paused", "closed", "failed"]
T = TypeVar("T")

DEFAULT_PROMPT = "a red circle moving left"


class SessionClosed(Exception):
    """The session ended: stopped by the client, closed by the server, or failed."""

    def __init__(self, session_id: str, reason: str, error: str | None = None) -> None:
        super().__init__(f"session {session_id} {reason}" + (f": {error}" if error else ""))
        self.session_id, self.reason, self.error = session_id, reason, error


class SessionBusy(Exception):
    """The manager already runs max_sessions sessions."""

    def __init__(self, max_sessions: int) -> None:
        super().__init__(f"the server is at its limit of {max_sessions} concurrent sessions")
        self.max_sessions = max_sessions

    def reply(self) -> dict[str, Any]:
        return busy_reply(self.max_sessions)


@dataclass(frozen=True)
class SessionConfig:
    """How sessions pace, queue and report."""

    queue_capacity: int = 1  # frames between the clock and the transport; newest wins
    prefetch_factor: float = 1.5  # start the next block when the rest plays <= factor x its cost
    prefetch_margin: float = 0.05  # seconds added to that, for scheduling jitter
    stats_window: float = 2.0  # seconds of history for "recent" FPS
    history: int = 1024  # frame intervals / ages kept for percentiles
    close_timeout: float = 30.0  # seconds to wait for an in-flight block when closing

    def __post_init__(self) -> None:
        if not 1 <= self.queue_capacity <= 8:
            raise ValueError(f"queue_capacity must be in [1, 8], got {self.queue_capacity}")
        if self.prefetch_factor < 0 or self.prefetch_margin < 0:
            raise ValueError("prefetch_factor and prefetch_margin must be >= 0")


class LatestQueue(Generic[T]):
    """A bounded queue for live media: put() never blocks, the oldest item is dropped instead.

    Single event loop only (not thread-safe). ``dropped`` counts items that were
    replaced before anyone took them.
    """

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._items: collections.deque[T] = collections.deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self.capacity = capacity
        self.dropped = 0
        self.closed = False

    def put(self, item: T) -> bool:
        """Add item; returns True when that pushed out an older one (counted in ``dropped``)."""
        if self.closed:
            return False
        full = len(self._items) == self.capacity
        if full:
            self.dropped += 1
        self._items.append(item)  # deque(maxlen) drops the oldest
        self._ready.set()
        return full

    async def get(self) -> T:
        """The oldest item still queued; waits when empty; raises QueueClosed once closed."""
        while not self._items:
            if self.closed:
                raise QueueClosed
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        """Wake every waiter; later gets raise QueueClosed (queued items are discarded)."""
        self.closed = True
        self._items.clear()
        self._ready.set()

    def __len__(self) -> int:
        return len(self._items)


class QueueClosed(Exception):
    pass


class PacingClock:
    """Due times for presentation times, on the event loop's monotonic clock.

    The first frame after start, resume or restart anchors the clock. A frame
    that comes later than ``max_late`` after its due time re-anchors it: the
    stream carries on in real time from now rather than bursting to catch up.
    ``needs_anchor`` + ``anchor`` let the owner choose the anchor's wall time
    (LiveSession puts it on a frame tick of the session clock); ``due`` alone
    anchors at ``now``.
    """

    def __init__(self, max_late: float) -> None:
        self.max_late = max_late
        self._anchor: tuple[float, float] | None = None  # (wall, media time)
        self.reanchors = 0

    def reset(self) -> None:
        self._anchor = None

    def needs_anchor(self, media_time: float, now: float) -> bool:
        """True before the first frame of a run, or when this one is over ``max_late`` late."""
        if self._anchor is None:
            return True
        wall0, t0 = self._anchor
        if now - (wall0 + media_time - t0) > self.max_late:
            self.reanchors += 1
            return True
        return False

    def anchor(self, wall: float, media_time: float) -> None:
        """``media_time`` is due at ``wall``; later frames follow it in real time."""
        self._anchor = (wall, media_time)

    def due(self, media_time: float, now: float) -> float:
        if self.needs_anchor(media_time, now):
            self.anchor(now, media_time)
        assert self._anchor is not None
        wall0, t0 = self._anchor
        return wall0 + (media_time - t0)


@dataclass(frozen=True)
class SessionClock:
    """The one clock of a session's audio and video (issue 14: "one clock").

    Media stamped with time ``t`` (seconds since the session opened, on the
    event loop's clock, ``time.monotonic``) is sent at ``origin + t - lead``:
    both the voice (SessionSpeech, whose frames go out ``lead`` early so a
    client can ride out jitter) and the video, whose pts LiveSession derives
    from this clock at every (re)anchor instead of counting from 0. So a frame
    and the audio that plays with it carry the same time, whatever the time to
    first frame, a pause or a stall was; a client (or WebRTC's RTCP sender
    reports, which map each stream's timestamps to the time it was sent) lines
    them up from the timestamps alone.
    """

    origin: float  # time.monotonic() when the session opened
    lead: float = 0.0  # seconds media is sent before its time (the voice's lead)

    def media_time(self, wall: float) -> float:
        """The session time of media sent at ``wall``."""
        return wall - self.origin + self.lead

    def send_time(self, media_time: float) -> float:
        """When media of session time ``media_time`` is sent."""
        return self.origin + media_time - self.lead


@dataclass(frozen=True, slots=True)
class TimedFrame:
    """A frame with the wall-clock time (time.time()) it was released to the live queue."""

    frame: VideoFrame
    produced: float


def _percentiles_ms(values: collections.deque[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(np.asarray(values, dtype=np.float64) * 1e3, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3)}


def _recent_fps(times: collections.deque[float], window: float, now: float) -> float:
    recent = [t for t in times if now - t <= window]
    if len(recent) < 2 or recent[-1] <= recent[0]:
        return 0.0
    return (len(recent) - 1) / (recent[-1] - recent[0])


@dataclass
class _Counters:
    """What a session has done; folded into the manager's totals when it closes."""

    published: int = 0  # frames released on the clock
    delivered: int = 0  # frames taken by the transport
    switches_requested: int = 0
    restarts: int = 0
    control_errors: int = 0
    intervals: collections.deque[float] = field(default_factory=collections.deque)  # recent, s
    interval_count: int = 0
    interval_sum: float = 0.0
    ages: collections.deque[float] = field(default_factory=collections.deque)  # recent, s
    age_count: int = 0
    age_sum: float = 0.0
    published_at: collections.deque[float] = field(default_factory=collections.deque)
    delivered_at: collections.deque[float] = field(default_factory=collections.deque)


class LiveSession:
    """One client's stream. Create through SessionManager.open(); all methods on one event loop."""

    def __init__(
        self,
        session_id: str,
        stream: Stream,
        executor: ThreadPoolExecutor,
        *,
        params: StartParams,
        factory: StreamFactory,
        config: SessionConfig,
        opened_at: float,
        on_close: Callable[[LiveSession], None],
        speech: SessionSpeech | None = None,
        clock: SessionClock | None = None,
    ) -> None:
        self.id = session_id
        self.clock = clock or SessionClock(origin=time.monotonic())
        self.params = params
        self.speech = speech  # the session's voice (text in, audio out), if the server has one
        self.has_audio = speech is not None
        self.state: SessionState = "running"
        self.error: str | None = None
        self._stream = stream
        self._executor = executor
        self._factory = factory
        self._config = config
        self._opened_at = opened_at  # perf_counter when the client asked for the session
        self._on_close = on_close
        self._queue: LatestQueue[TimedFrame] = LatestQueue(config.queue_capacity)
        self._running = asyncio.Event()
        self._running.set()
        self._clock = PacingClock(max_late=1.0 / stream.config.fps)
        self._closed = asyncio.Event()
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._control_lock = asyncio.Lock()
        self._listeners: list[Callable[[VideoFrame], None]] = []
        self._close_reason = "closed"
        self._last_pts = -1
        self._last_publish = 0.0
        self._new_run = True  # the next frame follows a start, resume or restart: no interval
        self._finished_generated = 0  # frames / switches of streams replaced by a restart
        self._finished_switches = 0
        self.time_to_first_frame: float | None = None
        h = config.history
        self._c = _Counters(
            intervals=collections.deque(maxlen=h),
            ages=collections.deque(maxlen=h),
            published_at=collections.deque(maxlen=512),
            delivered_at=collections.deque(maxlen=512),
        )
        self._producer = asyncio.get_running_loop().create_task(
            self._produce(stream, 0), name=f"session-{session_id}"
        )

    # ---- facts ----

    @property
    def fps(self) -> int:
        """Frames per second of the generator's output clock."""
        return self._stream.config.fps

    @property
    def time_base(self) -> Fraction:
        return self._stream.time_base

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the video in pixels."""
        h, w = self._stream.config.latent_hw
        up = self._stream.decoder.upscale
        return w * up, h * up

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the stream's KV and prompt caches; 0 once closed."""
        return self._stream.cache_bytes

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def frames_dropped(self) -> int:
        return self._queue.dropped

    def describe(self) -> dict[str, Any]:
        """What a client needs to set up its decoder and UI (sent with the start ack)."""
        width, height = self.size
        return {
            "session": self.id,
            "fps": self.fps,
            "width": width,
            "height": height,
            "has_audio": self.has_audio,
            "prompt": self._stream.stats.prompt,
            "seed": self._stream.config.seed,
            "steps": list(self._stream.config.schedule.steps),
            "codec": self.params.codec,
            **(
                {
                    "audio": {
                        "sample_rate": FRAME_RATE,
                        "channels": self.speech.channels,
                        "codec": self.params.audio_codec,
                        "voice_sample_rate": self.speech.sample_rate,
                    }
                }
                if self.speech is not None
                else {}
            ),
        }

    # ---- media ----

    async def next_frame(self) -> VideoFrame:
        """The newest frame not yet taken; waits for one; raises SessionClosed once ended."""
        return (await self.next_frame_timed()).frame

    async def next_frame_timed(self) -> TimedFrame:
        """next_frame(), with the wall-clock time the frame was released (for age/latency)."""
        try:
            item = await self._queue.get()
        except QueueClosed:
            raise SessionClosed(self.id, self._end_reason(), self.error) from None
        now = time.time()
        c = self._c
        c.delivered += 1
        c.delivered_at.append(time.perf_counter())
        age = max(0.0, now - item.produced)
        c.ages.append(age)
        c.age_count += 1
        c.age_sum += age
        return item

    async def next_audio(self) -> AudioChunk:
        """The voice's chunks as they are made (transports pace them: streaming/speech.py)."""
        if self.speech is None:
            raise SessionClosed(self.id, "has no audio track")
        try:
            return await self.speech.next_chunk()
        except SpeechClosed:
            raise SessionClosed(self.id, self._end_reason(), self.error) from None

    def add_frame_listener(self, listener: Callable[[VideoFrame], None]) -> None:
        """Call ``listener(frame)`` on the event loop for every released frame (e.g. a recorder).

        Unlike next_frame() this sees every frame; a listener must be quick (hand
        work to a thread) and must not raise.
        """
        self._listeners.append(listener)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # ---- control ----

    async def handle_control(
        self, message: str | bytes | bytearray | dict[str, Any]
    ) -> dict[str, Any]:
        """Validate and apply one control message; returns the JSON reply. Never raises on input."""
        try:
            msg = parse_control(message)
        except ControlError as e:
            self._c.control_errors += 1
            log.info("[%s] rejected control message: %s: %s", self.id, e.code, e.message)
            return e.reply()
        if self._closing:
            code = MODEL_ERROR if self.state == "failed" else CLOSED
            why = f"the session is over ({self._end_reason()}"
            why += f": {self.error})" if self.error else ")"
            return error_reply(code, why + "; open a new session", msg_id=msg.id, for_type=msg.type)
        async with self._control_lock:
            try:
                if isinstance(msg, Start):
                    await self.restart(msg.params)
                    return ack(msg, **self.describe())
                if isinstance(msg, SwitchPrompt):
                    self.switch_prompt(msg.prompt, msg.mode)
                    return ack(msg, prompt=msg.prompt, mode=msg.mode)
                if isinstance(msg, Pause):
                    self.pause()
                    return ack(msg, state=self.state)
                if isinstance(msg, Resume):
                    self.resume()
                    return ack(msg, state=self.state)
                if isinstance(msg, Stop):
                    await self.close("stopped by the client")
                    return ack(msg, state=self.state)
                if isinstance(msg, Say | Cancel):
                    return self._speak(msg)
                assert isinstance(msg, Stats), msg
                return stats_reply(self.stats(), msg.id)
            except ControlError as e:
                self._c.control_errors += 1
                e.msg_id, e.for_type = msg.id, msg.type
                return e.reply()

    def feed_audio(self, samples: np.ndarray, sample_rate: int) -> None:
        """Microphone audio for the session's converter; ControlError when it takes none."""
        if self.speech is None:
            raise ControlError(
                NO_AUDIO,
                "this session has no audio generator to take microphone audio; start the "
                "server with one (framecast serve --convert world)",
            )
        try:
            self.speech.feed_audio(samples, sample_rate)
        except TypeError as e:
            raise ControlError(NO_AUDIO, f"{e}: this session speaks text (send say)") from None
        except SpeechClosed as e:
            raise ControlError(NO_AUDIO, f"{e}; open a new session") from None

    def _speak(self, msg: Say | Cancel) -> dict[str, Any]:
        if self.speech is None:
            raise ControlError(
                NO_AUDIO,
                f"{msg.type!r} needs a voice and this session has none; start the server with "
                "one (framecast serve --voice default)",
            )
        if isinstance(msg, Cancel):
            return ack(msg, epoch=self.speech.cancel())
        try:
            self.speech.say(msg.text, msg.final)
        except SpeechClosed as e:
            raise ControlError(NO_AUDIO, f"{e}; open a new session") from None
        except TypeError as e:
            raise ControlError(NO_AUDIO, f"{e}: this session converts microphone audio") from None
        return ack(msg, chars=len(msg.text), final=msg.final)

    def switch_prompt(self, prompt: str, mode: SwitchMode = "recache") -> None:
        """Ask for a new prompt; the engine applies it at its next block."""
        try:
            self._stream.switch_prompt(prompt, mode)
        except ValueError as e:
            raise ControlError(BAD_VALUE, str(e)) from None
        self._c.switches_requested += 1
        log.info("[%s] prompt switch requested (%s): %r", self.id, mode, prompt)

    def pause(self) -> None:
        """Stop releasing frames and making new blocks (a block in flight finishes)."""
        if self.state == "running":
            self._running.clear()
            self.state = "paused"

    def resume(self) -> None:
        """Carry on from the next frame, in real time from now (no burst to catch up)."""
        if self.state == "paused":
            self._clock.reset()
            self._new_run = True
            self.state = "running"
            self._running.set()

    async def restart(self, params: StartParams) -> None:
        """Replace the stream with one built from ``params`` (merged over the current ones).

        The new stream is built first, so a bad parameter leaves the old one
        streaming. Timestamps continue from the old stream's last frame.
        """
        merged = params.merged(self.params)
        aloop = asyncio.get_running_loop()
        try:
            new = await aloop.run_in_executor(self._executor, _build_stream, self._factory, merged)
        except ValueError as e:
            raise ControlError(BAD_VALUE, f"cannot start with these parameters: {e}") from None
        if not self._closing:
            self._producer.cancel()
            await asyncio.gather(self._producer, return_exceptions=True)
        if self._closing:  # closed meanwhile: close() released the old stream
            new.close()  # never started a block: nothing runs on it
            return
        old, self._stream = self._stream, new
        # continue after the last released frame, on the new stream's clock
        last_time = (self._last_pts + 1) * float(old.time_base) if self._last_pts >= 0 else 0.0
        offset = math.ceil(last_time / float(new.time_base) - 1e-9)
        self._clock = PacingClock(max_late=1.0 / new.config.fps)
        self._new_run = True
        self._producer = aloop.create_task(self._produce(new, offset), name=f"session-{self.id}")
        # after any block still in flight on the worker, before the new stream's first block
        close_old = aloop.run_in_executor(self._executor, old.close)
        self._finished_generated += old.stats.frames
        self._finished_switches += old.stats.prompt_switches
        self.params = merged
        self._c.restarts += 1
        await close_old
        log.info("[%s] restarted: %s", self.id, merged)

    # ---- stats ----

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot; times in seconds, intervals and ages in ms."""
        c, now = self._c, time.perf_counter()
        s = self._stream.stats
        width, height = self.size
        return {
            "session": self.id,
            "state": self.state,
            "error": self.error,
            "prompt": s.prompt,
            "fps_target": self.fps,
            "width": width,
            "height": height,
            "fps": round(_recent_fps(c.published_at, self._config.stats_window, now), 3),
            "delivered_fps": round(_recent_fps(c.delivered_at, self._config.stats_window, now), 3),
            "frames_generated": self._finished_generated + s.frames,
            "frames_published": c.published,
            "frames_delivered": c.delivered,
            "frames_dropped": self._queue.dropped,
            "time_to_first_frame": self.time_to_first_frame,
            "frame_interval_ms": _percentiles_ms(c.intervals),
            "delivery_age_ms": _percentiles_ms(c.ages),
            "switches": self._finished_switches + s.prompt_switches,
            "switches_requested": c.switches_requested,
            "restarts": c.restarts,
            "control_errors": c.control_errors,
            "clock_reanchors": self._clock.reanchors,
            "cache_bytes": self.cache_bytes,
            "uptime": round(now - self._opened_at, 3),
            **({"audio": self.speech.stats()} if self.speech is not None else {}),
        }

    def export(self, out: PromText) -> None:
        """This session's samples for /metrics (labelled by session id; never the prompt)."""
        st = self.stats()
        labels = {"session": self.id}
        out.sample("framecast_session_fps", st["fps"], labels)
        out.sample("framecast_session_frames_generated_total", st["frames_generated"], labels)
        out.sample("framecast_session_frames_delivered_total", st["frames_delivered"], labels)
        out.sample("framecast_session_frames_dropped_total", st["frames_dropped"], labels)
        if self.time_to_first_frame is not None:
            out.sample(
                "framecast_session_time_to_first_frame_seconds", self.time_to_first_frame, labels
            )
        out.sample("framecast_session_cache_bytes", st["cache_bytes"], labels)
        c = self._c
        out.summary(
            "framecast_session_frame_interval_seconds",
            c.intervals,
            labels,
            count=c.interval_count,
            total=c.interval_sum,
        )
        out.summary(
            "framecast_session_delivery_age_seconds",
            c.ages,
            labels,
            count=c.age_count,
            total=c.age_sum,
        )

    # ---- lifecycle ----

    async def close(self, reason: str = "closed") -> None:
        """Stop generating and free the stream's caches.

        Idempotent; concurrent callers all wait for the same closing, which runs
        in its own task: a caller that is cancelled meanwhile (a transport
        tearing down) does not leave the session half-closed.
        """
        if self._close_task is None:
            self._closing = True
            self._close_reason = reason
            if self.state != "failed":
                self.state = "closed"
            self._queue.close()  # consumers see SessionClosed from now on
            self._running.set()  # a paused producer must wake to see its cancellation
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(reason), name=f"session-{self.id}-close"
            )
        await asyncio.shield(self._close_task)

    async def _close(self, reason: str) -> None:
        self._producer.cancel()  # the producer itself may be waiting in close(): fine
        await asyncio.gather(self._producer, return_exceptions=True)
        if self.speech is not None:
            await self.speech.close()
        await self._release_stream()
        self._executor.shutdown(wait=False)
        self._closed.set()
        log.info(
            "[%s] %s after %d frames (%d dropped)",
            self.id,
            reason,
            self._c.published,
            self._queue.dropped,
        )
        self._on_close(self)

    async def _release_stream(self) -> None:
        # stream.close() runs on the worker thread, after any block still in flight there,
        # so the KV cache is not dropped under a running block.
        aloop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                aloop.run_in_executor(self._executor, self._stream.close),
                self._config.close_timeout,
            )
        except TimeoutError:
            log.error(
                "[%s] a block is still running after %.0fs; closing the stream under it",
                self.id,
                self._config.close_timeout,
            )
            self._stream.close()

    def _end_reason(self) -> str:
        if self.state == "failed":
            return "failed"
        return self._close_reason

    # ---- the producer ----

    def _session_anchor(self, stream: Stream, now: float, floor: int) -> tuple[float, int]:
        """Where a run of frames starts: (wall time, pts) of its first frame.

        The pts is the session clock's time for a frame sent now, rounded down
        to the stream's frame tick (so the first frame goes out at once, less
        than a frame late, and the ones after it exactly on their ticks; the
        time to first frame grows by nothing), and at least ``floor`` so pts
        only grow; a frame whose pts is ahead of now waits for it.
        """
        tick = float(stream.time_base)
        pts = max(floor, math.floor(self.clock.media_time(now) / tick + 1e-9))
        return self.clock.send_time(pts * tick), pts

    async def _produce(self, stream: Stream, floor: int) -> None:
        """Blocks from the worker thread -> frames on the clock -> the latest-frame queue.

        ``floor``: the smallest pts the first frame may take (after a restart, the
        old stream's next one); pts follow the session clock (see SessionClock).
        """
        aloop = asyncio.get_running_loop()
        pts_offset = 0
        cfg = self._config
        frame_s = 1.0 / stream.config.fps
        block_cost = 0.0  # seconds per block, smoothed
        pending: asyncio.Future[tuple[list[VideoFrame], float]] | None = None
        try:
            pending = aloop.run_in_executor(self._executor, _timed_block, stream)
            while True:
                block, cost = await pending
                pending = None
                block_cost = cost if block_cost == 0.0 else 0.7 * block_cost + 0.3 * cost
                for i, frame in enumerate(block):
                    await self._running.wait()
                    left = (len(block) - i) * frame_s  # play time left in this block
                    if pending is None and left <= cfg.prefetch_factor * block_cost + (
                        cfg.prefetch_margin
                    ):
                        pending = aloop.run_in_executor(self._executor, _timed_block, stream)
                    while True:
                        now = aloop.time()
                        if self._clock.needs_anchor(frame.time, now):
                            wall, first_pts = self._session_anchor(stream, now, floor)
                            pts_offset = first_pts - frame.pts
                            self._clock.anchor(wall, frame.time)
                        due = self._clock.due(frame.time, now)
                        # Always yield, even for an overdue frame: a consumer already woken
                        # for the previous frame takes it before this one replaces it.
                        await asyncio.sleep(max(0.0, due - aloop.time()))
                        if self._running.is_set():
                            break
                        # paused while waiting: hold this frame, and time it anew on resume
                        await self._running.wait()
                    self._publish(VideoFrame(frame.data, frame.pts + pts_offset, frame.time_base))
                    floor = frame.pts + pts_offset + 1
                if pending is None:
                    await self._running.wait()
                    pending = aloop.run_in_executor(self._executor, _timed_block, stream)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the model failed: end this session only
            self.error = f"{type(e).__name__}: {e}"
            self.state = "failed"
            log.exception("[%s] generation failed; closing the session", self.id)
            await self.close("failed")

    def _publish(self, frame: VideoFrame) -> None:
        now = time.perf_counter()
        c = self._c
        if c.published == 0:
            self.time_to_first_frame = round(now - self._opened_at, 6)
        elif not self._new_run:  # intervals within a run, not across a pause or restart
            interval = now - self._last_publish
            c.intervals.append(interval)
            c.interval_count += 1
            c.interval_sum += interval
        self._new_run = False
        self._last_publish, self._last_pts = now, frame.pts
        c.published += 1
        c.published_at.append(now)
        self._queue.put(TimedFrame(frame, time.time()))
        for listener in list(self._listeners):
            try:
                listener(frame)
            except Exception:  # a broken recorder must not end the stream
                log.exception("[%s] frame listener failed; removing it", self.id)
                self._listeners.remove(listener)


def _timed_block(stream: Stream) -> tuple[list[VideoFrame], float]:
    t0 = time.perf_counter()
    block = stream.next_block()
    return block, time.perf_counter() - t0


def _build_stream(factory: StreamFactory, params: StartParams) -> Stream:
    """Build and start a stream (model work: runs on the session's worker thread)."""
    assert params.prompt is not None, "params must be merged with defaults that have a prompt"
    stream = factory(params)
    try:
        stream.start(params.prompt)
    except BaseException:
        stream.close()
        raise
    return stream


class SessionManager:
    """Opens sessions up to a limit, and reports them all in Prometheus text format."""

    def __init__(
        self,
        stream_factory: StreamFactory,
        max_sessions: int = 4,
        *,
        defaults: StartParams | None = None,
        config: SessionConfig | None = None,
        speech_factory: SpeechFactory | None = None,
        speech_config: SpeechConfig | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.stream_factory = stream_factory
        self.speech_factory = speech_factory  # None: sessions have no voice
        self.speech_config = speech_config or SpeechConfig()
        self.max_sessions = max_sessions
        self.defaults = (defaults or StartParams()).merged(StartParams(prompt=DEFAULT_PROMPT))
        self.config = config or SessionConfig()
        self._sessions: dict[str, LiveSession] = {}
        self._opening = 0
        self._open_listeners: list[Callable[[LiveSession], None]] = []
        self._ids = itertools.count(1)
        # totals over every session ever opened (Prometheus counters never go down)
        self.opened_total = 0
        self.closed_total = 0
        self.failed_total = 0
        self.rejected_total = 0
        self._closed_generated = 0
        self._closed_delivered = 0
        self._closed_dropped = 0
        self._ttff: collections.deque[float] = collections.deque(maxlen=256)  # closed sessions
        self._ttff_count = 0
        self._ttff_sum = 0.0

    @property
    def active(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[LiveSession]:
        return list(self._sessions.values())

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def add_open_listener(self, listener: Callable[[LiveSession], None]) -> None:
        """Call ``listener(session)`` for each session opened from now on."""
        self._open_listeners.append(listener)

    async def open(
        self, start: str | bytes | dict[str, Any] | StartParams | None = None
    ) -> LiveSession:
        """Build and start a session.

        Raises ControlError on bad parameters or a model that fails to start, and
        SessionBusy when max_sessions are open.
        """
        opened_at = time.perf_counter()
        params = parse_start(start).merged(self.defaults)
        if len(self._sessions) + self._opening >= self.max_sessions:
            self.rejected_total += 1
            raise SessionBusy(self.max_sessions)
        self._opening += 1  # the slot is taken before the first await: no race past the limit
        session_id = secrets.token_hex(4)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"session-{session_id}")
        try:
            stream = await asyncio.get_running_loop().run_in_executor(
                executor, _build_stream, self.stream_factory, params
            )
        except ControlError:
            executor.shutdown(wait=False)
            raise
        except ValueError as e:
            executor.shutdown(wait=False)
            raise ControlError(BAD_VALUE, f"cannot start with these parameters: {e}") from None
        except Exception as e:
            executor.shutdown(wait=False)
            log.exception("[%s] the model failed to start", session_id)
            raise ControlError(MODEL_ERROR, f"the model failed to start: {e}") from None
        finally:
            self._opening -= 1
        stream.name = f"session-{session_id}"
        speech = None
        clock = SessionClock(origin=time.monotonic())
        if self.speech_factory is not None:
            try:
                generator = self.speech_factory(params)
            except Exception as e:
                await asyncio.get_running_loop().run_in_executor(executor, stream.close)
                executor.shutdown(wait=False)
                log.exception("[%s] the voice failed to start", session_id)
                raise ControlError(MODEL_ERROR, f"the voice failed to start: {e}") from None
            clock = SessionClock(origin=clock.origin, lead=self.speech_config.lead)
            speech = SessionSpeech(
                session_id, generator, self.speech_config, start_time=clock.origin
            )
        session = LiveSession(
            session_id,
            stream,
            executor,
            params=params,
            factory=self.stream_factory,
            config=self.config,
            opened_at=opened_at,
            on_close=self._closed,
            speech=speech,
            clock=clock,
        )
        self._sessions[session_id] = session
        self.opened_total += 1
        log.info("[%s] opened (%d/%d): %s", session_id, self.active, self.max_sessions, params)
        for listener in self._open_listeners:
            listener(session)
        return session

    def _closed(self, session: LiveSession) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        st = session.stats()
        self.closed_total += 1
        self.failed_total += session.state == "failed"
        self._closed_generated += st["frames_generated"]
        self._closed_delivered += st["frames_delivered"]
        self._closed_dropped += st["frames_dropped"]
        if session.time_to_first_frame is not None:
            self._ttff.append(session.time_to_first_frame)
            self._ttff_count += 1
            self._ttff_sum += session.time_to_first_frame

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close("server shutting down") for s in self.sessions()))

    def metrics_text(self) -> str:
        """Every session and the totals, in the Prometheus text exposition format (0.0.4)."""
        out = PromText()
        sessions = self.sessions()
        stats = [s.stats() for s in sessions]
        out.declare("framecast_sessions_active", "gauge", "Sessions open now.")
        out.sample("framecast_sessions_active", len(sessions))
        out.declare("framecast_sessions_max", "gauge", "The session limit (--max-sessions).")
        out.sample("framecast_sessions_max", self.max_sessions)
        out.declare("framecast_sessions_opened_total", "counter", "Sessions opened.")
        out.sample("framecast_sessions_opened_total", self.opened_total)
        out.declare("framecast_sessions_closed_total", "counter", "Sessions closed (any reason).")
        out.sample("framecast_sessions_closed_total", self.closed_total)
        out.declare(
            "framecast_sessions_failed_total", "counter", "Sessions ended by a model error."
        )
        out.sample("framecast_sessions_failed_total", self.failed_total)
        out.declare(
            "framecast_sessions_rejected_total", "counter", "Sessions refused: server busy."
        )
        out.sample("framecast_sessions_rejected_total", self.rejected_total)
        out.declare("framecast_fps", "gauge", "Frames per second released, all sessions (recent).")
        out.sample("framecast_fps", round(sum(s["fps"] for s in stats), 3))
        totals = (
            ("generated", "Frames made by the generators.", self._closed_generated),
            ("delivered", "Frames taken by the transports.", self._closed_delivered),
            (
                "dropped",
                "Frames dropped by latest-frame queues (a consumer slower than the stream).",
                self._closed_dropped,
            ),
        )
        for what, help_text, closed in totals:
            name = f"framecast_frames_{what}_total"
            out.declare(name, "counter", help_text)
            out.sample(name, closed + sum(s[f"frames_{what}"] for s in stats))
        out.declare("framecast_cache_bytes", "gauge", "KV and prompt cache bytes, all sessions.")
        out.sample("framecast_cache_bytes", sum(s["cache_bytes"] for s in stats))
        ttff = list(self._ttff) + [
            s.time_to_first_frame for s in sessions if s.time_to_first_frame is not None
        ]
        out.declare(
            "framecast_time_to_first_frame_seconds",
            "summary",
            "Time from a session request to its first frame (recent sessions).",
        )
        live = [s.time_to_first_frame for s in sessions if s.time_to_first_frame is not None]
        out.summary(
            "framecast_time_to_first_frame_seconds",
            ttff,
            count=self._ttff_count + len(live),
            total=self._ttff_sum + sum(live),
        )
        per_session: tuple[tuple[str, MetricType, str], ...] = (
            ("framecast_session_fps", "gauge", "Frames per second released (recent)."),
            ("framecast_session_frames_generated_total", "counter", "Frames made, per session."),
            ("framecast_session_frames_delivered_total", "counter", "Frames taken, per session."),
            ("framecast_session_frames_dropped_total", "counter", "Frames dropped, per session."),
            (
                "framecast_session_time_to_first_frame_seconds",
                "gauge",
                "Time to first frame, per session.",
            ),
            ("framecast_session_cache_bytes", "gauge", "KV and prompt cache bytes, per session."),
            (
                "framecast_session_frame_interval_seconds",
                "summary",
                "Intervals between released frames (recent), per session.",
            ),
            (
                "framecast_session_delivery_age_seconds",
                "summary",
                "Age of frames when the transport took them (recent), per session.",
            ),
        )
        for name, kind, help_text in per_session:
            out.declare(name, kind, help_text)
        for s in sessions:
            s.export(out)
        return out.render()
