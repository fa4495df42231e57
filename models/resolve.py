"""One place where a stream is built: model + files on disk + user overrides -> a Stream.

Every command (``framecast generate``, ``serve``, the benchmarks and the evaluation)
goes through ``resolve``: it decides what kind of model was asked for, finds its files,
fills every option the user left open from that model's own defaults (each default
lives in exactly one place: the embedded bundle's ``bundle.json``, the model profile,
or ``GENERIC_DEFAULTS`` for bare presets), and returns a typed ``Resolved`` that the
builders turn into a generator, a decoder, a prompt encoder and a ``Stream``.

Three kinds of model:

- ``embedded``: a trained bundle (``world``, shipped in models/weights, or a directory
  written by ``framecast train bundle``);
- ``profile``: a public checkpoint family (models.profiles: ``self-forcing``,
  ``causvid``, ``longlive``, ``rolling-forcing``) whose files come from ``--weights
  DIR`` (``WeightFiles.find`` names each missing one and where it comes from);
- ``preset``: a bare models.wan shape (``tiny``, ``nano``, ``wan2.1-1.3b``, ...),
  seeded random weights or ``--checkpoint``.

A ``--checkpoint`` without a model is recognised from its tensor shapes.

Usage::

    stream = build_stream(ModelOptions(model="longlive", weights=Path("ckpts"), decoder="taehv"))
    stream.start("a fox running through snow")
    for frame in stream.frames(max_frames=96):
        ...
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from engine.cache import CacheConfig, PositionMode
from engine.denoisers import Denoiser
from engine.protocols import CausalGenerator, PromptEncoder, StreamingDecoder
from engine.schedule import FlowSchedule
from engine.stream import Stream, StreamConfig
from models.decoders import LatentPreviewDecoder
from models.embedded import BUNDLE_FILE, BUNDLES, load_bundle
from models.profiles import PROFILES, ModelProfile
from models.text import HashingPromptEncoder, PrecomputedPromptEncoder, SentenceEncoder
from models.wan.config import PRESETS, WanConfig, preset
from models.wan.loader import build_model, load_state_dict_file, recognise_preset
from models.wan.model import CausalWanModel

log = logging.getLogger(__name__)

VAE_SPATIAL = 8  # pixels per latent pixel (Wan VAE, TAEHV)
VAE_TEMPORAL = 4  # video frames per latent frame
SENTENCE_ENCODER_DIM = 384  # all-MiniLM-L6-v2 token embeddings
UMT5_DIM = 4096  # the public Wan DiTs' text_dim
DEFAULT_MODEL = "world"  # the embedded, trained default (models/weights/world)

# Stream settings of bare presets (random or user weights); bundles and profiles have their own.
GENERIC_DEFAULTS: dict[str, Any] = {
    "height": 128,
    "width": 128,
    "fps": 16,
    "steps": (1000, 750, 500, 250),
    "shift": 5.0,
    "context_step": 0,
    "sampler": "renoise",
    "block_frames": 3,
    "sinks": 3,
    "window": 12,
    "positions": "relative",
    "denoiser": "plain",
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ModelKind = Literal["embedded", "profile", "preset"]
DecoderChoice = Literal["auto", "wan-vae", "taehv", "preview"]
DECODERS: tuple[DecoderChoice, ...] = ("auto", "wan-vae", "taehv", "preview")
TextOffload = Literal["none", "cpu", "swap"]


class MissingWeightsError(FileNotFoundError):
    """A model's files are not where the user pointed; the message names each one."""


@dataclass(frozen=True)
class ModelOptions:
    """What a user picks; None means "the model's default" (filled by ``resolve``)."""

    model: str | None = None  # embedded bundle, profile or preset name; None: DEFAULT_MODEL
    weights: Path | None = None  # a folder with a public model's files (profiles)
    checkpoint: Path | None = None  # the DiT file itself (overrides the one in weights)
    lora: Path | None = None  # a LoRA folded into the DiT (overrides the one in weights)
    lora_alpha: float | None = None  # its alpha; None: the profile's, else alpha = rank
    use_ema: bool = False
    text_embeds: Path | None = None  # precomputed prompt embeddings instead of UMT5
    decoder: DecoderChoice = "auto"  # auto: the model's own (Wan VAE for profiles)
    text_offload: TextOffload = "none"  # where UMT5-XXL lives (models.umt5)
    height: int | None = None  # video pixels
    width: int | None = None
    fps: int | None = None
    steps: tuple[int, ...] | None = None
    shift: float | None = None
    context_step: int | None = None
    sampler: str | None = None  # "renoise" (distilled checkpoints) or "euler"
    block_frames: int | None = None
    sinks: int | None = None
    window: int | None = None  # 0: global attention over max_frames
    max_frames: int = 21
    positions: PositionMode | None = None
    denoiser: Denoiser | None = None  # engine.denoisers: plain, stream_batch, rolling
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")

    def resolved(self) -> ModelOptions:
        """These options with every None filled from the model's defaults (``resolve``)."""
        return resolve(self).options


