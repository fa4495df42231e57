"""Video sources the evaluation harness scores: the engine, and the ground truth itself.

A `ClipSource` streams uint8 frames [n, H, W, 3] block by block for a
prompt, and can switch prompts between blocks. Two implementations:

- `EngineSource`: the engine's Stream (models.resolve.build_stream) for one
  set of model options; the weights load once and every clip gets a fresh
  session.
- `OracleSource`: renders the exact scene of each prompt (models.world). It
  is the harness's own check: every metric must come out perfect on it.

Usage::

    source = OracleSource({p.prompt: p.scene for p in heldout_prompts(8)})
    source.start(prompt)
    frames = take(source, 32)          # [32, 128, 128, 3] uint8
    source.switch(other, "recache")    # the next block shows the other scene
    source.close()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from engine.stream import SWITCH_MODES, SwitchMode
from models.resolve import VAE_TEMPORAL, ModelOptions, build_stream
from models.world import Scene, WorldStream

Frames = npt.NDArray[np.uint8]  # [T, H, W, 3]
MAX_EMPTY_BLOCKS = 16  # consecutive frameless blocks before a source counts as stuck


class ClipSource(Protocol):
    """Something that streams video for prompts, block by block."""

    height: int  # frame size in pixels
    width: int

    def start(self, prompt: str) -> None:
        """Begin a fresh stream (nothing remembered from earlier streams)."""

    def next_block(self) -> Frames:
        """The next block of frames, [n, H, W, 3] uint8 (n may vary between blocks)."""
        ...

    def switch(self, prompt: str, mode: SwitchMode) -> None:
        """Use a new prompt from the next block on."""

    def close(self) -> None:
        """Free the stream; start() may follow."""


class EngineSource:
    """The engine's Stream for one set of model options, reused across clips.

    Building a stream loads the weights once; each start() closes the running
    session and opens a fresh one (new caches, decoder reset, same noise seed).
    """

    def __init__(self, options: ModelOptions, *, name: str = "eval") -> None:
        self.options = options.resolved()
        assert self.options.height is not None and self.options.width is not None
        self.height, self.width = self.options.height, self.options.width
        self._stream = build_stream(self.options, name=name)

    def start(self, prompt: str) -> None:
        if self._stream.started:
            self._stream.close()
        self._stream.start(prompt)

    def next_block(self) -> Frames:
        frames = self._stream.next_block()
        if not frames:
            return np.empty((0, self.height, self.width, 3), dtype=np.uint8)
        return np.stack([f.data for f in frames])

    def switch(self, prompt: str, mode: SwitchMode) -> None:
        self._stream.switch_prompt(prompt, mode=mode)

    def close(self) -> None:
        self._stream.close()


class OracleSource:
    """The ground truth: renders the exact scene of each prompt (the harness's self-check).

    A switch, whatever its mode, starts the new scene at its frame 0 on the
    next block, as a perfect model would: the new prompt's scene from the start.
    """

    def __init__(
        self,
        scenes: Mapping[str, Scene],
        *,
        height: int = 128,
        width: int = 128,
        block_frames: int = VAE_TEMPORAL,  # video frames per block
    ) -> None:
        if block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {block_frames}")
        self.scenes, self.height, self.width = dict(scenes), height, width
        self.block_frames = block_frames
        self._world: WorldStream | None = None
        self._pending: Scene | None = None

    def _scene(self, prompt: str) -> Scene:
        try:
            return self.scenes[prompt]
        except KeyError:
            raise ValueError(f"the oracle has no scene for prompt {prompt!r}") from None

    def start(self, prompt: str) -> None:
        self._world = WorldStream(self._scene(prompt), self.height, self.width)
        self._pending = None

    def next_block(self) -> Frames:
        if self._world is None:
            raise RuntimeError("oracle source is not started; call start() first")
        if self._pending is not None:
            self._world, self._pending = WorldStream(self._pending, self.height, self.width), None
        return self._world.next_frames(self.block_frames)

    def switch(self, prompt: str, mode: SwitchMode) -> None:
        if mode not in SWITCH_MODES:
            raise ValueError(f"unknown switch mode {mode!r}; choose one of {SWITCH_MODES}")
        self._pending = self._scene(prompt)

    def close(self) -> None:
        self._world = self._pending = None


def nonempty_block(source: ClipSource) -> Frames:
    """The next block that has frames (a decoder may hold back a block's frames)."""
    for _ in range(MAX_EMPTY_BLOCKS):
        block = source.next_block()
        if len(block):
            return block
    raise RuntimeError(f"the source gave no frames in {MAX_EMPTY_BLOCKS} blocks in a row")


def take(source: ClipSource, frames: int) -> Frames:
    """The next `frames` frames of a started source (the rest of the last block is dropped)."""
    blocks: list[Frames] = []
    have = 0
    while have < frames:
        blocks.append(nonempty_block(source))
        have += len(blocks[-1])
    return np.concatenate(blocks)[:frames]
