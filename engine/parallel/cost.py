"""A cost model for pipelined denoising, built from measured pieces.

Three measurements, then a prediction:

- ``measure_block_times``: seconds of each transformer block (run_layers on a
  one-block range with that block's own stage caches, the KV cache filled as a
  stream's is once its window is full), of the patch embedding, of the output
  head, and of the fixed work every stage does per forward (time embedding,
  RoPE table). Denoising and committing forwards are timed apart.
- ``measure_driver_time``: the loop's own work per forward (noise, sampler
  step, plans) with a generator that returns at once.
- ``measure_transfer``: one message between two real processes over gloo on
  127.0.0.1, through the pipeline's own ``make_group``; fitted as
  latency + bytes / bandwidth.
- ``predict``: replays the loop's exact order of submissions and waits
  (engine.loop / engine.stream_batch) through a model of the pipeline and
  returns steady-state blocks/s, time to first block and per-stage utilisation.

Assumptions of ``predict`` (what it does not see):

- every forward of a kind costs the same (the window is full; the first blocks
  of a real stream attend to fewer frames and are a little cheaper);
- a stage is busy for its incoming transfer and its compute, in FIFO order;
  its outgoing sends overlap its next forward (they are asynchronous);
  the flow's way back to the driver is a pure delay;
- messages per forward follow engine.parallel.wire: driver -> stage 1 sends a
  header, the latents and the timesteps; stage -> stage a header, the tokens
  and the timesteps; the last stage returns a header and the flow (a header
  alone for a committing forward). The prompt, sent once per prompt, is left out;
- the driver (rank 0) is one thread with a core of its own; it spends
  ``StageTimes.driver_s`` per submitted forward;
- with ``cores`` given, stage s runs on core (s - 1) % cores, as
  ``PipelineConfig(pin_cores=True)`` pins it; stages sharing a core take turns
  (a stage's work starts in the first idle gap of its core). The driver and
  other processes are not counted against any core;
- the single-process baseline is ``predict(..., stages=1, in_process=True)``:
  no transfers, no plan rebuilt on a stage, forwards one after another (the
  batched executor a single-process stream batch uses may do better than that).

Plain loop (engine.loop): each forward waits for the previous one, so a block
costs k + 1 full round trips (k denoising steps and the commit) whatever the
number of stages. Stream batch (engine.stream_batch): a tick's k + 1 forwards
are independent, so in steady state a block costs about k + 1 times the
slowest stage's service time (compute + incoming transfer), or one round trip
when that is longer (fewer forwards in flight than stages); the first block
leaves after the pipe has filled.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import math
import multiprocessing as mp
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from engine.cache import BlockPlan, CacheConfig, CrossAttentionCache, KVCache
from engine.denoisers import Denoiser, make_loop
from engine.loop import LoopConfig, SeededNoise
from engine.metrics import synchronize
from engine.parallel.pipeline import LOOPBACK, make_group
from engine.parallel.split import balance_layers, split_layers
from engine.parallel.wire import HEADER_LEN
from engine.protocols import GeneratorWrapper, LayeredGenerator
from engine.schedule import FlowSchedule

VIDEO_FRAMES_PER_LATENT = 4  # Wan VAE / TAEHV temporal upsampling (models.resolve.VAE_TEMPORAL)
HEADER_BYTES = HEADER_LEN * 8  # int64 header of every pipeline message
FLOAT_BYTES = 4  # activations, latents and timesteps travel as float32
PREDICT_BLOCKS = 48  # blocks replayed by predict(); steady state = the second half

Split = Sequence[range] | Literal["balanced", "even"]


# ---- measured inputs ----


@dataclass(frozen=True)
class StageTimes:
    """Seconds of the pieces of one forward over one block.

    Every stage pays ``stage_overhead_s`` per forward; the first stage adds
    ``embed_s``, the last ``head_s`` (denoising forwards only)."""

    block_s: tuple[float, ...]  # per transformer block, denoising forward
    commit_block_s: tuple[float, ...]  # per transformer block, committing forward
    embed_s: float  # patch embedding of the latents
    head_s: float  # output head and unpatchify
    stage_overhead_s: float  # time embedding, once per run_layers call (per stage, per forward)
    stage_plan_s: float = 0.0  # a pipeline stage rebuilding the block's plan (RoPE table)
    driver_s: float = 0.0  # the loop's own work per forward (measure_driver_time)
    latent_bytes: int = 0  # one block's latents (= its flow), float32
    activation_bytes: int = 0  # one block's tokens between stages, float32
    timestep_bytes: int = 0  # one block's timesteps, float32
    block_frames: int = 1  # latent frames per block
    tokens: int = 0  # tokens of one block
    kv_tokens: int = 0  # tokens a denoising forward attends to (block + kept frames)

    def __post_init__(self) -> None:
        if not self.block_s or len(self.commit_block_s) != len(self.block_s):
            raise ValueError(
                f"need one denoise and one commit time per block, got {len(self.block_s)} "
                f"and {len(self.commit_block_s)}"
            )

    @property
    def num_layers(self) -> int:
        return len(self.block_s)

    @property
    def forward_s(self) -> float:
        """One denoising forward in one process: embed, every block, head."""
        return self.stage_overhead_s + self.embed_s + sum(self.block_s) + self.head_s

    def repeat_layers(self, num_layers: int) -> StageTimes:
        """A model of ``num_layers`` identical blocks, from the times of one (all Wan
        blocks have the same shapes, so one measured block stands for all of them)."""
        if self.num_layers != 1:
            raise ValueError(f"repeat_layers needs times of one block, got {self.num_layers}")
        return dataclasses.replace(
            self,
            block_s=self.block_s * num_layers,
            commit_block_s=self.commit_block_s * num_layers,
        )


@dataclass(frozen=True)
class TransferTimes:
    """One point-to-point message: ``latency_s + nbytes / bytes_per_s`` seconds."""

    latency_s: float
    bytes_per_s: float  # math.inf: bandwidth costs nothing
    samples: tuple[tuple[int, float], ...] = ()  # (bytes, measured one-way seconds)

    @classmethod
    def zero(cls) -> TransferTimes:
        """No transfers at all (a single process)."""
        return cls(0.0, math.inf)

    def message_s(self, nbytes: int) -> float:
        return self.latency_s + (0.0 if math.isinf(self.bytes_per_s) else nbytes / self.bytes_per_s)


# ---- measurement: compute ----


def fill_cache(cache: KVCache, cross: CrossAttentionCache, seed: int = 0) -> None:
    """Make ``cache`` look like a stream's once its window is full (a global cache: one
    block short of full), with random keys and values, and ``cross`` filled.

    Only the counters and the shapes matter for timing: a denoising forward then
    attends to every kept frame, and a commit writes a ring slot, as in steady state."""
    c, bf = cache.config, cache.geometry.block_frames
    cache.reset()
    cache.sink_filled = c.sink_frames
    cache.ring_count = c.ring_frames if c.rolling else c.ring_frames - bf
    cache.next_frame = cache.sink_filled + cache.ring_count
    g = torch.Generator(device=cache.device).manual_seed(seed)
    bufs = [cache.k, cache.v, cross.k, cross.v]
    if cache.k_sink_raw is not None:
        bufs.append(cache.k_sink_raw)
    for b in bufs:
        b.copy_(torch.randn(b.shape, generator=g, device=cache.device, dtype=torch.float32))
    cross.mark_filled()


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)  # sync point: the clock starts on an idle device
    t0 = time.perf_counter()
    fn()
    synchronize(device)  # sync point: the clock stops when the work is done
    return time.perf_counter() - t0


@torch.inference_mode()
def measure_block_times(
    model: LayeredGenerator,
    latent_hw: tuple[int, int],
    block_frames: int,
    cache_config: CacheConfig,
    repeats: int = 5,
    warmup: int = 2,
    *,
    batch: int = 1,
    layers: Sequence[int] | None = None,
    commit: bool = True,
) -> StageTimes:
    """Time every piece of one forward over a block of ``block_frames`` latent frames.

    Each transformer block runs alone (run_layers on range(i, i + 1)) against its
    own stage caches, filled as in steady state (fill_cache). The fixed cost of a
    run_layers call (time embedding) is timed with an empty range and taken out
    of every block, and counted once per stage instead. Times are medians over
    ``repeats`` rounds after ``warmup`` rounds; a round times every piece once,
    so slow drift of the machine spreads over all pieces alike.

    ``layers``: the blocks to time (default all; a model built with fewer blocks
    than the one predicted for can stand in, see StageTimes.repeat_layers).
    ``commit=False`` skips the committing forwards (their times are then the
    denoising ones): half the time, for blocks too slow to time twice.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    device = model.device
    which = list(range(model.num_layers) if layers is None else layers)
    if not which:
        raise ValueError("no blocks to time")
    shape = (batch, block_frames, model.latent_channels, *latent_hw)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device)
    t = torch.full((batch, block_frames), 500.0, device=device)
    t_commit = torch.zeros((batch, block_frames), device=device)
    empty_ctx = t.new_empty(0)  # caches are filled: run_layers never reads the prompt

    def stage(layer_range: range) -> tuple[KVCache, CrossAttentionCache, BlockPlan, BlockPlan]:
        cache, cross = model.new_stage_caches(
            latent_hw, block_frames, cache_config, layer_range, batch=batch
        )
        fill_cache(cache, cross)
        return cache, cross, cache.plan(block_frames), cache.plan(block_frames, commit=True)

    none, none_cross, none_plan, _ = stage(range(0))
    grid = none.geometry.grid_hw
    tokens = model.embed_block(x)
    per_block = {i: stage(range(i, i + 1)) for i in which}

    def rope() -> object:
        positions = torch.arange(none.next_frame, none.next_frame + block_frames, device=device)
        return none.rope.cos_sin(positions, *grid)

    def empty() -> object:
        return model.run_layers(tokens, t, empty_ctx, none_cross, none, none_plan, range(0))

    def run(i: int, committing: bool) -> Callable[[], object]:
        cache, cross, plan, plan_c = per_block[i]
        return lambda: model.run_layers(
            tokens, t_commit if committing else t, empty_ctx, cross, cache,
            plan_c if committing else plan, range(i, i + 1),
        )  # fmt: skip

    pieces: dict[str, Callable[[], object]] = {
        "rope": rope,
        "empty": empty,
        "embed": lambda: model.embed_block(x),
        "head": lambda: model.head_out(tokens, t, grid),
    }
    for i in which:
        pieces[f"block{i}"] = run(i, False)
        if commit:
            pieces[f"commit{i}"] = run(i, True)
    samples: dict[str, list[float]] = {k: [] for k in pieces}
    for r in range(warmup + repeats):
        for name, fn in pieces.items():
            seconds = _timed(fn, device)
            if r >= warmup:
                samples[name].append(seconds)
    med = {k: statistics.median(v) for k, v in samples.items()}
    if not commit:
        med |= {f"commit{i}": med[f"block{i}"] for i in which}
    fixed = med["empty"]
    plan0 = per_block[which[0]][2]
    return StageTimes(
        block_s=tuple(max(0.0, med[f"block{i}"] - fixed) for i in which),
        commit_block_s=tuple(max(0.0, med[f"commit{i}"] - fixed) for i in which),
        embed_s=med["embed"],
        head_s=med["head"],
        stage_overhead_s=fixed,
        stage_plan_s=med["rope"],
        latent_bytes=x.numel() * FLOAT_BYTES,
        activation_bytes=tokens.numel() * FLOAT_BYTES,
        timestep_bytes=t.numel() * FLOAT_BYTES,
        block_frames=block_frames,
        tokens=tokens.shape[1],
        kv_tokens=plan0.attn_end - plan0.attn_start,
    )


