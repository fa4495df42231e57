"""A live session: conditioning in, timestamped frames out, prompt switches while it runs.

Usage (sync)::

    stream = Stream(model, decoder, encoder, StreamConfig())
    stream.start("a red circle moving left")
    for frame in stream.frames(max_frames=96):      # VideoFrame, pts in 1/fps units
        ...
        if frame.pts == 48:
            stream.switch_prompt("a blue square", mode="recache")
    stream.close()

Usage (async; model work runs on the session's own worker thread, never on
the event loop)::

    async for frame in stream.aframes(max_frames=96):
        ...

A prompt switch is applied at the next block boundary: "recache" re-encodes
the kept frames under the new prompt (LongLive), "keep" only swaps the
cross-attention prompt, "cut" forgets every frame (a new scene; timestamps
continue).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from engine.cache import CacheConfig
from engine.denoisers import DENOISERS, BlockLoop, Denoiser, make_loop
from engine.loop import LoopConfig, NoiseSource, SeededNoise
from engine.media import VideoFrame
from engine.protocols import CausalGenerator, PromptEncoder, StreamingDecoder
from engine.schedule import FlowSchedule

log = logging.getLogger(__name__)

SwitchMode = Literal["recache", "keep", "cut"]
SWITCH_MODES: tuple[SwitchMode, ...] = ("recache", "keep", "cut")


@dataclass(frozen=True)
class StreamConfig:
    """Everything that shapes one session's output."""

    block_frames: int = 3  # latent frames per block
    latent_hw: tuple[int, int] = (16, 16)  # latent height, width
    schedule: FlowSchedule = field(default_factory=FlowSchedule)
    cache: CacheConfig = field(default_factory=CacheConfig)
    fps: int = 16  # video frames per second of the output clock
    seed: int = 0
    denoiser: Denoiser = "plain"  # see engine.denoisers

    def __post_init__(self) -> None:
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        if self.denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {DENOISERS}, got {self.denoiser!r}")


@dataclass
class StreamStats:
    """Counters a server can export; times in seconds."""

    blocks: int = 0
    frames: int = 0
    prompt_switches: int = 0
    recaches: int = 0
    time_to_first_frame: float | None = None
    last_block_seconds: float = 0.0
    prompt: str = ""


class StreamClosedError(RuntimeError):
    pass


