"""Flow-matching schedules against the reference's warped timesteps."""

from __future__ import annotations

import pytest
import torch

from engine.schedule import FlowSchedule, add_noise, frame_timesteps, shift_sigma


def reference_warped(steps: list[int], shift: float) -> list[float]:
    """The reference builds a 1000-entry shifted table and indexes it at 1000 - step."""
    sigmas = torch.linspace(1.0, 0.0, 1001, dtype=torch.float64)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    table = torch.cat([sigmas * 1000, torch.zeros(1, dtype=torch.float64)])
    return [float(table[1000 - s]) for s in steps]


@pytest.mark.parametrize("shift", [5.0, 8.0])
@pytest.mark.parametrize(
    "steps", [(1000, 750, 500, 250), (1000, 500), (1000,), (1000, 800, 600, 400, 200)]
)
def test_warped_timesteps_match_reference_table(steps: tuple[int, ...], shift: float) -> None:
    s = FlowSchedule(steps=steps, shift=shift)
    assert s.timesteps == pytest.approx(reference_warped(list(steps), shift), abs=1e-6)


def test_self_forcing_preset_values() -> None:
    assert FlowSchedule.self_forcing().timesteps == pytest.approx(
        [1000.0, 937.5, 833.333, 625.0], abs=1e-3
    )
    assert FlowSchedule.causvid().shift == 8.0


def test_unwarped_steps_are_linear() -> None:
    assert FlowSchedule(steps=(1000, 500), warp=False).sigmas == (1.0, 0.5)


def test_flow_matching_identities() -> None:
    x0, noise = torch.randn(4), torch.randn(4)
    sigma = shift_sigma(0.3, 5.0)
    xt = add_noise(x0, noise, sigma)
    flow = noise - x0  # what the model is trained to predict
    torch.testing.assert_close(xt - sigma * flow, x0)
    assert frame_timesteps(torch.tensor([1.0, 0.5]), 2).shape == (2, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": ()},
        {"steps": (500, 1000)},
        {"steps": (1000, 1000)},
        {"steps": (0,)},
        {"shift": 0.0},
        {"context_step": 1000},
    ],
)
def test_invalid_schedules_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FlowSchedule(**kwargs)  # type: ignore[arg-type]
