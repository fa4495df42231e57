"""KV caches for block-causal generators: a rolling self-attention cache and a prompt cache.

A stream commits one block of latent frames at a time. Each layer's keys and
values live in one preallocated buffer laid out in frame slots::

    [ scratch: scratch_frames | sinks: sink_frames | ring: window_frames ]

- scratch holds the frames being denoised (written every step, never kept):
  one block (scratch_frames = block_frames, the default), or a whole window
  of blocks denoised jointly (Rolling Forcing, engine.rolling). n frames sit
  at its end, so the attended region is always one contiguous slice
  [attn_start, attn_end). Commits stay one block at a time.
- sinks hold the first frames of the stream, pinned forever.
- ring holds the most recent window_frames frames; a commit overwrites the
  oldest block in place. No allocation, no shifting, O(block) per commit.

Because the current block attends to everything in its context at once
(block-causal, bidirectional within a block), the order of slots does not
matter: keys are stored already rotated (RoPE), so each key carries its own
position and attention needs only the valid slice.

Positions. Window frames always carry their absolute frame index (angles are
computed from positions, not read from a table, so no index runs out); what
differs between the two modes is where the sinks sit.

- ``positions="absolute"``: the reference's positions. Frame f has position f,
  sinks included, for as long as the reference itself can run: while a block
  ends inside the RoPE table the checkpoint was trained with
  (``rope_max_positions``, 1024 for the public Wan models) the keys and queries
  are exactly the reference's. Past the table the reference stops (it indexes
  the table); here the sinks slide instead, to ``block_end - rope_max_positions``,
  so the farthest distance any query sees stays the largest one the reference
  itself produced (1023), and the stream goes on for ever.
- ``positions="relative"``: sinks are re-aligned to sit immediately before the
  oldest frame in the context. RoPE scores depend only on position differences,
  so this equals laying out [sinks, window, block] at positions 0..S+W+B-1:
  every distance the model sees stays inside the trained range from the start.

Sinks keep a copy of their un-rotated keys so re-alignment is exact, not
accumulated.

KV-recache. On a prompt switch the kept frames are re-encoded under the new
prompt, one of two ways (``CacheConfig.recache``):

- ``"blocks"``: every kept frame (sinks, then window) is committed again block
  by block, as if the new prompt had been active for them.
- ``"span"``: LongLive's. The last ``recache_frames`` clean frames (its
  ``local_attn_size``) go through one forward, attending to each other
  bidirectionally. With ``recache_keep_sinks`` (LongLive's ``global_sink=True``)
  the old sinks stay and replace the span's first ``sink_frames`` frames as
  keys; otherwise the span's first frames become the new sinks. The cache keeps
  the clean latents of the last ``recache_frames`` frames for this.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from engine.rope import Rope3D, apply_rope

log = logging.getLogger(__name__)

PositionMode = Literal["relative", "absolute"]
RecachePolicy = Literal["blocks", "span"]
RECACHE_POLICIES: tuple[RecachePolicy, ...] = ("blocks", "span")


class CacheError(RuntimeError):
    """A cache operation that cannot be honoured (full global cache, position overflow...)."""


@dataclass(frozen=True)
class CacheConfig:
    """How many frames a stream remembers and how their positions are assigned."""

    sink_frames: int = 3  # first frames pinned for the whole stream (latent frames)
    window_frames: int | None = 12  # most recent frames kept; None = global (no eviction)
    max_frames: int = 21  # capacity in global mode (sinks included)
    positions: PositionMode = "relative"
    rope_max_positions: int = 1024  # trained temporal RoPE table: absolute mode's horizon
    # Frames one non-committing forward may hold (a window of blocks denoised jointly,
    # engine.rolling); None = one block. Commits are always at most one block.
    scratch_frames: int | None = None
    recache: RecachePolicy = "blocks"  # how a prompt switch re-encodes the past (module doc)
    # "span": frames one recache forward re-encodes (LongLive's local_attn_size, which counts
    # sinks, window and the block); None = scratch + sinks + window, the whole cache.
    recache_frames: int | None = None
    recache_keep_sinks: bool = True  # "span": keep the old sinks (LongLive's global_sink)

    def __post_init__(self) -> None:
        if self.sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {self.sink_frames}")
        if self.window_frames is not None and self.window_frames < 1:
            raise ValueError(f"window_frames must be >= 1 or None, got {self.window_frames}")
        if self.window_frames is None and self.max_frames <= self.sink_frames:
            raise ValueError(f"global cache needs max_frames > sink_frames, got {self.max_frames}")
        if self.positions not in ("relative", "absolute"):
            raise ValueError(f"positions must be 'relative' or 'absolute', got {self.positions!r}")
        if self.scratch_frames is not None and self.scratch_frames < 1:
            raise ValueError(f"scratch_frames must be >= 1 or None, got {self.scratch_frames}")
        if self.recache not in RECACHE_POLICIES:
            raise ValueError(f"recache must be one of {RECACHE_POLICIES}, got {self.recache!r}")
        if self.recache_frames is not None and self.recache_frames < 1:
            raise ValueError(f"recache_frames must be >= 1 or None, got {self.recache_frames}")
        if self.rope_max_positions < 1:
            raise ValueError(f"rope_max_positions must be >= 1, got {self.rope_max_positions}")

    @property
    def rolling(self) -> bool:
        return self.window_frames is not None

    @property
    def ring_frames(self) -> int:
        """Frame slots after the sinks."""
        if self.window_frames is not None:
            return self.window_frames
        return self.max_frames - self.sink_frames

    @classmethod
    def rolling_window(cls, sinks: int = 3, window: int = 12, **kw: object) -> CacheConfig:
        return cls(sink_frames=sinks, window_frames=window, **kw)  # type: ignore[arg-type]

    @classmethod
    def global_attention(cls, max_frames: int = 21, **kw: object) -> CacheConfig:
        """Self-Forcing's default: attend to every frame of a short clip."""
        return cls(sink_frames=0, window_frames=None, max_frames=max_frames, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class CacheGeometry:
    """Shapes the model imposes on its cache."""

    num_layers: int
    num_heads: int
    head_dim: int
    grid_hw: tuple[int, int]  # token grid of one latent frame (after patching)
    latent_shape: tuple[int, int, int]  # (C, H, W) of one latent frame
    block_frames: int
    batch: int = 1

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]