class Stream:
    """One generation session. Not thread-safe except switch_prompt(), which any thread may call."""

    def __init__(
        self,
        generator: CausalGenerator,
        decoder: StreamingDecoder,
        encoder: PromptEncoder,
        config: StreamConfig,
        *,
        noise: NoiseSource | None = None,
        name: str = "stream",
    ) -> None:
        self.generator, self.decoder, self.encoder, self.config = (
            generator,
            decoder,
            encoder,
            config,
        )
        self.name = name
        self._noise = noise
        self._loop: BlockLoop | None = None
        self._pending: tuple[str, SwitchMode] | None = None
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._started_at = 0.0
        self._next_pts = 0
        self.time_base = Fraction(1, config.fps)
        self.stats = StreamStats()

    # ---- lifecycle ----

    def start(self, prompt: str) -> None:
        """Allocate the caches and set the first prompt (cheap: no model work yet)."""
        if self._loop is not None:
            raise RuntimeError(f"[{self.name}] already started; call close() or switch_prompt()")
        c = self.config
        noise = self._noise or SeededNoise(c.seed, self.generator.device)
        self._loop = make_loop(
            c.denoiser,
            self.generator,
            c.schedule,
            LoopConfig(c.block_frames, c.latent_hw),
            c.cache,
            noise,
        )
        self._loop.set_context(self._encode(prompt))
        self.decoder.reset()
        self._started_at = time.perf_counter()
        self._next_pts = 0
        self.stats = StreamStats(prompt=prompt)
        log.info("[%s] started: %r", self.name, prompt)

    def close(self) -> None:
        """Free the caches and the worker thread. Safe to call twice."""
        self._loop = None  # drops the KV and prompt caches
        self.decoder.reset()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        log.info("[%s] closed after generating %d frames", self.name, self.stats.frames)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self._loop is not None

    @property
    def loop(self) -> BlockLoop:
        if self._loop is None:
            raise StreamClosedError(f"[{self.name}] stream is not running; call start() first")
        return self._loop

    @property
    def cache_bytes(self) -> int:
        return 0 if self._loop is None else self._loop.cache.nbytes + self._loop.cross.nbytes

    # ---- control ----

    def switch_prompt(self, prompt: str, mode: SwitchMode = "recache") -> None:
        """Ask for a new prompt from the next block on (thread-safe; last request wins)."""
        if mode not in SWITCH_MODES:
            raise ValueError(f"unknown switch mode {mode!r}; choose one of {SWITCH_MODES}")
        if not prompt.strip():
            raise ValueError("prompt is empty")
        with self._lock:
            self._pending = (prompt, mode)

    def _apply_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        prompt, mode = pending
        context = self._encode(prompt)
        loop = self.loop
        if mode == "recache":
            loop.recache(context)
            self.stats.recaches += 1
        elif mode == "cut":
            loop.hard_cut(context)
            self.decoder.reset()
        else:
            loop.set_context(context)
        self.stats.prompt_switches += 1
        self.stats.prompt = prompt
        log.info("[%s] prompt switched (%s) at pts %d: %r", self.name, mode, self._next_pts, prompt)

    def _encode(self, prompt: str) -> Tensor:
        if not prompt.strip():
            raise ValueError("prompt is empty")
        emb = self.encoder.encode(prompt)
        assert emb.ndim == 2, f"PromptEncoder.encode must return [T, D], got {emb.shape}"
        return emb.unsqueeze(0).to(self.generator.device)

    # ---- generation ----

    def next_block(self) -> list[VideoFrame]:
        """Generate, decode and timestamp one block (blocking; run it off the event loop)."""
        t0 = time.perf_counter()
        self._apply_pending()
        latents = self.loop.next_block()
        rgb = self.decoder.push(latents)
        frames = self._to_frames(rgb)
        now = time.perf_counter()
        s = self.stats
        if s.time_to_first_frame is None and frames:
            s.time_to_first_frame = now - self._started_at
        s.blocks += 1
        s.frames += len(frames)
        s.last_block_seconds = now - t0
        return frames

    def _to_frames(self, rgb: Tensor) -> list[VideoFrame]:
        """[1, T, 3, H, W] in [0, 1] -> uint8 frames with consecutive pts."""
        assert rgb.ndim == 5 and rgb.shape[0] == 1, f"one stream, one batch row: {rgb.shape=}"
        u8 = rgb[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)
        arr = u8.cpu().numpy()  # host sync: one per block, where frames leave the device
        frames = []
        for i in range(arr.shape[0]):
            frames.append(VideoFrame(np.ascontiguousarray(arr[i]), self._next_pts, self.time_base))
            self._next_pts += 1
        return frames

    def frames(self, max_frames: int | None = None) -> Iterator[VideoFrame]:
        """Yield frames as they are made, forever or up to max_frames."""
        sent = 0
        while max_frames is None or sent < max_frames:
            for frame in self.next_block():
                if max_frames is not None and sent >= max_frames:
                    return
                yield frame
                sent += 1

    async def aframes(self, max_frames: int | None = None) -> AsyncIterator[VideoFrame]:
        """Async version of frames(); each block is made on this stream's worker thread."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        aloop = asyncio.get_running_loop()
        sent = 0
        while max_frames is None or sent < max_frames:
            block = await aloop.run_in_executor(self._executor, self.next_block)
            for frame in block:
                if max_frames is not None and sent >= max_frames:
                    return
                yield frame
                sent += 1

    def __aiter__(self) -> AsyncIterator[VideoFrame]:
        return self.aframes()
