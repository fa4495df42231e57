"""Few-step flow-matching schedules.

Flow matching interpolates x_t = (1 - sigma) * x0 + sigma * noise, and the
model predicts the velocity v = noise - x0, so x0 = x_t - sigma * v. Models
are fed timestep t = 1000 * sigma.

Causal Wan distillations (Self-Forcing, CausVid, LongLive) name their steps on
the 0..1000 scale ([1000, 750, 500, 250]) and "warp" them through the shifted
training schedule: step s means sigma = shift*u / (1 + (shift-1)*u), u = s/1000.
With shift 5.0 that gives t = [1000, 937.5, 833.3, 625.0].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000
Sampler = Literal["renoise", "euler"]  # a denoising step rule: see FlowSchedule.sampler


def shift_sigma(u: float, shift: float) -> float:
    """The timestep shift used by Wan/SD3 flow matching."""
    return shift * u / (1.0 + (shift - 1.0) * u)


@dataclass(frozen=True)
class FlowSchedule:
    """The denoising steps of one block."""

    steps: tuple[int, ...] = (1000, 750, 500, 250)  # on the 0..1000 scale, descending
    shift: float = 5.0  # 5.0 Self-Forcing / LongLive, 8.0 CausVid
    warp: bool = True  # map steps through the shifted schedule (as the reference does)
    context_step: int = 0  # noise level of the committed context (0 = clean)
    # How a step moves to the next noise level. "renoise" (Self-Forcing, CausVid):
    # predict x0, then noise it afresh to the next level; right for distilled
    # few-step generators. "euler": the deterministic flow ODE step
    # x += (sigma_next - sigma) * flow, which keeps what earlier steps decided
    # (where an object is) instead of redrawing it. For generators trained with
    # plain flow matching neither rule wins everywhere: the shipped embedded
    # model scores better with euler, the patch-(1,4,4) job's with renoise, so
    # a bundle records the rule measured for it (docs/models/world.md).
    sampler: Sampler = "renoise"

    def __post_init__(self) -> None:
        if self.sampler not in ("renoise", "euler"):
            raise ValueError(f"sampler must be 'renoise' or 'euler', got {self.sampler!r}")
        if not self.steps:
            raise ValueError("a schedule needs at least one denoising step")
        if any(not 0 < s <= NUM_TRAIN_TIMESTEPS for s in self.steps):
            raise ValueError(f"steps must be in (0, 1000], got {self.steps}")
        if list(self.steps) != sorted(self.steps, reverse=True):
            raise ValueError(f"steps must be strictly descending, got {self.steps}")
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"steps must be distinct, got {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if not 0 <= self.context_step < NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"context_step must be in [0, 1000), got {self.context_step}")

    @classmethod
    def self_forcing(cls) -> FlowSchedule:
        return cls(steps=(1000, 750, 500, 250), shift=5.0)

    @classmethod
    def causvid(cls) -> FlowSchedule:
        return cls(steps=(1000, 750, 500, 250), shift=8.0)

    def sigma_of(self, step: int) -> float:
        u = step / NUM_TRAIN_TIMESTEPS
        return shift_sigma(u, self.shift) if self.warp else u

    @property
    def sigmas(self) -> tuple[float, ...]:
        """Noise level at each denoising step."""
        return tuple(self.sigma_of(s) for s in self.steps)

    @property
    def timesteps(self) -> tuple[float, ...]:
        """What the model is fed at each step (1000 * sigma)."""
        return tuple(NUM_TRAIN_TIMESTEPS * s for s in self.sigmas)

    @property
    def context_sigma(self) -> float:
        return self.sigma_of(self.context_step) if self.context_step else 0.0


def add_noise(x0: Tensor, noise: Tensor, sigma: float | Tensor) -> Tensor:
    """Flow-matching forward process: (1 - sigma) * x0 + sigma * noise."""
    return (1.0 - sigma) * x0 + sigma * noise


def frame_timesteps(sigmas: Tensor, batch: int) -> Tensor:
    """Per-frame model timesteps [B, F] from per-frame noise levels [F] (diffusion forcing,
    staggered/rolling schedules)."""
    assert sigmas.ndim == 1, f"{sigmas.shape=}"
    return (NUM_TRAIN_TIMESTEPS * sigmas).unsqueeze(0).expand(batch, -1)