@dataclass(frozen=True)
class BlockPlan:
    """Where one forward over a block reads and writes. Made by KVCache.plan()."""

    num_frames: int
    frame_index: int  # absolute index of the block's first frame
    positions: Tensor  # int64 [num_frames] temporal RoPE positions of the block
    cos: Tensor  # [num_frames*tokens_per_frame, 1, head_dim/2] rotation of the block's tokens,
    sin: Tensor  # computed once per plan and shared by every denoising step of the block
    scratch_start: int  # token range of the block in the scratch region
    scratch_end: int
    attn_start: int  # token range the block attends to (block + committed context)
    attn_end: int
    commit_start: int | None  # token range the block is committed to, if committing
    sink_raw_start: int | None  # token offset in the raw sink buffer, if committing to sinks
    # Relative positions: the temporal position sink slot 0 must have while this block
    # attends (None: no re-alignment). Applied per layer when the forward runs, not when
    # the plan is made, so plans made ahead (stream batch, pipelines) stay exact.
    sink_position: int | None = None
    # A span recache (KVCache.plan_recache): (block token, tokens, cache token) copies of
    # the forward's keys/values made before attending; empty for every other forward.
    span_writes: tuple[tuple[int, int, int], ...] = ()

    @property
    def commit(self) -> bool:
        """True when the forward only fills the cache (its output is not needed)."""
        return self.commit_start is not None or bool(self.span_writes)