class _InstantGenerator(GeneratorWrapper):
    """A CausalGenerator that returns zero flow at once: what is left is the loop's own work."""

    def __init__(self, model: LayeredGenerator) -> None:
        super().__init__(model)
        self.model = model

    def new_caches(
        self, latent_hw: tuple[int, int], block_frames: int, config: CacheConfig, *, batch: int = 1
    ) -> tuple[KVCache, CrossAttentionCache]:
        # bookkeeping-only caches (no keys or values), as a pipeline's driver holds
        return self.model.new_stage_caches(latent_hw, block_frames, config, range(0), batch=batch)

    def predict_flow(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor,
        cross: CrossAttentionCache,
        cache: KVCache,
        plan: BlockPlan,
    ) -> Tensor:
        return x.new_empty(0) if plan.commit else torch.zeros_like(x)


def measure_driver_time(
    model: LayeredGenerator,
    schedule: FlowSchedule,
    config: LoopConfig,
    cache_config: CacheConfig,
    denoiser: Denoiser = "plain",
    blocks: int = 20,
) -> float:
    """Seconds of the loop's own work per forward (noise, sampler step, plan, RoPE table),
    timed by running ``denoiser``'s loop over a generator that answers at once."""
    gen = _InstantGenerator(model)
    loop = make_loop(denoiser, gen, schedule, config, cache_config, SeededNoise(0, model.device))
    loop.set_context(torch.zeros(config.batch, 1, 1, device=model.device))
    warm = max(2, len(schedule.steps) + 1)
    for _ in range(warm):
        loop.next_block()
    t0 = time.perf_counter()
    for _ in range(blocks):
        loop.next_block()
    return (time.perf_counter() - t0) / (blocks * (len(schedule.steps) + 1))


