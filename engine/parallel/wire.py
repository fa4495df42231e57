"""The messages that travel a pipeline, over torch.distributed point-to-point ops.

Every message is a fixed-size int64 header followed by the tensors its header
describes, all sent in order on one (source, destination) channel, so a
receiver always knows the shapes before it posts a receive. Ops travel the
ring driver -> stage 1 -> ... -> stage S -> driver in FIFO order; that order is
what keeps every stage's cache reads and writes in the schedule's order.

Header layout (int64, HEADER_LEN entries; unused entries are 0):

    0 op            1 seq           2 cache id      3 B        4 F
    5 C             6 H             7 W             8 flags    9 frame index
   10 scratch start 11 scratch end  12 attn start   13 attn end
   14 commit start  15 sink raw start               16 sink position
   17 context tokens T              18 text dim     19 cache config: sinks
   20 window (-1: global)           21 max frames   22 positions (0 relative)
   23 rope max positions            24 block frames  25 scratch frames (0: one block)

A FORWARD of a span recache (BlockPlan.span_writes) carries its copies in
19..27 (up to 3 of block token, tokens, cache token) and their count in 28.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.cache import BlockPlan, CacheConfig

HEADER_LEN = 32
_MAX_SPAN_WRITES = 3  # sinks, evicted tail, ring (engine.cache.KVCache.plan_recache)


class Op(enum.IntEnum):
    FORWARD = 1
    NEW_CACHE = 2
    FREE = 3
    STATS = 4
    SHUTDOWN = 5


class Flag(enum.IntFlag):
    COMMIT = 1
    CONTEXT = 2  # the prompt embeddings follow: (re)fill the cross-attention cache
    SINK_POSITION = 4  # entry 16 holds a sink position


@dataclass(frozen=True)
class Header:
    """A decoded header; ``values`` is the raw int list."""

    values: tuple[int, ...]

    @property
    def op(self) -> Op:
        return Op(self.values[0])

    @property
    def seq(self) -> int:
        return self.values[1]

    @property
    def cache_id(self) -> int:
        return self.values[2]

    @property
    def block_shape(self) -> tuple[int, int, int, int, int]:
        b, f, c, h, w = self.values[3:8]
        return b, f, c, h, w

    @property
    def flags(self) -> Flag:
        return Flag(self.values[8])

    @property
    def context_shape(self) -> tuple[int, int, int]:
        return self.values[3], self.values[17], self.values[18]

    def tensor(self, device: torch.device) -> Tensor:
        return torch.tensor(self.values, dtype=torch.int64, device=device)

    @classmethod
    def from_tensor(cls, t: Tensor) -> Header:
        return cls(tuple(int(v) for v in t.tolist()))  # host sync: one per message, by design


def _header(op: Op, seq: int, cache_id: int, entries: dict[int, int]) -> Header:
    values = [0] * HEADER_LEN
    values[0], values[1], values[2] = int(op), seq, cache_id
    for i, v in entries.items():
        values[i] = int(v)
    return Header(tuple(values))


def forward_header(
    seq: int,
    cache_id: int,
    block_shape: tuple[int, ...],
    plan: BlockPlan,
    context_shape: tuple[int, ...] | None,
) -> Header:
    flags = Flag(0)
    if plan.commit:
        flags |= Flag.COMMIT
    if context_shape is not None:
        flags |= Flag.CONTEXT
    if plan.sink_position is not None:
        flags |= Flag.SINK_POSITION
    b, f, c, h, w = block_shape
    t, d = (context_shape[1], context_shape[2]) if context_shape is not None else (0, 0)
    entries = {
        3: b, 4: f, 5: c, 6: h, 7: w, 8: int(flags), 9: plan.frame_index,
        10: plan.scratch_start, 11: plan.scratch_end, 12: plan.attn_start, 13: plan.attn_end,
        14: -1 if plan.commit_start is None else plan.commit_start,
        15: -1 if plan.sink_raw_start is None else plan.sink_raw_start,
        16: plan.sink_position or 0, 17: t, 18: d, 28: len(plan.span_writes),
    }  # fmt: skip
    if len(plan.span_writes) > _MAX_SPAN_WRITES:
        raise ValueError(f"a span recache has at most 3 copies, got {plan.span_writes}")
    for i, write in enumerate(plan.span_writes):
        for j, value in enumerate(write):
            entries[19 + 3 * i + j] = value
    return _header(Op.FORWARD, seq, cache_id, entries)


def plan_from_header(
    header: Header, cos_sin: tuple[Tensor, Tensor], positions: Tensor
) -> BlockPlan:
    """Rebuild the driver's BlockPlan on a stage (cos/sin recomputed from positions there)."""
    v = header.values
    return BlockPlan(
        num_frames=v[4],
        frame_index=v[9],
        positions=positions,
        cos=cos_sin[0],
        sin=cos_sin[1],
        scratch_start=v[10],
        scratch_end=v[11],
        attn_start=v[12],
        attn_end=v[13],
        commit_start=None if v[14] < 0 else v[14],
        sink_raw_start=None if v[15] < 0 else v[15],
        sink_position=v[16] if Flag.SINK_POSITION in header.flags else None,
        span_writes=tuple((v[19 + 3 * i], v[20 + 3 * i], v[21 + 3 * i]) for i in range(v[28])),
    )


def new_cache_header(
    seq: int,
    cache_id: int,
    batch: int,
    latent_hw: tuple[int, int],
    block_frames: int,
    config: CacheConfig,
) -> Header:
    entries = {
        3: batch, 6: latent_hw[0], 7: latent_hw[1], 19: config.sink_frames,
        20: -1 if config.window_frames is None else config.window_frames,
        21: config.max_frames, 22: 0 if config.positions == "relative" else 1,
        23: config.rope_max_positions, 24: block_frames, 25: config.scratch_frames or 0,
    }  # fmt: skip
    return _header(Op.NEW_CACHE, seq, cache_id, entries)


def cache_args_from_header(header: Header) -> tuple[int, tuple[int, int], int, CacheConfig]:
    """(batch, latent_hw, block_frames, CacheConfig) of a NEW_CACHE header."""
    v = header.values
    config = CacheConfig(
        sink_frames=v[19],
        window_frames=None if v[20] < 0 else v[20],
        max_frames=v[21],
        positions="relative" if v[22] == 0 else "absolute",
        rope_max_positions=v[23],
        scratch_frames=v[25] or None,
    )
    return v[3], (v[6], v[7]), v[24], config


def control_header(op: Op, seq: int, cache_id: int = 0) -> Header:
    return _header(op, seq, cache_id, {})