class KVCache:
    """Per-stream self-attention cache, allocated once.

    Usage::

        cache = KVCache(geometry, CacheConfig.rolling_window(3, 12), rope, dtype=torch.float32)
        plan = cache.plan(3)                      # denoise: cache is read-only
        flow = model.predict_flow(x, t, context, cross, cache, plan)
        plan = cache.plan(3, commit=True)         # commit the clean block
        model.predict_flow(x0, t0, context, cross, cache, plan)
        cache.commit(plan, x0)

    Tensor layouts: k, v are [L, B, H, slots*tokens_per_frame, D]; latents [B, S+W, C, H, W].
    """

    def __init__(
        self,
        geometry: CacheGeometry,
        config: CacheConfig,
        rope: Rope3D,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        g, c = geometry, config
        bf = g.block_frames
        if c.sink_frames % bf or c.ring_frames % bf:
            raise ValueError(
                f"sink_frames ({c.sink_frames}) and window frames ({c.ring_frames}) must be "
                f"multiples of block_frames ({bf}) so that blocks never straddle regions"
            )
        self.scratch_frames = bf if c.scratch_frames is None else c.scratch_frames
        if self.scratch_frames < bf:
            raise ValueError(
                f"scratch_frames ({self.scratch_frames}) must hold at least one block ({bf})"
            )
        self.geometry, self.config, self.rope = g, c, rope
        self.device = torch.device(device)
        tpf = g.tokens_per_frame
        self.tokens_per_frame = tpf
        self.scratch_tokens = self.scratch_frames * tpf
        self.sink_tokens = c.sink_frames * tpf
        self.ring_tokens = c.ring_frames * tpf
        slots = self.scratch_tokens + self.sink_tokens + self.ring_tokens
        shape = (g.num_layers, g.batch, g.num_heads, slots, g.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        # Un-rotated sink keys, so re-aligning sinks is an exact re-rotation.
        self.k_sink_raw: Tensor | None = None
        if c.sink_frames > 0:
            raw = (g.num_layers, g.batch, g.num_heads, self.sink_tokens, g.head_dim)
            self.k_sink_raw = torch.zeros(raw, dtype=dtype, device=self.device)
        # Clean latents of the kept frames: what KV-recache re-encodes on a prompt switch.
        kept = c.sink_frames + c.ring_frames
        self.latents = torch.zeros((g.batch, kept, *g.latent_shape), device=self.device)
        # "span" recache: clean latents of the last history_frames frames, slot = frame % H.
        self.history_frames = 0
        if c.recache == "span":
            total = self.scratch_frames + kept
            self.history_frames = total if c.recache_frames is None else c.recache_frames
            if self.history_frames > total:
                raise ValueError(
                    f"recache_frames ({self.history_frames}) must fit the cache: at most "
                    f"scratch + sinks + window = {total} frames attend in one forward"
                )
        hist = (g.batch, self.history_frames, *g.latent_shape)
        self.history = torch.zeros(hist, device=self.device)
        self.reset()

    # ---- bookkeeping (host integers only: no device sync anywhere) ----

    def reset(self) -> None:
        """Forget every frame; buffers are reused, not reallocated."""
        self.next_frame = 0
        self.sink_filled = 0
        self.sink_first_frame = 0
        self.ring_count = 0  # frames ever written to the ring since reset/compaction
        self.history_valid = 0  # frames of self.history that hold committed latents
        # temporal position of sink slot 0 currently baked into each layer's sink keys
        self._sink_rotation: list[int | None] = [None] * self.geometry.num_layers

    @property
    def ring_valid(self) -> int:
        return min(self.ring_count, self.config.ring_frames)

    @property
    def frames_kept(self) -> int:
        return self.sink_filled + self.ring_valid

    @property
    def nbytes(self) -> int:
        bufs = [self.k, self.v, self.latents, self.history]
        if self.k_sink_raw is not None:
            bufs.append(self.k_sink_raw)
        return sum(b.numel() * b.element_size() for b in bufs)

    def plan(
        self, num_frames: int, *, commit: bool = False, frame_index: int | None = None
    ) -> BlockPlan:
        """Plan a forward over the next block (or the block at frame_index, for recache).

        A committing forward holds one block (1..block_frames frames); a denoising
        forward may hold up to scratch_frames frames (a window of blocks)."""
        c, tpf = self.config, self.tokens_per_frame
        bf = self.geometry.block_frames
        most = bf if commit else self.scratch_frames
        if not 1 <= num_frames <= most:
            what = "a block" if most == bf else "a forward"
            raise ValueError(f"{what} has 1..{most} frames, got {num_frames}")
        start = self.next_frame if frame_index is None else frame_index
        to_sinks = self.sink_filled < c.sink_frames
        # what the next commit will add: at most one block, even for a window forward
        adds = min(num_frames, bf)
        if not to_sinks and not c.rolling and self.ring_count + adds > c.ring_frames:
            raise CacheError(
                f"global cache is full ({c.max_frames} frames); use a rolling window "
                "(CacheConfig.rolling_window) for streams longer than max_frames"
            )
        sink_position = self._sink_position(start, start + num_frames)
        scratch_end = self.scratch_tokens
        scratch_start = scratch_end - num_frames * tpf
        commit_start = sink_raw = None
        if commit:
            if to_sinks:
                sink_raw = self.sink_filled * tpf
                commit_start = self.scratch_tokens + sink_raw
            else:
                slot = self.ring_count % c.ring_frames
                commit_start = self.scratch_tokens + self.sink_tokens + slot * tpf
        positions = torch.arange(start, start + num_frames, device=self.device)
        cos, sin = self.rope.cos_sin(positions, *self.geometry.grid_hw)
        return BlockPlan(
            num_frames=num_frames,
            frame_index=start,
            positions=positions,
            cos=cos,
            sin=sin,
            scratch_start=scratch_start,
            scratch_end=scratch_end,
            attn_start=scratch_start,
            attn_end=scratch_end + self.frames_kept * tpf,
            commit_start=commit_start,
            sink_raw_start=sink_raw,
            sink_position=sink_position,
        )

    def commit(self, plan: BlockPlan, latents: Tensor) -> None:
        """Advance past a committed block and keep its clean latents [B, n, C, H, W]."""
        assert plan.commit, "commit() needs a plan made with commit=True"
        assert latents.shape[1] == plan.num_frames, f"{latents.shape=} {plan.num_frames=}"
        c, n = self.config, plan.num_frames
        if plan.sink_raw_start is not None:
            if self.sink_filled == 0:
                self.sink_first_frame = plan.frame_index
            slot = self.sink_filled
            self.sink_filled += n
        else:
            slot = c.sink_frames + self.ring_count % c.ring_frames
            self.ring_count += n
        self.latents[:, slot : slot + n].copy_(latents)
        self.next_frame = plan.frame_index + n
        if self.history_frames:
            h = self.history_frames
            for j in range(n):  # a block is 1-3 frames; the ring may wrap inside it
                self.history[:, (plan.frame_index + j) % h].copy_(latents[:, j])
            self.history_valid = min(self.history_valid + n, h)

    # ---- writes done by the model inside its forward ----

    def write_scratch(self, layer: int, plan: BlockPlan, k: Tensor, v: Tensor) -> None:
        """Store a layer's keys/values [B, H, n, D] for the block in the scratch slots,
        so the block attends to itself. Call before attending."""
        self._align_sinks(layer, plan.sink_position)
        if plan.span_writes:
            for src, n, dst in plan.span_writes:
                self.k[layer, :, :, dst : dst + n] = k[:, :, src : src + n]
                self.v[layer, :, :, dst : dst + n] = v[:, :, src : src + n]
            return
        s0, s1 = plan.scratch_start, plan.scratch_end
        self.k[layer, :, :, s0:s1] = k
        self.v[layer, :, :, s0:s1] = v

    def commit_block(
        self, layer: int, plan: BlockPlan, k: Tensor, v: Tensor, k_raw: Tensor
    ) -> None:
        """Write a committing block's keys/values [B, H, n, D] (and un-rotated keys) to
        its kept slots. Call after attending, so the block does not see itself twice."""
        if plan.span_writes:
            # a span recache wrote its keys before attending; only new sinks' raw keys remain
            if plan.sink_raw_start is not None and self.k_sink_raw is not None:
                n = min(self.sink_tokens, k_raw.shape[2])
                self.k_sink_raw[layer, :, :, :n] = k_raw[:, :, :n]
                self._sink_rotation[layer] = plan.frame_index
            return
        if plan.commit_start is None:
            return
        c0, c1 = plan.commit_start, plan.commit_start + k.shape[2]
        self.k[layer, :, :, c0:c1] = k
        self.v[layer, :, :, c0:c1] = v
        if plan.sink_raw_start is not None and self.k_sink_raw is not None:
            r0 = plan.sink_raw_start
            self.k_sink_raw[layer, :, :, r0 : r0 + k.shape[2]] = k_raw
            # the sink keys of this layer now sit at their true positions
            self._sink_rotation[layer] = plan.frame_index - r0 // self.tokens_per_frame

    def keys(self, layer: int, plan: BlockPlan) -> Tensor:
        return self.k[layer, :, :, plan.attn_start : plan.attn_end]

    def values(self, layer: int, plan: BlockPlan) -> Tensor:
        return self.v[layer, :, :, plan.attn_start : plan.attn_end]

    # ---- positions ----

    def _sink_position(self, block_frame: int, block_end: int) -> int | None:
        """Where sink slot 0 must sit while frames [block_frame, block_end) attend (None
        when sinks are not full). Absolute: at the sinks' own frame, until the block runs
        past the RoPE table, then sliding with it. Relative: right before the oldest
        non-sink frame in the context."""
        c = self.config
        if self.k_sink_raw is None or self.sink_filled < c.sink_frames:
            return None
        if c.positions == "absolute":
            return max(self.sink_first_frame, block_end - c.rope_max_positions)
        oldest = self.next_frame - self.ring_valid if self.ring_valid else block_frame
        return oldest - c.sink_frames

    def _align_sinks(self, layer: int, position: int | None) -> None:
        """Re-rotate one layer's sink keys from their raw copy to ``position`` (exact)."""
        if position is None or self.k_sink_raw is None or self._sink_rotation[layer] == position:
            return
        h, w = self.geometry.grid_hw
        sinks = self.config.sink_frames
        positions = torch.arange(position, position + sinks, device=self.device)
        cos, sin = self.rope.cos_sin(positions, h, w)  # [S*tpf, 1, D/2]
        s0 = self.scratch_tokens
        self.k[layer, :, :, s0 : s0 + self.sink_tokens] = apply_rope(
            self.k_sink_raw[layer], cos.squeeze(1), sin.squeeze(1)
        )
        self._sink_rotation[layer] = position

    # ---- history edits (rare: prompt switches, rollbacks) ----

    def kept_frames(self) -> list[tuple[int, Tensor]]:
        """Clean latents of kept frames in temporal order: (first frame index, [B,n,C,H,W])."""
        c = self.config
        out: list[tuple[int, Tensor]] = []
        if self.sink_filled:
            out.append((self.sink_first_frame, self.latents[:, : self.sink_filled].clone()))
        if self.ring_valid:
            order = self._ring_order()
            lat = self.latents[:, [c.sink_frames + s for s in order]].clone()
            out.append((self.next_frame - self.ring_valid, lat))
        return out

    def recent_latents(self, num_frames: int) -> Tensor:
        """Clean latents [B, n, C, H, W] of the last n committed frames ("span" recache)."""
        if not 0 < num_frames <= self.history_valid:
            raise CacheError(
                f"only the last {self.history_valid} frames are kept for recache "
                f"(CacheConfig(recache='span', recache_frames=...)), asked for {num_frames}"
            )
        h, end = self.history_frames, self.next_frame
        slots = [f % h for f in range(end - num_frames, end)]
        return self.history[:, slots]

    def plan_recache(self) -> BlockPlan | None:
        """LongLive's KV-recache as one forward (see the module doc), or None when no frame
        has been committed since the last reset.

        The forward's n frames are the last n = min(recache_frames, kept) clean frames at
        their own positions; their keys are written straight to where they will live:
        the first sink_frames to the sinks (unless the old sinks are kept), the newest
        window_frames of the rest to the ring, and the others, which the next block will
        evict, to the end of the scratch slots. The forward attends to exactly those
        keys, then ``apply_recache`` does the bookkeeping.
        """
        c, tpf = self.config, self.tokens_per_frame
        n = min(self.history_frames, self.history_valid)
        if n == 0:
            return None
        start = self.next_frame - n
        sinks = c.sink_frames
        keep = (
            c.recache_keep_sinks
            and sinks > 0
            and self.sink_filled == sinks
            and start > self.sink_first_frame
        )
        new_sinks = 0 if keep else min(sinks, n)
        rest = max(0, n - sinks)  # frames after the span's first sink_frames
        ring = min(c.ring_frames, rest)
        tail = rest - ring  # attend now, evicted by the next block
        assert tail <= self.scratch_frames, f"{n=} does not fit: checked in __init__"
        base = self.scratch_tokens
        writes = []
        if new_sinks:
            writes.append((0, new_sinks * tpf, base))
        r0 = sinks * tpf
        if tail:
            writes.append((r0, tail * tpf, base - tail * tpf))
        if ring:
            writes.append((r0 + tail * tpf, ring * tpf, base + self.sink_tokens))
        kept_sinks = sinks if keep else new_sinks
        positions = torch.arange(start, start + n, device=self.device)
        cos, sin = self.rope.cos_sin(positions, *self.geometry.grid_hw)
        return BlockPlan(
            num_frames=n,
            frame_index=start,
            positions=positions,
            cos=cos,
            sin=sin,
            scratch_start=base - tail * tpf,
            scratch_end=base,
            attn_start=base - tail * tpf,
            attn_end=base + (kept_sinks + ring) * tpf,
            commit_start=None,
            sink_raw_start=0 if new_sinks else None,
            sink_position=self._recache_sink_position(start, n) if keep else None,
            span_writes=tuple(writes),
        )

    def _recache_sink_position(self, start: int, n: int) -> int:
        """Where kept sinks sit while a recache span [start, start + n) attends: as for a
        block (absolute), or right before the span's first non-sink frame (relative)."""
        c = self.config
        if c.positions == "absolute":
            return max(self.sink_first_frame, start + n - c.rope_max_positions)
        return start

    def apply_recache(self, plan: BlockPlan) -> None:
        """Bookkeeping after a plan_recache forward: sinks and ring now hold the span."""
        assert plan.span_writes, "apply_recache() needs a plan made by plan_recache()"
        c, n = self.config, plan.num_frames
        span = self.recent_latents(n)
        if plan.sink_raw_start is not None:
            new_sinks = min(c.sink_frames, n)
            self.sink_filled = new_sinks
            self.sink_first_frame = plan.frame_index
            self.latents[:, :new_sinks].copy_(span[:, :new_sinks])
        ring = min(c.ring_frames, max(0, n - c.sink_frames))
        self.ring_count = ring
        if ring:
            s0 = c.sink_frames
            self.latents[:, s0 : s0 + ring].copy_(span[:, n - ring :])

    def _ring_order(self) -> list[int]:
        """Ring slots from oldest to newest frame."""
        w = self.config.ring_frames
        if self.ring_count <= w:
            return list(range(self.ring_count))
        head = self.ring_count % w
        return [(head + i) % w for i in range(w)]

    def rollback(self, num_frames: int) -> None:
        """Forget the newest num_frames committed frames (they must still be in the ring)."""
        if not 0 <= num_frames <= self.ring_valid:
            raise CacheError(
                f"cannot roll back {num_frames} frames: only the {self.ring_valid} window "
                "frames can be rolled back (sinks are pinned, evicted frames are gone)"
            )
        self._compact(self._ring_order()[: self.ring_valid - num_frames])
        self.next_frame -= num_frames
        self.history_valid = max(0, self.history_valid - num_frames)

    def truncate_window(self, keep_frames: int) -> None:
        """Keep only the newest keep_frames window frames (sinks untouched)."""
        if not 0 <= keep_frames <= self.ring_valid:
            raise ValueError(f"keep_frames must be in 0..{self.ring_valid}, got {keep_frames}")
        order = self._ring_order()
        self._compact(order[len(order) - keep_frames :])
        self.history_valid = min(self.history_valid, keep_frames)

    def _compact(self, slots: list[int]) -> None:
        """Rewrite the given ring slots (temporal order) to slots 0..n-1."""
        tpf = self.tokens_per_frame
        base = self.scratch_tokens + self.sink_tokens
        if slots:
            idx = torch.tensor(
                [base + s * tpf + i for s in slots for i in range(tpf)], device=self.device
            )
            n = idx.numel()
            self.k[:, :, :, base : base + n] = self.k.index_select(3, idx)
            self.v[:, :, :, base : base + n] = self.v.index_select(3, idx)
            lat_idx = torch.tensor([self.config.sink_frames + s for s in slots], device=self.device)
            s0 = self.config.sink_frames
            self.latents[:, s0 : s0 + len(slots)] = self.latents.index_select(1, lat_idx)
        self.ring_count = len(slots)


class CrossAttentionCache:
    """Keys/values of the prompt tokens for every layer, filled once per prompt.

    k, v: [L, B, H, T, D]. ``valid`` is False until the model fills it, and a
    prompt switch calls ``invalidate()``.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_heads: int,
        text_tokens: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_layers, batch, num_heads, text_tokens, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = False
        self.fills = 0  # how many times a prompt was encoded into it

    def invalidate(self) -> None:
        self.valid = False

    def mark_filled(self) -> None:
        self.valid = True
        self.fills += 1

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()