# ---- measurement: transfers ----


def _echo_main(port: int, sizes: list[int], rounds: int, timeout_s: float) -> None:
    """The far end of measure_transfer: receive each message and send it straight back."""
    store = dist.TCPStore(LOOPBACK, port, 2, False, timeout=datetime.timedelta(seconds=timeout_s))
    group = make_group(store, 1, 2, "gloo", timeout_s)
    for n in sizes:
        buf = torch.empty(max(1, n // FLOAT_BYTES), dtype=torch.float32)
        for _ in range(rounds):
            group.recv([buf], 0, 0).wait()
            group.send([buf], 0, 0).wait()


def measure_transfer(
    nbytes_list: Sequence[int], repeats: int = 10, *, warmup: int = 3, timeout_s: float = 60.0
) -> TransferTimes:
    """One-way seconds of a message of each size between this process and a spawned one
    over gloo on 127.0.0.1 (half a ping-pong, median of ``repeats``), fitted as
    latency + bytes / bandwidth (fit_transfer)."""
    sizes = sorted({max(FLOAT_BYTES, int(n)) for n in nbytes_list})
    if not sizes or repeats < 1:
        raise ValueError("need at least one message size and repeats >= 1")
    rounds = warmup + repeats
    store = dist.TCPStore(
        LOOPBACK,
        0,
        2,
        True,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    proc = mp.get_context("spawn").Process(
        target=_echo_main,
        args=(store.port, sizes, rounds, timeout_s),
        name="framecast-transfer-echo",
        daemon=True,
    )
    proc.start()
    samples: list[tuple[int, float]] = []
    try:
        group = make_group(store, 0, 2, "gloo", timeout_s)
        for n in sizes:
            buf = torch.zeros(max(1, n // FLOAT_BYTES), dtype=torch.float32)
            back = torch.empty_like(buf)
            times = []
            for r in range(rounds):
                t0 = time.perf_counter()
                group.send([buf], 1, 0).wait()
                group.recv([back], 1, 0).wait()
                if r >= warmup:
                    times.append((time.perf_counter() - t0) / 2)
            samples.append((buf.numel() * FLOAT_BYTES, statistics.median(times)))
    except BaseException:
        proc.kill()  # it may be waiting for a message that will never come
        raise
    finally:
        proc.join(timeout=timeout_s)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    return fit_transfer(samples)


def fit_transfer(samples: Sequence[tuple[int, float]]) -> TransferTimes:
    """Latency + bytes / bandwidth through (bytes, seconds) samples, by least squares on
    the relative error; no positive slope (noise) gives free bandwidth."""
    if len(samples) == 1 or len({n for n, _ in samples}) == 1:
        return TransferTimes(min(s for _, s in samples), math.inf, tuple(samples))
    # Weighted by 1 / seconds^2 (relative error): otherwise the largest messages set the
    # intercept, and most of a pipeline's messages are small (headers, timesteps).
    xs = [float(n) for n, _ in samples]
    ys = [max(s, 1e-12) for _, s in samples]
    ws = [1.0 / (y * y) for y in ys]
    sw = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs, strict=True)) / sw
    my = sum(w * y for w, y in zip(ws, ys, strict=True)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs, strict=True))
    slope = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys, strict=True)) / sxx
    if slope <= 0:
        return TransferTimes(statistics.median(ys), math.inf, tuple(samples))
    latency = max(0.0, my - slope * mx)
    return TransferTimes(latency, 1.0 / slope, tuple(samples))


