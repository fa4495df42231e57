"""Load public causal Wan checkpoints (.pt / .safetensors) into CausalWanModel.

The public checkpoints wrap the DiT in different ways:
- Self-Forcing / CausVid / LongLive: ``{"generator": sd, "generator_ema": sd}``
  (or one of them), keys prefixed ``model.`` by the diffusion wrapper;
- FSDP / torch.compile leave ``_fsdp_wrapped_module.`` / ``_orig_mod.`` in keys;
- plain state dicts and .safetensors files with the bare WanModel keys.
All of these normalise to the bare keys. A mismatch is never silently
ignored: the error lists missing, unexpected and mis-shaped keys by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from models.wan.config import WanConfig
from models.wan.model import CausalWanModel

log = logging.getLogger(__name__)

_WRAPPERS = ("generator", "model", "state_dict", "module", "net")
_INFIXES = ("_fsdp_wrapped_module.", "_orig_mod.", "_checkpoint_wrapped_module.")
_PREFIXES = ("model.", "module.", "diffusion_model.")
_LIST_LIMIT = 20  # names shown per category in an error


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the chosen model; the message says why."""


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def unwrap_state_dict(obj: object, *, use_ema: bool = False) -> dict[str, Tensor]:
    """Find the DiT state dict inside a checkpoint object and normalise its keys."""
    if isinstance(obj, dict) and not _is_state_dict(obj):
        if use_ema:
            if not isinstance(obj.get("generator_ema"), dict):
                raise CheckpointError(
                    f"--ema asks for 'generator_ema', but the checkpoint's top-level keys are "
                    f"{sorted(obj)[:20]}; drop --ema to load the non-EMA weights"
                )
            return unwrap_state_dict(obj["generator_ema"])
        for key in _WRAPPERS:
            if key in obj and isinstance(obj[key], dict):
                log.info("using checkpoint entry %r", key)
                return unwrap_state_dict(obj[key])
        if isinstance(obj.get("generator_ema"), dict):
            log.warning("checkpoint has only EMA weights ('generator_ema'); loading those")
            return unwrap_state_dict(obj["generator_ema"])
        raise CheckpointError(
            f"no state dict found; top-level keys are {sorted(obj)[:20]} (expected tensors, or "
            f"one of {('generator_ema', *_WRAPPERS)})"
        )
    if not _is_state_dict(obj):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    sd: dict[str, Tensor] = obj  # type: ignore[assignment]
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        for infix in _INFIXES:
            key = key.replace(infix, "")
        out[key] = value
    # Wrappers nest (e.g. DDP around the diffusion wrapper: "module.model."): strip until stable.
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                stripped = True
    return out


def load_state_dict_file(path: str | Path, *, use_ema: bool = False) -> dict[str, Tensor]:
    """Read a .safetensors / .pt / .pth / .bin checkpoint (memory-mapped where possible)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return unwrap_state_dict(load_file(str(path)), use_ema=use_ema)
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        # Old zip-less pickles cannot be memory-mapped.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return unwrap_state_dict(obj, use_ema=use_ema)


@dataclass(frozen=True)
class KeyReport:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # key, checkpoint, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        def names(items: list[str]) -> str:
            more = len(items) - _LIST_LIMIT
            return ", ".join(items[:_LIST_LIMIT]) + (f", ... (+{more} more)" if more > 0 else "")

        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing keys: {names(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected keys: {names(self.unexpected)}")
        if self.mismatched:
            shapes = [
                f"{k} (checkpoint {list(a)} vs model {list(b)})" for k, a, b in self.mismatched
            ]
            parts.append(f"{len(shapes)} shape mismatches: {names(shapes)}")
        if any(k.startswith("img_emb.") or ".k_img." in k for k in self.unexpected):
            parts.append(
                "hint: this looks like an image-to-video checkpoint; only t2v is supported"
            )
        return "; ".join(parts)


def compare_keys(model: nn.Module, sd: dict[str, Tensor]) -> KeyReport:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [
        (k, tuple(sd[k].shape), tuple(expected[k].shape))
        for k in sorted(set(sd) & set(expected))
        if sd[k].shape != expected[k].shape
    ]
    return KeyReport(missing, unexpected, mismatched)


_LORA_PREFIXES = ("base_model.model.", "model.")


def load_lora_file(path: str | Path) -> dict[str, Tensor]:
    """A peft LoRA state dict (LongLive's ``lora.pt``: bare, or under ``generator_lora``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"LoRA file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path))
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("generator_lora"), dict):
        obj = obj["generator_lora"]
    lora_keys = isinstance(obj, dict) and any(".lora_A." in str(k) for k in obj)
    if not isinstance(obj, dict) or not _is_state_dict(obj) or not lora_keys:
        raise CheckpointError(f"{path} is not a LoRA state dict (no '*.lora_A.*' keys)")
    return {str(k): v for k, v in obj.items()}


