"""One pipeline stage: a process that owns a contiguous range of transformer blocks.

It receives ops from the previous rank, runs its blocks against its own share of
every stream's KV cache (only its layers' keys and values live here), and sends
the activations on. The first stage also embeds the latents; the last one also
runs the output head and sends the flow back to the driver (rank 0).

Sends are asynchronous (at most MAX_INFLIGHT_SENDS outstanding), so a stage is
already computing the next block while its last output is on the wire.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from engine.cache import CrossAttentionCache, KVCache
from engine.parallel.wire import (
    HEADER_LEN,
    Flag,
    Header,
    Op,
    cache_args_from_header,
    plan_from_header,
)
from engine.protocols import LayeredGenerator

log = logging.getLogger(__name__)

MAX_INFLIGHT_SENDS = 8
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


class Channel:
    """Point-to-point sends and receives on a torch.distributed process group."""

    def __init__(self, group: Any, device: torch.device) -> None:
        self.group, self.device = group, device
        self._sends: deque[tuple[Any, Tensor]] = deque()

    def send(self, tensor: Tensor, dst: int) -> None:
        tensor = tensor.contiguous()
        self._sends.append((self.group.send([tensor], dst, 0), tensor))
        while len(self._sends) > MAX_INFLIGHT_SENDS:
            self._sends.popleft()[0].wait()

    def send_header(self, header: Header, dst: int) -> None:
        self.send(header.tensor(self.device), dst)

    def recv(self, shape: tuple[int, ...], src: int, dtype: torch.dtype = torch.float32) -> Tensor:
        t = torch.empty(shape, dtype=dtype, device=self.device)
        self.group.recv([t], src, 0).wait()
        return t

    def recv_header(self, src: int) -> Header:
        return Header.from_tensor(self.recv((HEADER_LEN,), src, torch.int64))

    def drain(self) -> None:
        while self._sends:
            self._sends.popleft()[0].wait()


class StageWorker:
    """The receive-compute-send loop of one stage."""

    def __init__(self, spec: StageSpec, group: Any, device: torch.device) -> None:
        self.spec = spec
        self.model = spec.factory(spec.layers)
        self.model.keep_layers(spec.layers)
        self.channel = Channel(group, device)
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
                header = self.channel.recv_header(self.prev)
                if header.op == Op.FORWARD:
                    self._forward(header)
                elif header.op == Op.NEW_CACHE:
                    self._new_cache(header)
                elif header.op == Op.FREE:
                    self.caches.pop(header.cache_id, None)
                    self.channel.send_header(header, self.next)
                elif header.op == Op.STATS:
                    self._stats(header)
                elif header.op == Op.SHUTDOWN:
                    self.channel.send_header(header, self.next)
                    self.channel.drain()
                    return

    def _new_cache(self, header: Header) -> None:
        batch, latent_hw, block_frames, config = cache_args_from_header(header)
        self.caches[header.cache_id] = self.model.new_stage_caches(
            latent_hw, block_frames, config, self.spec.layers, batch=batch
        )
        self.channel.send_header(header, self.next)

    def _forward(self, header: Header) -> None:
        ch, src = self.channel, self.prev
        b, f, c, h, w = header.block_shape
        cache, cross = self.caches[header.cache_id]
        grid = cache.geometry.grid_hw
        if self.first:
            x = ch.recv((b, f, c, h, w), src)
        else:
            tokens = ch.recv((b, f * grid[0] * grid[1], self.model.token_dim), src)
        timesteps = ch.recv((b, f), src)
        context = ch.recv(header.context_shape, src) if Flag.CONTEXT in header.flags else None
        t0 = time.perf_counter()
        if context is not None:
            cross.invalidate()
        positions = torch.arange(header.values[9], header.values[9] + f, device=ch.device)
        plan = plan_from_header(header, cache.rope.cos_sin(positions, *grid), positions)
        if self.first:
            tokens = self.model.embed_block(x)
        ctx = context if context is not None else timesteps.new_empty(0)
        tokens = self.model.run_layers(tokens, timesteps, ctx, cross, cache, plan, self.spec.layers)
        if self.last:
            out = None if plan.commit else self.model.head_out(tokens, timesteps, grid)
        self.busy_s += time.perf_counter() - t0
        self.items += 1
        ch.send_header(header, self.next)
        if self.last:
            if out is not None:
                ch.send(out, self.next)
            return
        ch.send(tokens, self.next)
        ch.send(timesteps, self.next)
        if context is not None:
            ch.send(context, self.next)

    def _stats(self, header: Header) -> None:
        """Fill this stage's row [busy_s, forwards, wall_s, caches held] of the table
        passed along the ring."""
        stages = self.spec.world_size - 1
        table = self.channel.recv((stages, STATS_COLUMNS), self.prev, torch.float64)
        wall = time.perf_counter() - self.started
        row = [self.busy_s, self.items, wall, len(self.caches)]
        table[self.spec.rank - 1] = torch.tensor(row, dtype=torch.float64)
        self.channel.send_header(header, self.next)
        self.channel.send(table, self.next)


def configure_process(spec: StageSpec) -> None:
    """CPU threads and core pinning, before any torch work."""
    if spec.core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {spec.core})
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