# ---- prediction ----


@dataclass(frozen=True)
class Prediction:
    """What predict() expects of one configuration (seconds unless named otherwise)."""

    stages: int
    denoiser: Denoiser
    steps: int
    layers: tuple[tuple[int, int], ...]  # [start, stop) blocks per stage
    stage_s: tuple[float, ...]  # compute per denoising forward, per stage
    transfer_in_s: tuple[float, ...]  # incoming messages per denoising forward, per stage
    round_trip_s: float  # one denoising forward through an empty pipeline, submit to result
    block_s: float  # steady-state seconds per block
    blocks_per_s: float
    latent_fps: float
    video_fps: float
    ttfb_s: float  # first block out, from an empty pipe
    utilisation: tuple[float, ...]  # per stage: compute / wall in steady state
    bottleneck: int  # the stage (1-based) with the longest service time


def _resolve_split(
    times: StageTimes, stages: int, split: Split, transfer_first: float
) -> list[range]:
    if not isinstance(split, str):
        ranges = [range(r.start, r.stop) for r in split]
        if len(ranges) != stages or [i for r in ranges for i in r] != list(range(times.num_layers)):
            raise ValueError(f"split {ranges} does not cover {times.num_layers} blocks in {stages}")
        return ranges
    if split == "even":
        return split_layers(times.num_layers, stages)
    if split == "balanced":
        return balance_layers(
            times.block_s,
            stages,
            first_extra=times.embed_s + transfer_first,
            last_extra=times.head_s,
        )
    raise ValueError(f"split must be 'balanced', 'even' or a list of ranges, got {split!r}")