def merge_lora(
    sd: dict[str, Tensor], lora: dict[str, Tensor], *, alpha: float | None = None
) -> dict[str, Tensor]:
    """Fold a LoRA into the weights it adapts: W + (alpha / rank) * B @ A, per layer.

    ``alpha`` is not stored in peft's files; None means alpha = rank (scale 1), which is
    LongLive's released setting (rank 256, alpha 256, configs/longlive_inference.yaml).
    Folding once at load time costs nothing per forward. Every adapted layer must exist."""
    out = dict(sd)
    merged = 0
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        b_key = key.replace(".lora_A.", ".lora_B.")
        if b_key not in lora:
            raise CheckpointError(f"LoRA has {key} but no {b_key}")
        base = key.split(".lora_A.")[0]
        for prefix in _LORA_PREFIXES:
            base = base.removeprefix(prefix)
        target = base + ".weight"
        if target not in out:
            raise CheckpointError(f"LoRA adapts {target}, which the DiT does not have")
        b, w = lora[b_key], out[target]
        if a.ndim != 2 or b.ndim != 2 or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise CheckpointError(
                f"LoRA {base}: A {list(a.shape)} and B {list(b.shape)} do not fit {list(w.shape)}"
            )
        rank = a.shape[0]
        scale = (rank if alpha is None else alpha) / rank
        delta = b.float() @ a.float()
        out[target] = (w.float() + scale * delta).to(w.dtype)
        merged += 1
    log.info("merged a LoRA into %d layers (alpha %s)", merged, alpha or "= rank")
    return out


def load_checkpoint(
    model: CausalWanModel,
    path: str | Path,
    *,
    use_ema: bool = False,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
) -> CausalWanModel:
    """Load a checkpoint (and fold in a LoRA) into model with strict key matching (works on
    a meta-device model: tensors are assigned, not copied)."""
    sd = load_state_dict_file(path, use_ema=use_ema)
    if lora is not None:
        sd = merge_lora(sd, load_lora_file(lora), alpha=lora_alpha)
    report = compare_keys(model, sd)
    if not report.ok:
        raise CheckpointError(f"{path} does not fit this model: {report.describe()}")
    model.load_state_dict(sd, strict=True, assign=True)
    return model


def build_model(
    config: WanConfig,
    *,
    checkpoint: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    use_ema: bool = False,
    lora: str | Path | None = None,
    lora_alpha: float | None = None,
) -> CausalWanModel:
    """A ready-to-run model: built on the meta device and loaded with assign when a
    checkpoint is given (no double allocation), else seeded random weights."""
    if lora is not None and checkpoint is None:
        raise CheckpointError(f"a LoRA ({lora}) needs the checkpoint it adapts")
    if checkpoint is not None:
        with torch.device("meta"):
            model = CausalWanModel(config)
        load_checkpoint(model, checkpoint, use_ema=use_ema, lora=lora, lora_alpha=lora_alpha)
    else:
        model = CausalWanModel(config).init_weights(seed)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def count_parameters(config: WanConfig) -> int:
    """Exact parameter count of a preset, computed on the meta device (no memory)."""
    with torch.device("meta"):
        model = CausalWanModel(config)
    return sum(p.numel() for p in model.parameters())


def _expected_shapes(c: WanConfig) -> dict[str, tuple[int, ...]]:
    """A few keys whose shapes tell the presets apart (heads are not visible in shapes)."""
    return {
        "patch_embedding.weight": (c.dim, c.in_dim, *c.patch_size),
        "text_embedding.0.weight": (c.dim, c.text_dim),
        "blocks.0.ffn.0.weight": (c.ffn_dim, c.dim),
        f"blocks.{c.num_layers - 1}.ffn.0.weight": (c.ffn_dim, c.dim),
    }


def recognise_preset(sd: dict[str, Tensor]) -> str | None:
    """The models.wan preset whose shapes a state dict (bare keys) has, or None."""
    from models.wan.config import PRESETS

    layers = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    for name, config in PRESETS.items():
        if len(layers) != config.num_layers:
            continue
        shapes = _expected_shapes(config)
        if all(k in sd and tuple(sd[k].shape) == s for k, s in shapes.items()):
            return name
    return None
