"""Pipeline parallelism over torch.distributed: the driver side.

Rank 0 (the driver, inside the server process) runs the denoising loops
unchanged; its caches are bookkeeping only (positions, ring slots, kept latents).
Ranks 1..S are stages, each owning a contiguous range of transformer blocks and
those layers' share of every stream's KV cache (engine.parallel.stage). A
forward travels the ring driver -> stage 1 -> ... -> stage S -> driver; the
driver sends every request as soon as the loop submits it and waits only for the
results the loop asks for, so with independent work in flight (a stream batch's
tick, or several sessions) all stages compute at once.

Correctness does not depend on timing: requests leave the driver in the
schedule's order, and each stage handles them in that order, so every cache
sees exactly the reads and writes of the single-process loop.

Failure handling: a stage process that exits is noticed at once (its process
sentinel); a stage that hangs is noticed when a submitted forward gets no reply
within ``PipelineConfig.timeout_s``. Either way every waiting and later request
fails with a PipelineError that names the stage, and the remaining stage
processes are stopped; ``Pipeline.restart()`` (or a new Pipeline) starts afresh.

Launch: ``Pipeline.spawn(factory, config)`` starts the stage processes itself
(``framecast serve --pipeline N``). Under torchrun, every rank runs
``framecast serve --pipeline N``; rank 0 becomes the driver and the others run
``serve_stage`` (docs/parallel.md).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from engine.cache import BlockPlan, CacheConfig, CrossAttentionCache, KVCache
from engine.parallel.channel import Channel
from engine.parallel.split import split_layers
from engine.parallel.stage import (
    STATS_COLUMNS,
    ModelFactory,
    StageSpec,
    StageWorker,
    configure_process,
    forward_payload_bytes,
)
from engine.parallel.wire import Header, Op, control_header, forward_header, new_cache_header
from engine.protocols import FlowRequest, LayeredGenerator

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
ALL_LAYERS = range(1 << 30)  # for a factory: keep every block


class PipelineError(RuntimeError):
    """The pipeline cannot serve this request (a stage died, hung, or it was closed)."""


@dataclass(frozen=True)
class PipelineConfig:
    """How a model is split over processes."""

    stages: int = 2
    # Layer ranges per stage, e.g. ((0, 2), (2, 4)); None: split evenly (or pass
    # engine.parallel.split.balance_layers' result for measured per-block times).
    layers: tuple[tuple[int, int], ...] | None = None
    backend: str = "gloo"  # "gloo" (CPU tensors) or "nccl" (CUDA tensors)
    device: str = "cpu"  # stages use cuda:(rank-1) % device_count when "cuda"
    threads_per_stage: int | None = None  # torch CPU threads per stage process
    pin_cores: bool = False  # pin stage i to CPU core (i-1) % cores
    timeout_s: float = 30.0  # a submitted forward with no reply this long = a hung stage
    start_timeout_s: float = 120.0  # stage processes must join the group within this
    host: str = LOOPBACK  # where the driver's rendezvous store listens

    def __post_init__(self) -> None:
        if self.stages < 1:
            raise ValueError(f"stages must be >= 1, got {self.stages}")
        if self.layers is not None and len(self.layers) != self.stages:
            raise ValueError(f"layers gives {len(self.layers)} ranges for {self.stages} stages")
        if self.backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {self.backend!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")

    def layer_ranges(self, num_layers: int) -> list[range]:
        if self.layers is None:
            return split_layers(num_layers, self.stages)
        ranges = [range(a, b) for a, b in self.layers]
        covered = [i for r in ranges for i in r]
        if covered != list(range(num_layers)):
            raise ValueError(
                f"layer ranges {self.layers} must cover blocks 0..{num_layers - 1} "
                "contiguously, in order, each once"
            )
        return ranges


def make_group(
    store: Any, rank: int, size: int, backend: str, timeout_s: float, host: str = LOOPBACK
) -> Any:
    """A process group of our own (not the global default), so a failed pipeline can be
    replaced by a new one in the same process. gloo binds to ``host`` only."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, size, opts)
    opts = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
    opts._timeout = timeout
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    return dist.ProcessGroupGloo(store, rank, size, opts)


