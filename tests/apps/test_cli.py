"""`framecast generate` end to end: a real MP4, decoded back with PyAV."""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np
import pytest

from apps.cli import main


def decode(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        return frames, float(stream.average_rate)


@pytest.mark.parametrize(("frames", "fps"), [(37, 16), (12, 24)])
def test_generate_writes_requested_frames_and_fps(tmp_path: Path, frames: int, fps: int) -> None:
    out = tmp_path / "clip.mp4"
    rc = main(
        [
            "generate",
            "--prompt",
            "a red circle moving left",
            "--frames",
            str(frames),
            "--fps",
            str(fps),
            "--out",
            str(out),
            "--preset",
            "nano",
            "--height",
            "64",
            "--width",
            "96",
        ]
    )
    assert rc == 0
    decoded, rate = decode(out)
    assert len(decoded) == frames and rate == fps
    assert decoded[0].shape == (64, 96, 3)
    assert np.std(np.stack(decoded)) > 1.0  # not a blank video


def test_generate_with_switch_and_global_cache(tmp_path: Path) -> None:
    out = tmp_path / "switch.mp4"
    rc = main(
        [
            "generate",
            "--prompt",
            "a red circle",
            "--frames",
            "40",
            "--out",
            str(out),
            "--preset",
            "nano",
            "--height",
            "32",
            "--width",
            "32",
            "--window",
            "0",
            "--switch",
            "20:a blue square",
            "--switch-mode",
            "cut",
        ]
    )
    assert rc == 0 and len(decode(out)[0]) == 40


def test_bad_arguments_give_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "generate",
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "a.mp4"),
            "--preset",
            "nano",
            "--height",
            "50",
        ]
    )
    assert rc == 1 and "multiples of 16" in capsys.readouterr().err
    rc = main(
        ["generate", "--prompt", "x", "--out", str(tmp_path / "b.mp4"), "--preset", "wan2.1-1.3b"]
    )
    assert rc == 1 and "--text-embeds" in capsys.readouterr().err
    rc = main(["generate", "--prompt", "x", "--out", str(tmp_path / "c.mp4"), "--preset", "nope"])
    assert rc == 1 and "unknown model 'nope'" in capsys.readouterr().err
    rc = main(
        [
            "generate",
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "d.mp4"),
            "--preset",
            "nano",
            "--checkpoint",
            str(tmp_path / "missing.pt"),
        ]
    )
    assert rc == 1 and "not found" in capsys.readouterr().err


def test_generate_from_checkpoint_and_precomputed_embeddings(tmp_path: Path) -> None:
    """The path a Self-Forcing user takes: a wrapped checkpoint plus prompt embeddings."""
    import torch

    from models.wan.config import PRESETS
    from models.wan.loader import build_model

    source = build_model(PRESETS["nano"], seed=7)
    ckpt = tmp_path / "self_forcing_like.pt"
    torch.save({"generator": {"model." + k: v for k, v in source.state_dict().items()}}, ckpt)
    embeds = tmp_path / "prompts.pt"
    torch.save({"a red circle": torch.randn(5, 32), "a blue square": torch.randn(3, 32)}, embeds)
    outs = []
    for prompt in ("a red circle", "a blue square"):
        out = tmp_path / f"{prompt.replace(' ', '_')}.mp4"
        rc = main([
            "generate", "--prompt", prompt, "--frames", "16", "--out", str(out),
            "--preset", "nano", "--checkpoint", str(ckpt), "--text-embeds", str(embeds),
            "--height", "32", "--width", "32",
        ])
        assert rc == 0
        outs.append(np.stack(decode(out)[0]).astype(np.int16))
    assert np.abs(outs[0] - outs[1]).max() > 10  # the embeddings reached the model
    rc = main([
        "generate", "--prompt", "a green triangle", "--out", str(tmp_path / "x.mp4"),
        "--preset", "nano", "--checkpoint", str(ckpt), "--text-embeds", str(embeds),
    ])
    assert rc == 1


def test_info_prints_a_profile_and_its_components_memory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["info", "--model", "longlive"]) == 0
    out = capsys.readouterr().out
    assert "local_attn_size=12 sink_size=3" in out  # the reference's counting
    assert "sinks=3 window=6 + block 3" in out  # and ours
    assert "1,418,996,800" in out  # the 1.3B DiT, counted on the meta device
    for component in ("Wan VAE decoder", "TAEHV decoder", "UMT5-XXL encoder"):
        assert component in out
    assert main(["info", "--model", "longlife"]) != 0
    assert "unknown model profile 'longlife'; choose one of" in capsys.readouterr().err


def test_a_switch_at_or_past_the_clip_end_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.mp4"
    rc = main(["generate", "--prompt", "a red circle", "--switch", "48:a blue square",
               "--frames", "48", "--model", "nano", "--height", "32", "--width", "32",
               "--out", str(out)])  # fmt: skip
    assert rc == 1 and "never happens" in capsys.readouterr().err and not out.exists()


def test_every_generate_option_shows_its_default() -> None:
    from apps.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    generate = sub.choices["generate"]
    helps = generate.format_help()
    for action in generate._actions:
        if not action.option_strings or action.dest in ("help", "prompt"):
            continue
        text = generate.formatter_class(prog="x")._get_help_string(action)  # type: ignore[call-arg]
        assert "default" in text, f"{action.option_strings} shows no default"
    assert "(default: the model's own)" in helps and "(default: 48)" in helps


def test_info_lists_the_embedded_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "\nworld " in out and "longlive" in out and "wan2.1-1.3b" in out
