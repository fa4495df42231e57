"""Model profiles: everything a public causal Wan checkpoint was made to run with.

A profile is what the reference code of one model family sets, in one typed
object: the denoising steps and their warping, the timestep shift, frames per
block, the attention window and sinks *in the reference's own counting*, the
positions, the context noise, the step rule, how a prompt switch re-encodes the
past, and the default resolution and frame rate. ``cache_config()`` and
``schedule()`` translate it into the engine's terms; the translation is written
out per field below, because the two countings differ.

How the reference counts and how the engine counts:

- The reference's ``local_attn_size`` is the size of its KV cache in latent frames,
  and the block being denoised is written into that cache before it attends, so
  it counts the sinks, the window *and* the current block. The engine keeps the
  block in scratch slots of its own, so ``window_frames = local_attn_size -
  sink_size - block_frames`` (LongLive's 12 and 3 with 3-frame blocks: 3 sinks +
  6 window frames + the block = 12 frames attended, as in the reference).
- ``local_attn_size = -1`` (Self-Forcing, CausVid) is global attention over a
  cache of 32760 tokens: 21 latent frames at 832x480. Here that is a window of
  ``21 - block_frames`` frames with no sinks, which attends to exactly what the
  reference attends to for those 21 frames; past them the reference stops (its
  cache is full) and the window rolls.
- Positions are ``absolute``: the reference's own frame indices for as long as the
  reference can run (its 1024-entry RoPE table); past it the sinks slide so that
  no distance exceeds the table (engine.cache). A stream never fails on length.

Parity with the reference code is tested for ``self-forcing`` and ``longlive``
(tests/models/test_dit_reference.py, fixtures produced by the reference code
itself). ``causvid`` shares Self-Forcing's inference code path with other
numbers. ``rolling-forcing`` is an approximation: its window schedule runs on the
engine's ``rolling`` denoiser, whose attention is not the reference's.

Sources (read at the commits named): guandeh17/Self-Forcing 33593df
``configs/self_forcing_dmd.yaml``; tianweiy/CausVid ca21150
``configs/wan_causal_dmd_warp_4step_cfg2.yaml``; NVlabs/LongLive 2462895
``configs/longlive_inference.yaml``; TencentARC/RollingForcing a1477d0
``configs/rolling_forcing_dmd.yaml`` and ``pipeline/rolling_forcing_inference.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.cache import CacheConfig, RecachePolicy
from engine.denoisers import Denoiser
from engine.schedule import FlowSchedule

GLOBAL_CACHE_FRAMES = 21  # the references' 32760-token cache at 832x480 (1560 tokens a frame)


@dataclass(frozen=True)
class ModelProfile:
    """One public model family, as its reference inference code runs it."""

    name: str
    summary: str
    source: str  # where the numbers come from (repository, commit, file)
    wan_preset: str = "wan2.1-1.3b"  # models.wan.config preset of the DiT
    steps: tuple[int, ...] = (1000, 750, 500, 250)  # the reference's denoising_step_list
    warp: bool = True  # warp_denoising_step
    shift: float = 5.0  # timestep_shift
    sampler: str = "renoise"  # x0, then fresh noise to the next level (distilled models)
    context_step: int = 0  # context_noise: the timestep the clean block is committed at
    block_frames: int = 3  # num_frame_per_block (latent frames)
    local_attn_size: int = -1  # reference counting (module doc); -1 = global attention
    sink_size: int = 0  # sink frames (latent frames), counted inside local_attn_size
    recache: RecachePolicy = "blocks"  # how a prompt switch re-encodes the past
    global_sink: bool = True  # LongLive: keep the old sinks on a recache
    denoiser: Denoiser = "plain"
    height: int = 480  # default video size in pixels (latents are 8x smaller)
    width: int = 832
    fps: int = 16
    checkpoint_names: tuple[str, ...] = ()  # the DiT file names the release uses
    lora_names: tuple[str, ...] = ()  # a LoRA the release applies on top of the DiT
    lora_alpha: float | None = None  # its alpha (not stored in peft files); None: = rank

    def __post_init__(self) -> None:
        if self.local_attn_size != -1:
            used = self.sink_size + self.block_frames
            if self.local_attn_size <= used:
                raise ValueError(
                    f"{self.name}: local_attn_size {self.local_attn_size} leaves no window "
                    f"after {self.sink_size} sinks and a {self.block_frames}-frame block"
                )
        if self.height % 16 or self.width % 16:
            raise ValueError(f"{self.name}: {self.width}x{self.height} is not a multiple of 16")

    @property
    def window_frames(self) -> int:
        """Committed non-sink frames a block attends to, in the engine's counting."""
        if self.local_attn_size == -1:
            return GLOBAL_CACHE_FRAMES - self.block_frames
        return self.local_attn_size - self.sink_size - self.block_frames

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    def cache_config(self) -> CacheConfig:
        attended = self.sink_size + self.window_frames + self.block_frames
        return CacheConfig(
            sink_frames=self.sink_size,
            window_frames=self.window_frames,
            positions="absolute",
            recache=self.recache,
            # LongLive re-encodes min(local_attn_size, frames so far): everything it holds
            recache_frames=attended if self.recache == "span" else None,
            recache_keep_sinks=self.global_sink,
        )

    def schedule(self) -> FlowSchedule:
        return FlowSchedule(
            steps=self.steps,
            shift=self.shift,
            warp=self.warp,
            context_step=self.context_step,
            sampler="euler" if self.sampler == "euler" else "renoise",
        )

    def describe(self) -> str:
        """Human-readable, for ``framecast info --model``."""
        c = self.cache_config()
        attn = "global" if self.local_attn_size == -1 else str(self.local_attn_size)
        recache = (
            f"span of {c.recache_frames} frames in one forward, "
            f"{'keep' if self.global_sink else 'move'} the sinks (global_sink={self.global_sink})"
            if self.recache == "span"
            else "re-commit kept frames block by block"
        )
        rows = [
            ("profile", f"{self.name}: {self.summary}"),
            ("source", self.source),
            ("DiT", self.wan_preset),
            ("steps", f"{list(self.steps)} warped={self.warp} shift={self.shift} ({self.sampler})"),
            ("context noise", str(self.context_step)),
            ("block", f"{self.block_frames} latent frames ({4 * self.block_frames} video frames)"),
            (
                "attention (reference)",
                f"local_attn_size={attn} sink_size={self.sink_size}",
            ),
            (
                "attention (engine)",
                f"sinks={c.sink_frames} window={c.window_frames} + block {self.block_frames}",
            ),
            ("positions", f"{c.positions} (reference positions inside the 1024-entry table)"),
            ("prompt switch", recache),
            ("denoiser", self.denoiser),
            ("video", f"{self.width}x{self.height} at {self.fps} fps"),
            ("checkpoint", ", ".join(self.checkpoint_names + self.lora_names) or "-"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


PROFILES: dict[str, ModelProfile] = {
    p.name: p
    for p in (
        ModelProfile(
            name="self-forcing",
            summary="Self-Forcing DMD, Wan2.1-T2V-1.3B, 4 steps, 21-frame global attention",
            source="guandeh17/Self-Forcing 33593df configs/self_forcing_dmd.yaml",
            checkpoint_names=("self_forcing_dmd.pt",),
        ),
        ModelProfile(
            name="causvid",
            summary="CausVid DMD (warped 4 steps, shift 8), 21-frame global attention",
            source="tianweiy/CausVid ca21150 configs/wan_causal_dmd_warp_4step_cfg2.yaml",
            shift=8.0,
            checkpoint_names=("autoregressive_checkpoint/model.pt", "model.pt"),
        ),
        ModelProfile(
            name="longlive",
            summary="LongLive (long interactive video): 3 sinks + window, KV-recache on switch",
            source="NVlabs/LongLive 2462895 configs/longlive_inference.yaml",
            local_attn_size=12,
            sink_size=3,
            recache="span",
            global_sink=True,
            checkpoint_names=("longlive_base.pt",),
            lora_names=("lora.pt",),  # rank 256, alpha 256: scale 1
        ),
        ModelProfile(
            name="rolling-forcing",
            summary="Rolling Forcing: 5 steps over a rolling window of 5 blocks (approximate)",
            source="TencentARC/RollingForcing a1477d0 configs/rolling_forcing_dmd.yaml",
            steps=(1000, 800, 600, 400, 200),
            local_attn_size=GLOBAL_CACHE_FRAMES,
            sink_size=3,
            denoiser="rolling",
            checkpoint_names=("rolling_forcing_dmd.pt",),
        ),
    )
}


def profile(name: str) -> ModelProfile:
    try:
        return PROFILES[name]
    except KeyError:
        choices = sorted(PROFILES)
        raise ValueError(f"unknown model profile {name!r}; choose one of {choices}") from None
