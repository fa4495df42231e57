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
from torch import Tensor

from engine.cache import CrossAttentionCache, KVCache
from engine.parallel.channel import Channel, Message
from engine.parallel.wire import (
    Flag,
    Header,
    Op,
    cache_args_from_header,
    plan_from_header,
)
from engine.protocols import LayeredGenerator, LayerRequest

log = logging.getLogger(__name__)

F32 = torch.float32
STATS_COLUMNS = 5  # busy_s, forwards, wall_s, caches, batches
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
    max_batch: int = 8  # queued requests run together (1: one at a time)


@dataclass
class _Item:
    """A received forward: its header and tensors (x: latents on the first stage,
    activations after it)."""

    header: Header
    x: Tensor
    timesteps: Tensor
    context: Tensor | None
    cache: KVCache
    cross: CrossAttentionCache


class StageWorker:
    """The receive-compute-send loop of one stage."""

    def __init__(
        self,
        spec: StageSpec,
        group: Any,
        device: torch.device,
        model: LayeredGenerator | None = None,
    ) -> None:
        """``model``: already built with only spec.layers kept (else built from the spec)."""
        self.spec = spec
        if model is None:
            model = spec.factory(spec.layers)
            model.keep_layers(spec.layers)
        self.model = model
        self.channel = Channel(group, device, exact=device.type == "cuda")
        self.prev = spec.rank - 1
        self.next = (spec.rank + 1) % spec.world_size  # the last stage sends to the driver
        self.first, self.last = spec.rank == 1, spec.rank == spec.world_size - 1
        self.caches: dict[int, tuple[KVCache, CrossAttentionCache]] = {}
        self.busy_s = 0.0  # time spent computing (utilisation = busy / wall)
        self.items = 0
        self.batches = 0  # forwards run (several requests may share one)
        self.started = time.perf_counter()

    def run(self) -> None:
        with torch.inference_mode():
            held: Message | None = None  # received while gathering a batch, not batchable
            while True:
                msg = held or self.channel.recv(self.prev)
                held = None
                op = msg.header.op
                if op == Op.FORWARD:
                    held = self._forward_batch(msg)
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

    def _take(self, msg: Message) -> _Item:
        """Unpack a FORWARD message (and receive the prompt that may follow it)."""
        header = msg.header
        b, f, c, h, w = header.block_shape
        cache, cross = self.caches[header.cache_id]
        if self.first:
            x, timesteps = msg.unpack(((b, f, c, h, w), F32), ((b, f), F32))
        else:
            n = f * cache.tokens_per_frame
            x, timesteps = msg.unpack(((b, n, self.model.token_dim), F32), ((b, f), F32))
        context = None
        if Flag.CONTEXT in header.flags:
            context = self.channel.recv_tensor(header.context_shape, self.prev)
        return _Item(header, x, timesteps, context, cache, cross)

    def _forward_batch(self, msg: Message) -> Message | None:
        """Run this FORWARD together with the FORWARDs already waiting behind it.

        Requests that queue up at a stage (a stream batch's tick, several sessions)
        run as one batch: linear layers batched, attention per request in order, so
        the result is the same as one at a time. A request that carries a new prompt
        only starts a batch; any other op ends it and is returned to run next."""
        batch = [self._take(msg)]
        held = None
        while len(batch) < self.spec.max_batch and self.channel.ready(self.prev):
            nxt = self.channel.recv(self.prev)
            h = nxt.header
            if (
                h.op != Op.FORWARD
                or Flag.CONTEXT in h.flags
                or h.block_shape != msg.header.block_shape
            ):
                held = nxt
                break
            batch.append(self._take(nxt))
        if held is None:
            self.channel.prefetch(self.prev)  # the next message arrives while this computes
        self._compute(batch)
        return held

    def _compute(self, batch: list[_Item]) -> None:
        ch = self.channel
        t0 = time.perf_counter()
        requests = []
        for item in batch:
            if item.context is not None:
                item.cross.invalidate()
            f = item.timesteps.shape[1]
            frame = item.header.values[9]
            positions = torch.arange(frame, frame + f, device=ch.device)
            grid = item.cache.geometry.grid_hw
            plan = plan_from_header(
                item.header, item.cache.rope.cos_sin(positions, *grid), positions
            )
            tokens = self.model.embed_block(item.x) if self.first else item.x
            ctx = item.context if item.context is not None else item.timesteps.new_empty(0)
            requests.append(LayerRequest(tokens, item.timesteps, ctx, item.cross, item.cache, plan))
        outs = self.model.run_layers_many(requests, self.spec.layers)
        if self.last:
            grid = batch[0].cache.geometry.grid_hw
            outs = self.model.head_out_many(outs, [r.timesteps for r in requests], grid, requests)
        self.busy_s += time.perf_counter() - t0
        self.items += len(batch)
        self.batches += 1
        for item, out in zip(batch, outs, strict=True):
            if self.last:
                ch.send(item.header, [] if out.numel() == 0 else [out], self.next)
                continue
            ch.send(item.header, [out, item.timesteps], self.next)
            if item.context is not None:
                ch.send_tensor(item.context, self.next)

    def _stats(self, msg: Message) -> None:
        """Fill this stage's row [busy_s, forwards, wall_s, caches held, batches] of the table
        passed along the ring."""
        stages = self.spec.world_size - 1
        (table,) = msg.unpack(((stages, STATS_COLUMNS), torch.float64))
        table = table.clone()
        wall = time.perf_counter() - self.started
        row = [self.busy_s, self.items, wall, len(self.caches), self.batches]
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