@dataclass(frozen=True)
class WeightFiles:
    """The files of a public model, found under one folder (any may be None if unneeded)."""

    dit: Path | None = None
    lora: Path | None = None
    vae: Path | None = None
    taehv: Path | None = None
    umt5: Path | None = None
    tokenizer: Path | None = None

    # what each file is called in the releases, and where it comes from
    VAE_NAMES: ClassVar = ("Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors")
    TAEHV_NAMES: ClassVar = ("taew2_1.pth", "taew2_1.safetensors")
    UMT5_NAMES: ClassVar = ("models_t5_umt5-xxl-enc-bf16.pth",)
    TOKENIZER_DIRS: ClassVar = ("google/umt5-xxl", "umt5-xxl", "tokenizer")
    SOURCES: ClassVar = {
        "vae": "Wan2.1_VAE.pth, from the Wan-AI/Wan2.1-T2V-1.3B release",
        "taehv": "taew2_1.pth, from madebyollin/taehv",
        "umt5": "models_t5_umt5-xxl-enc-bf16.pth, from the Wan-AI/Wan2.1-T2V-1.3B release",
        "tokenizer": "the google/umt5-xxl tokenizer folder (tokenizer.json), shipped in "
        "Wan-AI/Wan2.1-T2V-1.3B as google/umt5-xxl/",
    }

    @classmethod
    def find(
        cls,
        profile: ModelProfile | None,
        folder: Path | None,
        *,
        need_dit: bool,
        decoder: str,
        need_text: bool,
    ) -> WeightFiles:
        """Search ``folder`` (three levels deep) for the files this run needs."""
        if folder is not None and not folder.is_dir():
            raise MissingWeightsError(f"--weights {folder} is not a directory")
        found: dict[str, Path | None] = {}
        missing: list[str] = []

        def look(key: str, names: tuple[str, ...], needed: bool, source: str) -> None:
            path = _search(folder, names) if folder is not None else None
            found[key] = path
            if needed and path is None:
                missing.append(f"{' or '.join(names)} ({source})")

        dit_names = profile.checkpoint_names if profile is not None else ()
        look("dit", dit_names, need_dit, f"the {profile.name if profile else ''} DiT checkpoint")
        look("lora", profile.lora_names if profile is not None else (), False, "")
        look("vae", cls.VAE_NAMES, decoder == "wan-vae", cls.SOURCES["vae"])
        look("taehv", cls.TAEHV_NAMES, decoder == "taehv", cls.SOURCES["taehv"])
        look("umt5", cls.UMT5_NAMES, need_text, cls.SOURCES["umt5"])
        tok = _search_dir(folder, cls.TOKENIZER_DIRS) if folder is not None else None
        found["tokenizer"] = tok
        if need_text and tok is None:
            missing.append(f"{' or '.join(cls.TOKENIZER_DIRS)}/ ({cls.SOURCES['tokenizer']})")
        if missing:
            where = f"under {folder}" if folder is not None else "(no --weights DIR given)"
            raise MissingWeightsError(
                f"missing {len(missing)} file(s) {where}: " + "; ".join(missing)
                + ". Point --weights at the folder that holds them, pass --checkpoint for the "
                "DiT, --text-embeds instead of UMT5, or --decoder taehv|preview"
            )
        return cls(**found)


def _search(folder: Path | None, names: tuple[str, ...], depth: int = 3) -> Path | None:
    if folder is None:
        return None
    for level in range(depth + 1):
        for name in names:
            hits = sorted(folder.glob("/".join(["*"] * level + [name])))
            files = [h for h in hits if h.is_file()]
            if files:
                return files[0]
    return None