class _Core:
    """Busy intervals of one core; work starts in the first idle gap that fits it."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def place(self, ready: float, duration: float) -> float:
        i = bisect.bisect_right(self.ends, ready)
        start = ready
        while i < len(self.starts):
            if start + duration <= self.starts[i]:
                break
            start = max(start, self.ends[i])
            i += 1
        j = bisect.bisect_left(self.starts, start)
        self.starts.insert(j, start)
        self.ends.insert(j, start + duration)
        return start

    def forget_before(self, t: float) -> None:
        k = bisect.bisect_right(self.ends, t)
        if k > 16:  # intervals ending before t can no longer delay anything
            del self.starts[:k], self.ends[:k]


class _PipeModel:
    """Forwards through S FIFO stages (each on a core), with the driver's submit cost.

    ``synchronous``: submit() returns only once the forward is done (one process:
    the loop and the model share a thread)."""

    def __init__(
        self,
        service: list[tuple[list[float], list[float]]],  # per kind: (transfer in, compute)
        back_s: list[float],  # per kind: last stage -> driver
        driver_s: float,
        cores: int | None,
        synchronous: bool = False,
    ) -> None:
        self.service, self.back_s, self.driver_s = service, back_s, driver_s
        self.synchronous = synchronous
        stages = len(service[0][0])
        self.core_of = [s if cores is None else s % cores for s in range(stages)]
        self.cores = [_Core() for _ in range(max(self.core_of) + 1)]
        self.stage_free = [0.0] * stages
        self.now = 0.0

    def submit(self, kind: int) -> float:
        """Send a forward of ``kind`` (0 denoise, 1 commit) now; returns its result time."""
        self.now += self.driver_s
        t = self.now
        transfer, compute = self.service[kind]
        for s, core_id in enumerate(self.core_of):
            core = self.cores[core_id]
            start = core.place(max(t, self.stage_free[s]), transfer[s] + compute[s])
            t = self.stage_free[s] = start + transfer[s] + compute[s]
        for core in self.cores:
            core.forget_before(self.now)
        t += self.back_s[kind]
        if self.synchronous:
            self.now = t
        return t

    def wait(self, result_at: float) -> None:
        self.now = max(self.now, result_at)


def _replay_plain(pipe: _PipeModel, steps: int, blocks: int) -> list[float]:
    """engine.loop.DenoisingLoop: every forward waits for the one before; a block is
    returned once its commit has run."""
    out = []
    for _ in range(blocks):
        for _ in range(steps):
            pipe.wait(pipe.submit(0))
        pipe.wait(pipe.submit(1))
        out.append(pipe.now)
    return out


def _replay_stream_batch(pipe: _PipeModel, steps: int, blocks: int) -> list[float]:
    """engine.stream_batch.StreamBatchLoop._tick, submission for submission."""
    out: list[float] = []
    inflight: deque[tuple[int, float]] = deque()  # (step, result time), oldest first
    finished = False
    while len(out) < blocks:
        if finished:
            pipe.submit(1)  # the commit's result is never waited for
            finished = False
        advanced: deque[tuple[int, float]] = deque()
        for step, result_at in inflight:
            pipe.wait(result_at)
            advanced.append((step + 1, pipe.submit(0)))
        advanced.append((0, pipe.submit(0)))
        inflight = advanced
        if inflight[0][0] + 1 < steps:
            continue
        _, result_at = inflight.popleft()
        pipe.wait(result_at)
        out.append(pipe.now)
        finished = True
    return out


def predict(
    times: StageTimes,
    transfer: TransferTimes,
    stages: int,
    split: Split = "balanced",
    steps: int = 4,
    denoiser: Denoiser = "plain",
    activation_bytes: int | None = None,
    *,
    cores: int | None = None,
    in_process: bool = False,
    blocks: int = PREDICT_BLOCKS,
) -> Prediction:
    """Steady-state throughput, time to first block and utilisation of ``stages`` stages.

    ``split``: "balanced" (balance_layers on the measured times, embed and head
    counted on the first and last stage), "even" (split_layers), or explicit
    ranges. ``activation_bytes``: bytes between stages per forward (default:
    the measured block's tokens). ``cores``: stages share cores as pin_cores
    places them (None: a core per stage). ``in_process``: the single-process
    baseline (one stage, no transfers, no plan rebuilt on a stage, the loop
    waiting for every forward). See the module docstring for the assumptions."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if denoiser not in ("plain", "stream_batch"):
        raise ValueError(f"predict models 'plain' and 'stream_batch', not {denoiser!r}")
    if blocks < 4:
        raise ValueError(f"blocks must be >= 4, got {blocks}")
    if in_process:
        if stages != 1:
            raise ValueError(f"in_process means one stage, got {stages}")
        transfer = TransferTimes.zero()
    act = times.activation_bytes if activation_bytes is None else activation_bytes
    msg = transfer.message_s
    first_in = msg(HEADER_BYTES) + msg(times.latent_bytes) + msg(times.timestep_bytes)
    mid_in = msg(HEADER_BYTES) + msg(act) + msg(times.timestep_bytes)
    ranges = _resolve_split(times, stages, split, first_in - mid_in)
    transfer_in = [first_in] + [mid_in] * (stages - 1)
    fixed = times.stage_overhead_s + (0.0 if in_process else times.stage_plan_s)
    compute: list[list[float]] = []  # [kind][stage]: denoising, committing
    for per_block, head in ((times.block_s, times.head_s), (times.commit_block_s, 0.0)):
        compute.append(
            [
                fixed
                + sum(per_block[i] for i in r)
                + (times.embed_s if s == 0 else 0.0)
                + (head if s == stages - 1 else 0.0)
                for s, r in enumerate(ranges)
            ]
        )
    back = [msg(HEADER_BYTES) + msg(times.latent_bytes), msg(HEADER_BYTES)]
    pipe = _PipeModel(
        [(transfer_in, compute[0]), (transfer_in, compute[1])],
        back,
        times.driver_s,
        cores,
        synchronous=in_process,
    )
    replay = _replay_plain if denoiser == "plain" else _replay_stream_batch
    out = replay(pipe, steps, blocks)
    half = blocks // 2
    block_s = (out[-1] - out[half - 1]) / (blocks - half)
    bps = 1.0 / block_s if block_s > 0 else math.inf
    busy = [steps * d + c for d, c in zip(compute[0], compute[1], strict=True)]
    service = [a + b for a, b in zip(transfer_in, compute[0], strict=True)]
    return Prediction(
        stages=stages,
        denoiser=denoiser,
        steps=steps,
        layers=tuple((r.start, r.stop) for r in ranges),
        stage_s=tuple(compute[0]),
        transfer_in_s=tuple(transfer_in),
        round_trip_s=times.driver_s + sum(service) + back[0],
        block_s=block_s,
        blocks_per_s=bps,
        latent_fps=bps * times.block_frames,
        video_fps=bps * times.block_frames * VIDEO_FRAMES_PER_LATENT,
        ttfb_s=out[0],
        utilisation=tuple(min(1.0, b / block_s) if block_s > 0 else 0.0 for b in busy),
        bottleneck=1 + max(range(stages), key=lambda s: service[s]),
    )