def _stage_device(config: PipelineConfig, rank: int) -> torch.device:
    """Spawned stage r uses cuda:(r-1); under torchrun, the node-local rank's GPU."""
    if config.device != "cuda":
        return torch.device(config.device)
    count = max(torch.cuda.device_count(), 1)
    local = os.environ.get("LOCAL_RANK")
    return torch.device("cuda", (int(local) if local is not None else rank - 1) % count)


def _stage_main(spec: StageSpec, config: PipelineConfig, port: int) -> None:
    """Entry point of a spawned stage process."""
    logging.basicConfig(level=logging.WARNING, format=f"[stage {spec.rank}] %(message)s")
    configure_process(spec)
    device = _stage_device(config, spec.rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore(
        config.host,
        port,
        spec.world_size,
        False,
        timeout=datetime.timedelta(seconds=config.start_timeout_s),
    )
    group = make_group(
        store, spec.rank, spec.world_size, config.backend, config.start_timeout_s, config.host
    )
    StageWorker(spec, group, device).run()


def serve_stage(factory: ModelFactory, config: PipelineConfig) -> None:
    """Run this process as a stage of a torchrun-launched pipeline (RANK >= 1).

    torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; WORLD_SIZE must
    be stages + 1 (rank 0 is the driver)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world != config.stages + 1:
        raise PipelineError(
            f"WORLD_SIZE is {world}; a {config.stages}-stage pipeline needs {config.stages + 1}"
        )
    dist.init_process_group(
        config.backend, timeout=datetime.timedelta(seconds=config.start_timeout_s)
    )
    device = _stage_device(config, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the model is built on "cuda"
    model = factory(ALL_LAYERS)  # built once: count its blocks, then keep this stage's
    layers = config.layer_ranges(model.num_layers)[rank - 1]
    model.keep_layers(layers)
    spec = StageSpec(rank, world, layers, factory, config.threads_per_stage)
    StageWorker(spec, dist.group.WORLD, device, model).run()
    dist.destroy_process_group()


@dataclass
class _Pending:
    seq: int
    future: Future[Tensor]
    shape: tuple[int, ...] | None  # the flow coming back, None for a committing forward
    reply_bytes: int  # the slot size when it was sent (what the reply is padded to)
    kind: Op = Op.FORWARD


class Pipeline:
    """The driver of a pipeline; also the executor its loops submit forwards to.

    Usage::

        pipe = Pipeline.spawn(factory, PipelineConfig(stages=2))
        stream = Stream(pipe.generator, decoder, encoder, StreamConfig(denoiser="stream_batch"))
        ...
        pipe.close()
    """

    def __init__(
        self,
        model: LayeredGenerator,
        config: PipelineConfig,
        group: Any,
        processes: Sequence[mp.process.BaseProcess],
        ranges: list[range],
        store: Any = None,
    ) -> None:
        self.config = config
        self.group, self.store = group, store
        self.processes = list(processes)
        self.ranges = ranges
        self.model = model  # embeddings and head only: metadata and shadow caches
        self.stages = len(ranges)
        device = torch.device(config.device if config.device == "cpu" else "cuda")
        self.channel = Channel(group, device, exact=config.backend == "nccl")
        self.generator = PipelinedGenerator(self)
        self.error: PipelineError | None = None
        self._lock = threading.Lock()  # serialises submissions (many sessions)
        self._pending: deque[_Pending] = deque()
        self._ready = threading.Condition(self._lock)
        self._seq = 0
        self._closing = False
        self._to_free: list[int] = []
        self._receiver = threading.Thread(
            target=self._receive_loop, name="pipeline-recv", daemon=True
        )
        self._receiver.start()
        self._monitor: threading.Thread | None = None
        if self.processes:
            self._monitor = threading.Thread(
                target=self._watch_processes, name="pipeline-watch", daemon=True
            )
            self._monitor.start()

    # ---- construction ----

    @classmethod
    def spawn(cls, factory: ModelFactory, config: PipelineConfig) -> Pipeline:
        """Start ``config.stages`` stage processes on this machine and connect to them."""
        driver_model = factory(range(0))
        ranges = config.layer_ranges(driver_model.num_layers)
        world = config.stages + 1
        store = dist.TCPStore(
            config.host,
            0,
            world,
            True,
            timeout=datetime.timedelta(seconds=config.start_timeout_s),
            wait_for_workers=False,
        )
        ctx = mp.get_context("spawn")
        cores = os.cpu_count() or 1
        processes = []
        for rank in range(1, world):
            spec = StageSpec(
                rank=rank,
                world_size=world,
                layers=ranges[rank - 1],
                factory=factory,
                threads=config.threads_per_stage,
                core=(rank - 1) % cores if config.pin_cores else None,
            )
            p = ctx.Process(
                target=_stage_main,
                args=(spec, config, store.port),
                name=f"framecast-stage{rank}",
                daemon=True,
            )
            p.start()
            processes.append(p)
        log.info(
            "pipeline: %d stages, layers %s, backend %s",
            config.stages,
            [f"{r.start}-{r.stop - 1}" for r in ranges],
            config.backend,
        )
        try:
            group = make_group(store, 0, world, config.backend, config.start_timeout_s, config.host)
        except Exception as exc:
            for p in processes:
                p.kill()
            raise PipelineError(
                f"the stage processes did not join within {config.start_timeout_s:.0f} s: {exc}"
            ) from exc
        return cls(driver_model, config, group, processes, ranges, store)

    @classmethod
    def attach(cls, factory: ModelFactory, config: PipelineConfig) -> Pipeline:
        """Be rank 0 of a torchrun-launched pipeline (the stages run serve_stage)."""
        dist.init_process_group(
            config.backend, timeout=datetime.timedelta(seconds=config.start_timeout_s)
        )
        if dist.get_world_size() != config.stages + 1:
            raise PipelineError(
                f"WORLD_SIZE is {dist.get_world_size()}; a {config.stages}-stage pipeline "
                f"needs {config.stages + 1}"
            )
        driver_model = factory(range(0))
        ranges = config.layer_ranges(driver_model.num_layers)
        return cls(driver_model, config, dist.group.WORLD, [], ranges)

    def describe_stage(self, stage: int) -> str:
        r = self.ranges[stage - 1]
        return f"stage {stage} (rank {stage}, blocks {r.start}-{r.stop - 1})"

    # ---- executor API (engine.executor.FlowExecutor) ----

    def submit(self, request: FlowRequest) -> Future[Tensor]:
        gen = self.generator
        with self._lock:
            self._check()
            self._free_dropped()
            cache_id = gen.cache_id(request.cache)
            context = None
            if not request.cross.valid:
                context = request.context
                request.cross.mark_filled()
            seq = self._next_seq()
            context_shape = None if context is None else tuple(context.shape)
            header = forward_header(
                seq, cache_id, tuple(request.x.shape), request.plan, context_shape
            )
            future: Future[Tensor] = Future()
            shape = None if request.plan.commit else tuple(request.x.shape)
            self._enqueue(_Pending(seq, future, shape, self.channel.slot_bytes))
            self._send(header, [request.x, request.timesteps], context)
        return future

    def result(self, handle: Future[Tensor]) -> Tensor:
        timeout = self.config.timeout_s * (len(self._pending) + 2)
        try:
            return handle.result(timeout=timeout)
        except TimeoutError:
            self.fail(PipelineError(f"no reply from the pipeline in {timeout:.0f} s"))
            raise self.error from None  # type: ignore[misc]

    def flush(self) -> None:
        pass

    # ---- control ops ----

    def new_cache(
        self,
        cache_id: int,
        batch: int,
        latent_hw: tuple[int, int],
        block_frames: int,
        config: CacheConfig,
        payload_bytes: int,
    ) -> None:
        with self._lock:
            self._check()
            seq = self._next_seq()
            header = new_cache_header(seq, cache_id, batch, latent_hw, block_frames, config)
            self._enqueue(_Pending(seq, Future(), None, self.channel.slot_bytes, Op.NEW_CACHE))
            self._send(header, [])
            self.channel.grow(payload_bytes)  # after sending, as every stage does

    def drop_cache(self, cache_id: int) -> None:
        """Called when a shadow cache is garbage-collected (any thread): freed on next submit."""
        self._to_free.append(cache_id)

    def _free_dropped(self) -> None:
        while self._to_free:
            seq = self._next_seq()
            self._enqueue(_Pending(seq, Future(), None, self.channel.slot_bytes, Op.FREE))
            self._send(control_header(Op.FREE, seq, self._to_free.pop()), [])

    def stage_stats(self) -> list[dict[str, float]]:
        """Per stage: busy seconds, forwards run, seconds since start, utilisation, the
        number of stream caches it holds, and the batches its forwards ran in."""
        with self._lock:
            self._check()
            self._free_dropped()
            seq = self._next_seq()
            table = torch.zeros((self.stages, STATS_COLUMNS), dtype=torch.float64)
            future: Future[Tensor] = Future()
            shape = (self.stages, STATS_COLUMNS)
            self._enqueue(_Pending(seq, future, shape, self.channel.slot_bytes, Op.STATS))
            self._send(control_header(Op.STATS, seq), [table])
        rows = self.result(future).tolist()
        return [
            {
                "stage": i + 1,
                "busy_s": busy,
                "forwards": int(forwards),
                "wall_s": wall,
                "utilisation": busy / wall if wall else 0.0,
                "caches": int(caches),
                "batches": int(batches),  # forwards / batches = mean requests per batch
            }
            for i, (busy, forwards, wall, caches, batches) in enumerate(rows)
        ]

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _enqueue(self, item: _Pending) -> None:
        self._pending.append(item)
        self._ready.notify_all()

    def _send(self, header: Header, tensors: list[Tensor], context: Tensor | None = None) -> None:
        try:
            self.channel.send(header, tensors, 1)
            if context is not None:
                self.channel.send_tensor(context, 1)
        except Exception as exc:  # a dead first stage shows up here
            self._fail_locked(PipelineError(f"sending to {self.describe_stage(1)} failed: {exc}"))
            raise self.error from exc  # type: ignore[misc]

    # ---- receiving, failure ----

    def _receive_loop(self) -> None:
        last = self.stages
        timeout = datetime.timedelta(seconds=self.config.timeout_s)
        while True:
            with self._lock:
                while not self._pending and not self._closing and self.error is None:
                    self._ready.wait()
                if self.error is not None or (self._closing and not self._pending):
                    return
                item = self._pending[0]
            try:
                msg = self.channel.recv(last, item.reply_bytes, timeout)
                out = None
                if item.shape is not None:
                    dtype = torch.float64 if item.kind == Op.STATS else torch.float32
                    out = msg.unpack((item.shape, dtype))[0].clone()
            except Exception as exc:
                if self._closing:
                    return
                hung = isinstance(exc, TimeoutError) or "imeout" in str(exc)
                what = "timed out" if hung else f"failed ({exc})"
                # a killed stage resets its sockets as it dies: name the dead process, as
                # the process watcher would a moment later, rather than the socket error
                exited = None if hung else self._exited_stage(wait_s=1.0)
                if exited is not None:
                    self.fail(exited)
                    return
                self.fail(
                    PipelineError(
                        f"waiting for {self.describe_stage(last)} {what} "
                        f"(timeout {self.config.timeout_s:.0f} s): a stage hung or died"
                    )
                )
                return
            with self._lock:
                if self._pending and self._pending[0] is item:
                    self._pending.popleft()
            if msg.header.seq != item.seq:
                self.fail(
                    PipelineError(
                        f"pipeline out of order: got reply {msg.header.seq}, expected {item.seq}"
                    )
                )
                return
            if not item.future.done():
                item.future.set_result(out if out is not None else torch.empty(0))
            if item.kind == Op.SHUTDOWN:
                return

    def _exited_stage(self, wait_s: float | None) -> PipelineError | None:
        """The error naming a stage process that has exited (waiting up to wait_s for one;
        None waits for ever), or None."""
        sentinels = {p.sentinel: (i + 1, p) for i, p in enumerate(self.processes)}
        ready = multiprocessing.connection.wait(list(sentinels), timeout=wait_s)
        if not ready:
            return None
        stage, proc = sentinels[ready[0]]  # type: ignore[index]
        proc.join(timeout=1)
        return PipelineError(f"{self.describe_stage(stage)} exited (exit code {proc.exitcode})")

    def _watch_processes(self) -> None:
        error = self._exited_stage(wait_s=None)
        if self._closing or error is None:
            return
        self.fail(error)

    def fail(self, error: PipelineError) -> None:
        with self._lock:
            self._fail_locked(error)

    def _fail_locked(self, error: PipelineError) -> None:
        if self.error is not None or self._closing:
            return
        self.error = error
        log.error("pipeline failed: %s", error)
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(error)
        self._pending.clear()
        self._ready.notify_all()
        for p in self.processes:
            if p.is_alive():
                p.kill()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closing:
            raise PipelineError("the pipeline is closed")

    @property
    def healthy(self) -> bool:
        return self.error is None and not self._closing

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the stages (politely, then by force). Safe to call twice."""
        if self._closing:
            return
        shutdown: Future[Tensor] = Future()
        if self.error is None:
            try:
                with self._lock:
                    seq = self._next_seq()
                    self._enqueue(
                        _Pending(seq, shutdown, None, self.channel.slot_bytes, Op.SHUTDOWN)
                    )
                    self._send(control_header(Op.SHUTDOWN, seq), [])
                    self.channel.drain()
            except Exception:  # the pipeline may already be broken; processes are killed below
                log.debug("shutdown message not delivered", exc_info=True)
        with self._lock:
            self._closing = True
            self._ready.notify_all()
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(Exception):
            shutdown.result(timeout=timeout_s)  # the SHUTDOWN went round the ring
        with self._lock:
            for item in self._pending:
                if not item.future.done():
                    item.future.set_exception(PipelineError("the pipeline was closed"))
            self._pending.clear()
        for p in self.processes:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PipelinedGenerator:
    """A CausalGenerator whose forwards run on a pipeline's stages.

    Its caches are the driver's bookkeeping copies (no keys or values); each one
    has a twin on every stage holding that stage's layers, created with it and
    freed when it is garbage-collected (a closed session frees its memory on
    every rank)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._ids: dict[int, int] = {}  # id(shadow cache or cross cache) -> pipeline cache id
        self._next_id = 0

    @property
    def executor(self) -> Pipeline:
        return self.pipeline

    @property
    def latent_channels(self) -> int:
        return self.pipeline.model.latent_channels

    @property
    def device(self) -> torch.device:
        return self.pipeline.model.device

    @property
    def num_layers(self) -> int:
        return self.pipeline.model.num_layers

    def new_caches(
        self, latent_hw: tuple[int, int], block_frames: int, config: CacheConfig, *, batch: int = 1
    ) -> tuple[KVCache, CrossAttentionCache]:
        cache, cross = self.pipeline.model.new_stage_caches(
            latent_hw, block_frames, config, range(0), batch=batch
        )
        self._next_id += 1
        cache_id = self._next_id
        self._ids[id(cache)] = self._ids[id(cross)] = cache_id
        payload = forward_payload_bytes(cache, self.pipeline.model.token_dim)
        self.pipeline.new_cache(cache_id, batch, latent_hw, block_frames, config, payload)
        weakref.finalize(cache, self._forget, id(cache), id(cross), cache_id)
        return cache, cross

    def _forget(self, cache_key: int, cross_key: int, cache_id: int) -> None:
        self._ids.pop(cache_key, None)
        self._ids.pop(cross_key, None)
        self.pipeline.drop_cache(cache_id)

    def cache_id(self, cache: KVCache) -> int:
        try:
            return self._ids[id(cache)]
        except KeyError:
            raise PipelineError("this cache was not made by this pipeline's new_caches()") from None

    def predict_flow(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        cross: CrossAttentionCache,
        cache: KVCache,
        plan: BlockPlan,
    ) -> Tensor:
        return self.pipeline.result(
            self.pipeline.submit(FlowRequest(x, timesteps, context, cross, cache, plan))
        )

    def predict_flow_many(self, requests: Sequence[FlowRequest]) -> list[Tensor]:
        futures = [self.pipeline.submit(r) for r in requests]
        return [self.pipeline.result(f) for f in futures]
