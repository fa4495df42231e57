"""The evaluation harness: perfect on the ground truth, plumbed end to end on a tiny engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.cli import main
from bench.eval.evaluate import (
    ATTRIBUTES,
    EngineSource,
    OracleSource,
    ablation,
    adherence,
    default_variants,
    drift,
    switch_pairs,
    switch_response,
)
from bench.eval.report import jsonable
from bench.eval.scoring import motion_axis
from models.resolve import ModelOptions
from models.world import EvalPrompt, Scene, SceneObject, WorldStream, detect, heldout_prompts

SIZE = 64  # oracle frames: the detector is exact at this size


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prompts() -> list[EvalPrompt]:
    return heldout_prompts(24)


def oracle(prompts: list[EvalPrompt], block_frames: int = 4) -> OracleSource:
    scenes = {p.prompt: p.scene for p in prompts}
    return OracleSource(scenes, height=SIZE, width=SIZE, block_frames=block_frames)


def test_oracle_adherence_and_consistency_are_perfect(prompts: list[EvalPrompt]) -> None:
    result = adherence(oracle(prompts), prompts[:10], frames=32)
    assert result.clips == 10
    assert result.accuracy == {k: 100.0 for k in (*ATTRIBUTES, "all")}
    c = result.consistency
    assert c.presence_pct == c.stable_count_pct == c.consistent_pct == 100.0


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_oracle_drift_has_no_drop(prompts: list[EvalPrompt], index: int) -> None:
    # Prompts 0..3 hold one- and two-object scenes; 400 frames see several bounces.
    r = drift(oracle(prompts, block_frames=12), prompts[index], 400, window=100, segment=32)
    assert r.first.segments == r.last.segments == 3
    assert (r.first.start, r.first.end, r.last.start, r.last.end) == (0, 96, 304, 400)
    assert r.first.adherence_pct == r.last.adherence_pct == 100.0 and r.drop_points == 0.0


def test_oracle_switch_takes_one_block(prompts: list[EvalPrompt]) -> None:
    pairs = switch_pairs(prompts, 8)
    assert len(pairs) == 8
    assert all(a.scene.objects[0].colour != b.scene.objects[0].colour for a, b in pairs)
    for mode in ("recache", "cut"):
        r = switch_response(oracle(prompts), pairs, mode, blocks_before=4, max_blocks_after=6)
        assert [row.blocks for row in r.rows] == [1] * 8
        assert r.met_within_2_pct == 100.0 and r.mean_blocks == 1.0


def test_motion_axis_ignores_bounces() -> None:
    """A fast mover bounces inside a segment: the axis still reads, where a single fit fails."""
    obj = SceneObject("red", "circle", "right", "small", 0.5, 0.5, 0.28)
    world = WorldStream(Scene("black", (obj,)), SIZE, SIZE)
    world.frame_index = 1
    for _ in range(20):  # segments across bounces at every phase
        track = detect(world.next_frames(32)).objects[0].track
        assert motion_axis(track, SIZE, SIZE) == "horizontal"
    still = SceneObject("red", "square", "still", "large", 0.5, 0.5, 0.0)
    track = detect(WorldStream(Scene("gray", (still,)), SIZE, SIZE).next_frames(32)).objects[0]
    assert motion_axis(track.track, SIZE, SIZE) == "still"


def test_oracle_rejects_unknown_prompts(prompts: list[EvalPrompt]) -> None:
    with pytest.raises(ValueError, match="no scene"):
        oracle(prompts).start("a purple hexagon")
    with pytest.raises(ValueError, match="two windows"):
        drift(oracle(prompts), prompts[0], 100, window=64, segment=32)


def in_range(x: float | None) -> bool:
    return x is None or 0.0 <= x <= 100.0


def test_engine_metrics_run_end_to_end(prompts: list[EvalPrompt]) -> None:
    """Random nano weights: only the plumbing is checked (values in range, JSON-ready)."""
    opts = ModelOptions(model="nano", height=32, width=32)
    source = EngineSource(opts)
    a = adherence(source, prompts[:3], frames=20)  # blocks are 12 frames: 20 cuts one
    assert a.clips == 3 and all(in_range(v) for v in a.accuracy.values())
    d = drift(source, prompts[0], 200, window=64, segment=32)
    assert d.first.segments == 2 and in_range(d.first.adherence_pct)
    s = switch_response(source, switch_pairs(prompts, 2), "recache", 2, 2)
    assert s.switches == 2 and in_range(s.met_within_2_pct)
    variants = default_variants(opts.resolved())
    names = [v.name for v in variants]
    assert names[0].startswith("default") and "no sinks" in names and "cut switch" in names
    ab = ablation(EngineSource, variants[:2], prompts[0], switch_pairs(prompts, 1), 128, 64)
    assert [r.name for r in ab.rows] == names[:2]
    for row in ab.rows:
        assert in_range(row.drift_first_pct) and in_range(row.switch_within_2_pct)
        assert row.drift_drop_points is not None and -100.0 <= row.drift_drop_points <= 100.0
    json.dumps(jsonable([a, d, s, ab]), allow_nan=False)  # JSON-serialisable as the CLI writes it


def test_cli_oracle_writes_perfect_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    args = ["eval", "--oracle", "--prompts", "6", "--drift-frames", "400", "--drift-window"]
    args += ["100", "--switches", "4", "--height", str(SIZE), "--width", str(SIZE)]
    args += ["--ablation", "--ablation-frames", "256", "--out", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "adherence" in table and "drop 0.0 points" in table and "no sinks" in table
    report = json.loads(out.read_text())
    assert report["source"] == "oracle" and report["device"]["torch"] == torch.__version__
    assert report["config"]["eval"]["prompts"] == 6 and report["date"]
    r = report["results"]
    assert r["adherence"]["accuracy"]["all"] == 100.0
    assert r["drift"]["drop_points"] == 0.0 and r["switch"]["met_within_2_pct"] == 100.0
    assert all(row["switch_within_2_pct"] == 100.0 for row in r["ablation"]["rows"])
    assert all(row["drift_drop_points"] in (0.0, None) for row in r["ablation"]["rows"])


def test_cli_engine_report_is_json(tmp_path: Path) -> None:
    out = tmp_path / "nano.json"
    args = ["eval", "--preset", "nano", "--height", "32", "--width", "32", "--prompts", "2"]
    args += ["--drift-frames", "128", "--drift-window", "64", "--switches", "1", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["source"] == "engine" and report["config"]["model"]["window"] == 12
    values = [*report["results"]["adherence"]["accuracy"].values()]
    values += [report["results"]["drift"]["first"]["adherence_pct"]]
    assert all(0.0 <= v <= 100.0 for v in values)
    assert np.isfinite(report["wall_s"])


def test_one_step_scores_separate_the_true_latents_from_a_noisy_guess() -> None:
    """The true latents decode to what the prompt asks (the decoder's ceiling); the shipped
    generator's one-step guess from pure noise (level 1000) knows only the prompt and
    its cache, so it must score no better on shape and motion than the truth."""
    from bench.eval.teacher_forced import teacher_forced_scores
    from models.embedded import load_bundle

    scores = teacher_forced_scores(load_bundle("world"), prompts=6, levels=(1000, 50))
    assert set(scores) == {"true", "1000", "50"}
    truth = scores["true"]
    assert truth["background"] == 100.0 and truth["colour"] == 100.0 and truth["motion"] >= 80.0
    assert scores["50"]["colour"] >= 80.0  # little noise: the estimate keeps the clip
    guess = scores["1000"]
    assert guess["shape"] <= truth["shape"] and guess["motion"] <= truth["motion"]


def test_heldout_latent_set_is_the_held_out_scenes_normalised_like_the_job(
    tmp_path: Path,
) -> None:
    """The memorisation probe's set: held-out scenes and prompts, the job's statistics."""
    from fakes import fake_latent_set

    from bench.learning_curves import heldout_latent_set
    from models.train.generator import ClipSampler, GeneratorTrainConfig

    fake_latent_set(tmp_path / "like.pt", hw=8)  # 64x64 clips
    weights = Path(__file__).resolve().parents[2] / "models" / "weights" / "world"
    data = heldout_latent_set(tmp_path / "like.pt", weights, clips=2)
    assert data["latents"].shape == (2, 8, 16, 8, 8)
    assert data["prompts"] == [c.prompt for c in heldout_prompts(2)]
    assert torch.equal(data["mean"], torch.full((16,), 0.5))  # the job's, not its own
    assert data["embeds"].float().abs().sum(dim=(1, 2)).min() > 0
    assert data["prompt_index"].tolist() == [[0, 0], [1, 1]]
    batch = ClipSampler(data, GeneratorTrainConfig(batch=4, frames=6))()  # trains as a set
    assert batch.latents.shape == (4, 6, 16, 8, 8)