def _search_dir(folder: Path | None, names: tuple[str, ...], depth: int = 3) -> Path | None:
    if folder is None:
        return None
    for level in range(depth + 1):
        for name in names:
            for hit in sorted(folder.glob("/".join(["*"] * level + [name]))):
                if (hit / "tokenizer.json").is_file() or (hit / "spiece.model").is_file():
                    return hit
    return None


def model_kind(name: str) -> ModelKind:
    if name in BUNDLES or (Path(name) / BUNDLE_FILE).is_file():
        return "embedded"
    if name in PROFILES:
        return "profile"
    if name in PRESETS:
        return "preset"
    raise ValueError(
        f"unknown model {name!r}: the embedded model ({', '.join(BUNDLES)}) or a bundle "
        f"directory, a public model profile ({', '.join(PROFILES)}), or a bare preset "
        f"({', '.join(PRESETS)})"
    )


def recognise_checkpoint(path: Path, *, use_ema: bool = False) -> str:
    """The model a DiT checkpoint fits, from its tensor shapes, or an error saying what to
    pass: a public Wan size could be any of the profiles, which differ in attention."""
    sd = load_state_dict_file(path, use_ema=use_ema)
    name = recognise_preset(sd)
    if name is None:
        raise ValueError(
            f"{path} matches none of the known DiT shapes ({', '.join(PRESETS)}); "
            "pass --model with the preset it was trained as"
        )
    if PRESETS[name].text_dim == UMT5_DIM:
        raise ValueError(
            f"{path} is a {name} DiT; its attention and switch settings depend on how it was "
            f"trained: pass --model with one of {', '.join(PROFILES)} (or --model {name} for "
            "this repo's generic settings)"
        )
    log.info("recognised %s as the %r preset from its shapes", path, name)
    return name


@dataclass(frozen=True)
class Resolved:
    """Everything decided: the filled options, the files, the DiT shape and the stream."""

    options: ModelOptions  # every None filled
    kind: ModelKind
    profile: ModelProfile | None
    files: WeightFiles
    wan: WanConfig
    checkpoint: Path | None  # the DiT file to load; None: the bundle's, or random weights
    decoder: str  # "bundle", "wan-vae", "taehv" or "preview"
    stream: StreamConfig


def _defaults(kind: ModelKind, name: str, profile: ModelProfile | None) -> dict[str, Any]:
    if kind == "embedded":
        return {**GENERIC_DEFAULTS, **load_bundle(name).defaults}
    if profile is not None:
        return {
            "height": profile.height,
            "width": profile.width,
            "fps": profile.fps,
            "steps": profile.steps,
            "shift": profile.shift,
            "context_step": profile.context_step,
            "sampler": profile.sampler,
            "block_frames": profile.block_frames,
            "sinks": profile.sink_size,
            "window": profile.window_frames,
            "positions": "absolute",
            "denoiser": profile.denoiser,
        }
    return dict(GENERIC_DEFAULTS)


def resolve(opts: ModelOptions) -> Resolved:
    """Decide everything about a run (cheap: reads checkpoint headers at most)."""
    name = opts.model
    if name is None:
        name = DEFAULT_MODEL
        if opts.checkpoint is not None:
            name = recognise_checkpoint(opts.checkpoint, use_ema=opts.use_ema)
    kind = model_kind(name)
    profile = PROFILES.get(name) if kind == "profile" else None

    defaults = _defaults(kind, name, profile)
    filled = {k: getattr(opts, k) for k in GENERIC_DEFAULTS}
    for k, value in filled.items():
        if value is None:
            filled[k] = defaults[k]
    filled["steps"] = tuple(filled["steps"])
    if filled["window"] == 0:
        filled["sinks"] = 0
    options = dataclasses.replace(opts, model=name, **filled)

    decoder: str = opts.decoder
    if decoder == "auto":
        decoder = {"embedded": "bundle", "profile": "wan-vae", "preset": "preview"}[kind]
    if kind == "embedded" and decoder in ("wan-vae", "taehv"):
        raise ValueError(f"the embedded model {name!r} has its own decoder; drop --decoder")
    need_text = kind == "profile" and opts.text_embeds is None
    if kind == "profile" and opts.weights is None and opts.checkpoint is None:
        raise MissingWeightsError(
            f"--model {name} needs its files: --weights DIR (the folder with "
            f"{', '.join(profile.checkpoint_names if profile else ())}, the decoder and UMT5; "
            f"`framecast info --model {name}` lists them)"
        )
    files = WeightFiles.find(
        profile,
        opts.weights,
        need_dit=kind == "profile" and opts.checkpoint is None,
        decoder=decoder,
        need_text=need_text,
    )
    checkpoint = opts.checkpoint or files.dit
    if profile is not None and profile.lora_names and opts.lora is None and files.lora is None:
        log.warning(
            "%s: no %s found%s: running the base DiT alone, which is not the released model "
            "(pass --lora or put it under --weights)",
            profile.name,
            " or ".join(profile.lora_names),
            f" under {opts.weights}" if opts.weights else "",
        )
    if opts.lora is None and files.lora is not None and checkpoint != files.dit:
        files = dataclasses.replace(files, lora=None)  # the folder's LoRA is for its own DiT

    if kind == "embedded":
        wan = load_bundle(name).wan_config
    elif checkpoint is not None and kind == "profile":
        # a profile says how to run a DiT, its file says how big it is (tests use tiny ones)
        shape = recognise_preset(load_state_dict_file(checkpoint, use_ema=opts.use_ema))
        wan = preset(shape or (profile.wan_preset if profile else name))
    else:
        wan = preset(name)

    stream = _stream_config(options, wan, profile)
    return Resolved(options, kind, profile, files, wan, checkpoint, decoder, stream)


