"""One pipeline stage: a process that owns a contiguous range of transformer blocks.

It receives ops from the previous rank, runs its blocks against its own share of
every stream's KV cache (only its layers' keys and values live here), and sends
the activations on. The first stage also embeds the latents; the last one also
runs the output head and sends the flow back to the driver (rank 0).

Each forward arrives as one message (engine.parallel.channel); the receive of
the next message is posted before the current one computes, and sends are
asynchronous, so transfers overlap compute on both sides.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.cache import CrossAttentionCache, KVCache
from engine.parallel.channel import Channel, Message
from engine.parallel.wire import (
    Flag,
    Header,
    Op,
    cache_args_from_header,
    plan_from_header,
)
from engine.protocols import LayeredGenerator

log = logging.getLogger(__name__)

F32 = torch.float32
STATS_COLUMNS = 4  # busy_s, forwards, wall_s, caches
ModelFactory = Callable[[range], LayeredGenerator]


@dataclass(frozen=True)
class StageSpec:
    """What one stage process needs to start (picklable: it crosses a process spawn)."""

    rank: int  # 1..stages (rank 0 is the driver)
    world_size: int
    layers: range
    factory: ModelFactory  # builds the model keeping only ``layers``
    threads: int | None = None  # torch CPU threads; None = torch's default
    core: int | None = None  # pin this process to one CPU core


class StageWorker:
    """The receive-compute-send loop of one stage."""

    def __init__(self, spec: StageSpec, group: Any, device: torch.device) -> None:
        self.spec = spec
        self.model = spec.factory(spec.layers)
        self.model.keep_layers(spec.layers)
        self.channel = Channel(group, device, exact=device.type == "cuda")
        self.prev = spec.rank - 1
        self.next = (spec.rank + 1) % spec.world_size  # the last stage sends to the driver
        self.first, self.last = spec.rank == 1, spec.rank == spec.world_size - 1
        self.caches: dict[int, tuple[KVCache, CrossAttentionCache]] = {}
        self.busy_s = 0.0  # time spent computing (utilisation = busy / wall)
        self.items = 0
        self.started = time.perf_counter()

    def run(self) -> None:
        with torch.inference_mode():
            while True:
                msg = self.channel.recv(self.prev)
                op = msg.header.op
                if op == Op.FORWARD:
                    self._forward(msg)
                elif op == Op.NEW_CACHE:
                    self._new_cache(msg.header)
                elif op == Op.FREE:
                    self.caches.pop(msg.header.cache_id, None)
                    self.channel.send(msg.header, [], self.next)
                elif op == Op.STATS:
                    self._stats(msg)
                elif op == Op.SHUTDOWN:
                    self.channel.send(msg.header, [], self.next)
                    self.channel.drain()
                    return

    def _new_cache(self, header: Header) -> None:
        batch, latent_hw, block_frames, config = cache_args_from_header(header)
        cache, cross = self.model.new_stage_caches(
            latent_hw, block_frames, config, self.spec.layers, batch=batch
        )
        self.caches[header.cache_id] = (cache, cross)
        self.channel.send(header, [], self.next)
        # grow only now: every rank grows at this point of the op stream
        self.channel.grow(forward_payload_bytes(cache, self.model.token_dim))

    def _forward(self, msg: Message) -> None:
        ch, header = self.channel, msg.header
        b, f, c, h, w = header.block_shape
        cache, cross = self.caches[header.cache_id]
        grid = cache.geometry.grid_hw
        if self.first:
            x, timesteps = msg.unpack(((b, f, c, h, w), F32), ((b, f), F32))
        else:
            n = f * grid[0] * grid[1]
            tokens, timesteps = msg.unpack(((b, n, self.model.token_dim), F32), ((b, f), F32))
        context = None
        if Flag.CONTEXT in header.flags:
            context = ch.recv_tensor(header.context_shape, self.prev)
        ch.prefetch(self.prev)  # the next message arrives while this one computes
        t0 = time.perf_counter()
        if context is not None:
            cross.invalidate()
        positions = torch.arange(header.values[9], header.values[9] + f, device=ch.device)
        plan = plan_from_header(header, cache.rope.cos_sin(positions, *grid), positions)
        if self.first:
            tokens = self.model.embed_block(x)
        ctx = context if context is not None else timesteps.new_empty(0)
        tokens = self.model.run_layers(tokens, timesteps, ctx, cross, cache, plan, self.spec.layers)
        out = None
        if self.last and not plan.commit:
            out = self.model.head_out(tokens, timesteps, grid)
        self.busy_s += time.perf_counter() - t0
        self.items += 1
        if self.last:
            ch.send(header, [] if out is None else [out], self.next)
            return
        ch.send(header, [tokens, timesteps], self.next)
        if context is not None:
            ch.send_tensor(context, self.next)

    def _stats(self, msg: Message) -> None:
        """Fill this stage's row [busy_s, forwards, wall_s, caches held] of the table
        passed along the ring."""
        stages = self.spec.world_size - 1
        (table,) = msg.unpack(((stages, STATS_COLUMNS), torch.float64))
        table = table.clone()
        wall = time.perf_counter() - self.started
        row = [self.busy_s, self.items, wall, len(self.caches)]
        table[self.spec.rank - 1] = torch.tensor(row, dtype=torch.float64)
        self.channel.send(msg.header, [table], self.next)


def forward_payload_bytes(cache: KVCache, token_dim: int) -> int:
    """The largest payload of a forward on this cache: latents, activations or flow of a
    full scratch region, plus its timesteps."""
    g = cache.geometry
    frames = cache.scratch_tokens // cache.tokens_per_frame
    c, h, w = g.latent_shape
    per_frame = max(c * h * w, cache.tokens_per_frame * token_dim)
    return 4 * g.batch * frames * (per_frame + 1)


def configure_process(spec: StageSpec) -> None:
    """CPU threads and core pinning, before any torch work."""
    if spec.core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {spec.core})
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
