"""framecast bench-tts: the JSON a user gets, from the real voice and a real WebSocket client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.cli import main


def test_bench_tts_writes_its_measures_as_json(tmp_path: Path) -> None:
    out = tmp_path / "tts.json"
    rc = main(["bench-tts", "--seconds", "3", "--sentences", "2", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["env"]["cpu_model"] and r["versions"]["onnxruntime"]
    assert r["config"]["sample_rate"] == 22_050 and r["config"]["sentences"] == 2
    first = r["first_audio_s"]
    assert len(first["all"]) == 2 and 0 < first["median"] <= first["max"]
    c = r["continuous"]
    assert c["seconds"] >= 3 and 0 < c["real_time_factor"]
    assert r["intelligibility"]["sentences"] == 2 and 0 <= r["intelligibility"]["wer"] <= 1
    w = r["websocket"]
    assert len(w["first_audio_s"]["all"]) == 2 and w["first_audio_s"]["median"] > 0
    # the received audio is whole 20 ms units, back to back within the utterance
    assert w["continuous"]["seconds_received"] >= 2 and w["continuous"]["pts_jumps"] <= 2
    assert 0 <= w["intelligibility"]["wer"] <= 1
    assert len(w["barge_in_s"]["all"]) == 2 and w["barge_in_s"]["max"] < 2.0


def test_bench_vc_measures_latency_pitch_and_wer(tmp_path: Path) -> None:
    out = tmp_path / "vc.json"
    assert main(["bench-vc", "--sentences", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["algorithmic_latency_s"] == 0.09 and r["block_compute_s"]["blocks"] > 20
    assert r["pitch"]["measured_semitones"] == pytest.approx(4.0, abs=0.6)
    assert 0 <= r["wer"]["input"] <= 1 and 0 <= r["wer"]["output"] <= 1
    assert r["real_time_factor"] > 0 and r["env"]["cpu_model"]
