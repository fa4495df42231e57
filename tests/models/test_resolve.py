"""The one resolve step: a public model's folder of files (tiny random weights in the
real layouts), missing files named, checkpoints recognised from their shapes, defaults."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import pytest
import torch
from safetensors.torch import load_file

from apps.cli import main
from models.decoders.taehv import TAEHVConfig, TinyVideoDecoder, TinyVideoEncoder
from models.decoders.wan_vae import WanVAE, WanVAEConfig
from models.profiles import profile
from models.resolve import MissingWeightsError, ModelOptions, resolve
from models.wan.config import PRESETS
from models.wan.loader import recognise_preset
from models.wan.model import CausalWanModel

UMT5_FIXTURE = Path(__file__).parents[1] / "fixtures" / "reference" / "umt5_tiny"


def write_release(folder: Path) -> Path:
    """A LongLive-style folder: the DiT in the LongLive checkpoint layout, the Wan VAE,
    TAEHV's taew2_1 and UMT5 with its tokenizer, all tiny and random."""
    folder.mkdir(parents=True, exist_ok=True)
    dit = CausalWanModel(PRESETS["nano"]).init_weights(1)
    sd = {f"model.{k}": v for k, v in dit.state_dict().items()}
    torch.save({"generator": sd}, folder / "longlive_base.pt")
    torch.manual_seed(0)
    torch.save(WanVAE(WanVAEConfig.tiny()).state_dict(), folder / "Wan2.1_VAE.pth")
    taehv = {}
    for half, module in (
        ("encoder", TinyVideoEncoder(TAEHVConfig.wan2_1())),
        ("decoder", TinyVideoDecoder(TAEHVConfig.wan2_1())),
    ):
        for k, v in module.state_dict().items():
            taehv[f"{half}.{k.removeprefix('layers.')}"] = v
    torch.save(taehv, folder / "taew2_1.pth")
    wan_t5 = load_file(str(UMT5_FIXTURE / "wan_encoder.safetensors"))
    torch.save(wan_t5, folder / "models_t5_umt5-xxl-enc-bf16.pth")
    shutil.copytree(UMT5_FIXTURE / "tokenizer", folder / "google" / "umt5-xxl")
    return folder


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release(tmp_path_factory.mktemp("longlive"))


def count_frames(path: Path) -> int:
    with av.open(str(path)) as f:
        return sum(1 for _ in f.decode(video=0))


@pytest.mark.parametrize(("decoder", "frames"), [("wan-vae", 9), ("taehv", 9)])
def test_generate_a_public_profile_from_a_folder_of_files(
    release: Path, tmp_path: Path, decoder: str, frames: int
) -> None:
    out = tmp_path / "clip.mp4"
    rc = main([
        "generate", "--model", "longlive", "--weights", str(release), "--decoder", decoder,
        "--prompt", "red", "--frames", str(frames), "--height", "32", "--width", "32",
        "--out", str(out),
    ])  # fmt: skip
    assert rc == 0
    assert count_frames(out) == frames


def test_resolve_uses_the_profile_and_the_files_shapes(release: Path) -> None:
    r = resolve(ModelOptions(model="longlive", weights=release, height=32, width=32))
    assert r.kind == "profile" and r.decoder == "wan-vae"
    assert r.wan == PRESETS["nano"]  # the DiT file's shape, the profile's settings
    assert r.stream.cache == profile("longlive").cache_config()
    assert r.stream.schedule == profile("longlive").schedule()
    assert r.files.dit == release / "longlive_base.pt"
    assert r.files.tokenizer == release / "google" / "umt5-xxl"


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("Wan2.1_VAE.pth", "Wan2.1_VAE.pth"),
        ("models_t5_umt5-xxl-enc-bf16.pth", "models_t5_umt5-xxl-enc-bf16.pth"),
        ("longlive_base.pt", "longlive_base.pt"),
        ("google", "google/umt5-xxl"),
    ],
)
def test_a_missing_file_is_named_with_where_it_comes_from(
    release: Path, tmp_path: Path, remove: str, named: str
) -> None:
    folder = tmp_path / "partial"
    shutil.copytree(release, folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(MissingWeightsError, match=named.replace(".", r"\.")) as e:
        resolve(ModelOptions(model="longlive", weights=folder))
    assert "release" in str(e.value) or "taehv" in str(e.value)


def test_a_profile_without_files_says_what_to_pass() -> None:
    with pytest.raises(MissingWeightsError, match="--weights DIR"):
        resolve(ModelOptions(model="self-forcing"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_recognised_from_tensor_shapes_alone(name: str) -> None:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CausalWanModel(PRESETS[name]).state_dict().items()}
    # zero-stride views: the shapes of a 14B checkpoint without its memory
    sd = {k: torch.zeros(1).expand(*s) if s else torch.zeros(()) for k, s in shapes.items()}
    assert recognise_preset(sd) == name


def test_a_checkpoint_without_model_is_recognised(tmp_path: Path) -> None:
    ckpt = tmp_path / "nano.pt"
    torch.save(CausalWanModel(PRESETS["nano"]).init_weights(2).state_dict(), ckpt)
    r = resolve(ModelOptions(checkpoint=ckpt))
    assert (r.options.model, r.kind, r.checkpoint) == ("nano", "preset", ckpt)


def test_every_model_kind_resolves() -> None:
    assert resolve(ModelOptions()).kind == "embedded"
    assert resolve(ModelOptions(model="tiny")).kind == "preset"
    with pytest.raises(ValueError, match="longlive"):
        resolve(ModelOptions(model="longlife"))


def test_the_release_lora_is_found_and_folded_in(release: Path, tmp_path: Path) -> None:
    from models.resolve import build_generator

    folder = tmp_path / "with_lora"
    shutil.copytree(release, folder)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, 64, generator=g), torch.randn(64, 4, generator=g)
    prefix = "base_model.model.blocks.0.self_attn.q"
    torch.save({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}, folder / "lora.pt")
    opts = ModelOptions(model="longlive", weights=folder, decoder="taehv", height=32, width=32)
    r = resolve(opts)
    assert r.files.lora == folder / "lora.pt"
    base = resolve(ModelOptions(model="longlive", weights=release, decoder="taehv"))
    merged = build_generator(r).state_dict()["blocks.0.self_attn.q.weight"]
    plain = build_generator(base).state_dict()["blocks.0.self_attn.q.weight"]
    torch.testing.assert_close(merged, plain + b @ a)  # alpha = rank: scale 1


def test_a_missing_release_lora_is_said(release: Path, caplog: pytest.LogCaptureFixture) -> None:
    resolve(ModelOptions(model="longlive", weights=release, decoder="taehv"))
    assert "lora.pt" in caplog.text and "not the released model" in caplog.text