def latent_hw(wan: WanConfig, height: int, width: int) -> tuple[int, int]:
    """Latent size of a video size, checked against the VAE's 8x and the DiT's patch."""
    step_h, step_w = VAE_SPATIAL * wan.patch_size[1], VAE_SPATIAL * wan.patch_size[2]
    if height % step_h or width % step_w:
        raise ValueError(
            f"--height/--width must be multiples of {step_h}x{step_w} pixels "
            f"(VAE 8x and patch {wan.patch_size[1:]}), got {height}x{width}"
        )
    return height // VAE_SPATIAL, width // VAE_SPATIAL


def _stream_config(o: ModelOptions, wan: WanConfig, profile: ModelProfile | None) -> StreamConfig:
    assert o.height is not None and o.width is not None and o.steps is not None
    assert o.block_frames is not None and o.sinks is not None and o.window is not None
    assert o.fps is not None and o.shift is not None and o.context_step is not None
    assert o.positions is not None and o.denoiser is not None
    recache = profile.recache if profile is not None else "blocks"
    common: dict[str, Any] = dict(
        positions=o.positions,
        recache=recache,
        recache_frames=o.sinks + o.window + o.block_frames if recache == "span" else None,
        recache_keep_sinks=profile.global_sink if profile is not None else True,
    )
    if not o.window:
        cache = CacheConfig.global_attention(max_frames=o.max_frames, **common)
    else:
        cache = CacheConfig.rolling_window(o.sinks, o.window, **common)
    return StreamConfig(
        block_frames=o.block_frames,
        latent_hw=latent_hw(wan, o.height, o.width),
        schedule=FlowSchedule(
            steps=o.steps,
            shift=o.shift,
            context_step=o.context_step,
            sampler=o.sampler,  # type: ignore[arg-type]  # FlowSchedule validates it
        ),
        cache=cache,
        fps=o.fps,
        seed=o.seed,
        denoiser=o.denoiser,
    )


# ---------------------------------------------------------------- builders


def build_generator(r: Resolved) -> CausalWanModel:
    """The DiT, loaded offline (built on the meta device when a file is loaded)."""
    o = r.options
    dtype = DTYPES[o.dtype]
    if r.kind == "embedded" and o.checkpoint is None:
        assert o.model is not None
        return load_bundle(o.model).generator(device=o.device, dtype=dtype)
    if r.checkpoint is None:
        log.warning(
            "model %r: no checkpoint given, using seeded random weights (output is "
            "structured noise, not trained video)",
            o.model,
        )
    lora = o.lora or r.files.lora
    alpha = o.lora_alpha if o.lora_alpha is not None else (r.profile and r.profile.lora_alpha)
    return build_model(
        r.wan, checkpoint=r.checkpoint, device=o.device, dtype=dtype, seed=o.seed,
        use_ema=o.use_ema, lora=lora, lora_alpha=alpha or None,
    )  # fmt: skip


