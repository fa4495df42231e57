"""bench/vc_live.py's timing: utterance onsets followed stage by stage."""

from __future__ import annotations

import pytest

from bench.vc_live import STAGES, follow, onsets


def test_onsets_need_quiet_before_them() -> None:
    events = [(0.0, 0.5), (0.1, 0.5), (0.3, 0.0), (0.45, 0.5), (1.0, 0.5), (1.2, 0.01)]
    # 0.45 follows a loud event 0.35 s earlier: the same utterance; 1.0 follows 0.55 s of quiet
    assert onsets(events) == [0.0, 1.0]


def test_follow_times_each_utterance_through_every_stage() -> None:
    loud, quiet = 0.5, 0.0
    events: dict[str, list[tuple[float, float]]] = {s: [] for s in STAGES}
    for start in (1.0, 3.0):
        for k, stage in enumerate(STAGES):
            at = start + 0.05 * k
            events[stage] += [(at - 0.5, quiet), (at, loud), (at + 0.02, loud)]
    events["heard"].append((0.2, loud))  # noise before anything was sent: ignored
    times = follow(events)
    assert times["sent"] == [1.0, 3.0]
    assert times["heard"] == pytest.approx([1.2, 3.2])


def test_follow_names_a_path_that_never_completes() -> None:
    events: dict[str, list[tuple[float, float]]] = {s: [] for s in STAGES}
    events["sent"] = [(1.0, 0.5)]
    with pytest.raises(RuntimeError, match="no utterance"):
        follow(events)