def build_decoder(r: Resolved) -> StreamingDecoder:
    o = r.options
    if r.decoder == "bundle":
        assert o.model is not None
        return load_bundle(o.model).decoder(device=o.device)
    if r.decoder == "wan-vae":
        from models.decoders.wan_vae import WanVAEStreamingDecoder, load_wan_vae

        assert r.files.vae is not None
        vae = load_wan_vae(r.files.vae, config=_vae_config(r.files.vae), device=o.device,
                           dtype=DTYPES[o.dtype])  # fmt: skip
        return WanVAEStreamingDecoder(vae)
    if r.decoder == "taehv":
        from models.decoders.taehv import load_taew2_1

        assert r.files.taehv is not None
        return load_taew2_1(r.files.taehv, device=o.device, dtype=DTYPES[o.dtype])
    return LatentPreviewDecoder(r.wan.out_dim, device=o.device)


def _vae_config(path: Path) -> Any:
    """The Wan VAE shape a file has: the release's, or the tiny test shape."""
    from models.decoders.wan_vae import WanVAE, WanVAEConfig, read_wan_vae_file

    sd = read_wan_vae_file(path)
    for config in (WanVAEConfig.wan2_1(), WanVAEConfig.tiny()):
        with torch.device("meta"):
            expected = WanVAE(config).state_dict()
        if all(k in sd and sd[k].shape == v.shape for k, v in expected.items()):
            return config
    return WanVAEConfig.wan2_1()  # the strict loader names what differs


def build_prompt_encoder(r: Resolved) -> PromptEncoder:
    o, wan = r.options, r.wan
    if o.text_embeds is not None:
        return PrecomputedPromptEncoder(o.text_embeds)
    if r.files.umt5 is not None and r.files.tokenizer is not None:
        from models.umt5 import UMT5PromptEncoder, match_umt5_config

        return UMT5PromptEncoder(
            r.files.umt5, r.files.tokenizer, config=match_umt5_config(r.files.umt5),
            device=o.device, offload=o.text_offload,
        )  # fmt: skip
    if wan.text_dim == UMT5_DIM:
        raise MissingWeightsError(
            f"model {o.model!r} reads UMT5-XXL prompt embeddings: pass --weights DIR with "
            f"{WeightFiles.UMT5_NAMES[0]} and google/umt5-xxl/, or --text-embeds FILE "
            "(a [T, 4096] tensor or {prompt: tensor})"
        )
    if wan.text_dim == SENTENCE_ENCODER_DIM:
        encoder: PromptEncoder = SentenceEncoder(max_tokens=wan.text_len)
        if r.kind == "embedded":
            from models.world.vocabulary import VocabularyCheckingEncoder

            encoder = VocabularyCheckingEncoder(encoder)
        return encoder
    log.warning("using the word-hashing prompt encoder (keys on words, not meaning)")
    return HashingPromptEncoder(wan.text_dim, wan.text_len)


def build_stream(
    opts: ModelOptions | Resolved,
    *,
    name: str = "stream",
    generator: CausalGenerator | None = None,
) -> Stream:
    """Everything a session needs, loaded offline. ``generator`` replaces the model's
    forwards (a pipeline's PipelinedGenerator); the decoder and encoder stay local."""
    r = opts if isinstance(opts, Resolved) else resolve(opts)
    encoder = build_prompt_encoder(r)  # before the DiT: a missing file fails fast
    decoder = build_decoder(r)
    if generator is None:
        generator = build_generator(r)
    return Stream(generator, decoder, encoder, r.stream, name=name)


@dataclass(frozen=True)
class GeneratorSpec:
    """Builds the generator in another process (a pipeline stage keeps only its blocks).

    Picklable, so engine.parallel can hand it to the stage processes it spawns."""

    opts: ModelOptions

    def __call__(self, layers: range) -> CausalWanModel:
        model = build_generator(resolve(self.opts))
        model.keep_layers(layers)
        return model.eval()


def parse_steps(text: str) -> tuple[int, ...]:
    """Parse denoising steps "1000,750,500,250" for argparse (``type=parse_steps``).

    Empty pieces are skipped, so a trailing comma is harmless. Raises
    argparse.ArgumentTypeError, which argparse reports as a usage error, on a
    piece that is not an integer or when no step is given. Range and order are
    FlowSchedule's to check.
    """
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"steps must be comma-separated integers, got {text!r}"
        ) from None
    if not steps:
        raise argparse.ArgumentTypeError(f"steps must name at least one step, got {text!r}")
    return steps
