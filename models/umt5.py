"""UMT5-XXL, the text encoder of the public Wan2.1 checkpoints, loaded from the user's files.

The network is transformers' ``UMT5EncoderModel`` (built on the meta device, weights
assigned), which computes what Wan's own ``T5Encoder`` computes (Wan-Video/Wan2.1
wan/modules/t5.py at commit 9737cba): pre-norm RMS layer norms (eps 1e-6, variance in
float32), attention without the 1/sqrt(d) scaling, a learned relative-position bias per layer
(32 buckets, bidirectional, log-spaced up to distance 128; UMT5 does not share one table as
T5 does), a gated FFN ``wo(gelu_tanh(wi_0 x) * wi_1 x)`` with the tanh-approximated GELU, and
a final RMS norm. tests/models/test_umt5.py checks it against that code (float32 and bf16).

Weights come in either layout:
- Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (in the Wan2.1-T2V-1.3B release): keys
  ``token_embedding``, ``blocks.N.{norm1,attn.{q,k,v,o},norm2,ffn.{gate.0,fc1,fc2},
  pos_embedding.embedding}``, ``norm``; mapped by ``wan_to_hf``;
- Hugging Face ``google/umt5-xxl``: a .safetensors / .bin file, or a folder with one or a
  sharded set plus its index json. Those are the full encoder-decoder: ``decoder.*`` and
  ``lm_head.*`` are skipped.

The tokenizer is the ``google/umt5-xxl`` folder (tokenizer.json is what is read; Wan's
release ships it as ``google/umt5-xxl/``). Prompts are cleaned as Wan cleans them
(``clean_prompt``), tokenized with </s> appended, truncated and padded to 512 tokens with a
mask (pad id 0), and encoded with that mask.

Output contract (``UMT5PromptEncoder.encode``): for one prompt, ``[T, 4096]`` float32, the
rows of its T real tokens (</s> included, T <= 512) and no padding. That is what Wan's
``T5EncoderModel`` returns (``u[:len]``) and what our DiT takes: ``CausalWanModel.embed_text``
zero-pads the context to text_len=512, as Wan's DiT does, which also equals Self-Forcing's
512-row ``prompt_embeds`` with padded rows zeroed. ``encode_batch`` gives that padded form,
``[B, 512, 4096]`` with rows past each length zero. On a GPU the encoder runs in bfloat16, as
in Wan and Self-Forcing; its output is returned as float32 (exact: the DiT casts it back).
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import UMT5EncoderModel

log = logging.getLogger(__name__)

UMT5_TEXT_LEN = 512  # tokens: Wan's text_len, the DiT's context length
WAN_WEIGHTS_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_TOKENIZER_DIR = "google/umt5-xxl"
_WHERE = (
    f"it ships with the Wan2.1 release (Wan-AI/Wan2.1-T2V-1.3B: {WAN_WEIGHTS_FILE} and the "
    f"{WAN_TOKENIZER_DIR}/ tokenizer folder); the google/umt5-xxl model has both too"
)
_LIST_LIMIT = 20  # names shown per category in an error


class UMT5CheckpointError(ValueError):
    """Weights that do not fit the chosen config; the message names the keys."""


@dataclass(frozen=True)
class UMT5Config:
    """Shape of a UMT5 encoder (defaults: UMT5-XXL, the ``umt5_xxl`` of Wan's t5.py)."""

    vocab_size: int = 256384  # embedding rows (the tokenizer's 256300 ids, padded)
    dim: int = 4096  # d_model
    head_dim: int = 64  # d_kv; attention width n_heads * head_dim (Wan's dim_attn) = 4096
    ffn_dim: int = 10240  # d_ff of the gated-GELU feed-forward
    n_heads: int = 64
    n_layers: int = 24
    num_buckets: int = 32  # relative-position buckets; each layer has its own [32, n_heads] table
    max_distance: int = 128  # distances from here on share the last bucket
    norm_eps: float = 1e-6
    text_len: int = UMT5_TEXT_LEN  # prompts are truncated and padded to this many tokens

    def __post_init__(self) -> None:
        sizes = (self.vocab_size, self.dim, self.head_dim, self.ffn_dim, self.n_heads)
        if min(*sizes, self.n_layers, self.text_len) < 1:
            raise ValueError(f"sizes must be positive: {self}")
        if self.num_buckets < 4 or self.num_buckets % 2:
            raise ValueError(f"num_buckets must be even and >= 4, got {self.num_buckets}")
        if self.max_distance <= self.num_buckets // 4:
            raise ValueError(f"max_distance={self.max_distance} is inside the exact buckets")

    @property
    def attn_dim(self) -> int:
        return self.n_heads * self.head_dim

    def to_hf(self, attn_implementation: str = "eager") -> Any:
        """The equivalent transformers.UMT5Config (encoder only)."""
        from transformers import UMT5Config as HFConfig

        fields: dict[str, Any] = dict(
            vocab_size=self.vocab_size,
            d_model=self.dim,
            d_kv=self.head_dim,
            d_ff=self.ffn_dim,
            num_heads=self.n_heads,
            num_layers=self.n_layers,
            relative_attention_num_buckets=self.num_buckets,
            relative_attention_max_distance=self.max_distance,
            layer_norm_epsilon=self.norm_eps,
            feed_forward_proj="gated-gelu",  # transformers maps this to gelu_new: tanh GELU
            dropout_rate=0.0,
            is_encoder_decoder=False,
            use_cache=False,
            attn_implementation=attn_implementation,
        )
        return HFConfig(**fields)


UMT5_PRESETS: dict[str, UMT5Config] = {
    "xxl": UMT5Config(),
    # The config of tests/fixtures/reference/umt5_tiny (head_dim * n_heads != dim on purpose).
    "tiny": UMT5Config(
        vocab_size=64, dim=32, head_dim=6, ffn_dim=48, n_heads=4, n_layers=2, text_len=16
    ),
}


# ---- building and sizing ----


def build_umt5(
    config: UMT5Config, *, device: str | torch.device = "meta", attn_implementation: str = "eager"
) -> UMT5EncoderModel:
    """An untrained transformers ``UMT5EncoderModel`` of this shape in eval mode (default: on
    the meta device, no memory: load weights into it with ``load_state_dict(assign=True)``).

    ``attn_implementation``: "eager" (default) computes the scores, bias, mask and softmax as
    Wan's T5Attention does: on the tiny fixture it gives Wan's output bit for bit on a CPU,
    in float32 and in bfloat16; "sdpa" agrees to ~1e-6 in float32 (a bf16 ulp or two in
    bfloat16). At 512 tokens the attention is a small part of the encoder's cost."""
    from transformers import UMT5EncoderModel

    with torch.device(device):
        model = UMT5EncoderModel(config.to_hf(attn_implementation))
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class ModelSize:
    params: int  # distinct parameters (the tied input embedding counted once)
    bytes: int  # at ``dtype``
    dtype: torch.dtype


def umt5_size(config: UMT5Config | None = None, dtype: torch.dtype = torch.bfloat16) -> ModelSize:
    """Parameters and weight bytes of the encoder, counted on a meta-device build (default:
    XXL, whose 5,680,910,336 parameters are 11.36 GB in bfloat16)."""
    model = build_umt5(config or UMT5_PRESETS["xxl"])
    params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied one once
    return ModelSize(params, params * torch.empty((), dtype=dtype).element_size(), dtype)


# ---- weights: file formats and key layouts ----

# Wan's block names -> transformers' (per block), from wan/modules/t5.py's T5SelfAttention.
_WAN_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # the GELU branch
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",  # the linear branch
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_EMBED = "shared.weight"
_TIED_EMBED = "encoder.embed_tokens.weight"  # the same tensor as shared.weight
_NOT_ENCODER = ("decoder.", "lm_head.")  # the rest of a full (encoder-decoder) checkpoint


def _names(keys: Sequence[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else ""
    return ", ".join(keys[:_LIST_LIMIT]) + more


def _problems(**lists: Sequence[str]) -> str:
    """'missing [a, b]; mis-shaped [c ...]': the non-empty lists, named."""
    return "; ".join(
        f"{kind.replace('_', '-')} [{_names(keys)}]" for kind, keys in lists.items() if keys
    )


def wan_to_hf(sd: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """Wan's T5Encoder keys -> transformers' UMT5EncoderModel keys. Every key of the
    ``n_layers``-block encoder must be there and nothing else: the error names the rest."""
    src = dict(sd)
    out: dict[str, Tensor] = {}
    missing: list[str] = []

    def move(a: str, b: str) -> None:
        if a in src:
            out[b] = src.pop(a)
        else:
            missing.append(a)

    move("token_embedding.weight", _EMBED)
    move("norm.weight", "encoder.final_layer_norm.weight")
    for i in range(n_layers):
        for a, b in _WAN_BLOCK.items():
            move(f"blocks.{i}.{a}", f"encoder.block.{i}.{b}")
    if missing or src:
        raise UMT5CheckpointError(
            f"Wan UMT5 checkpoint does not fit a {n_layers}-layer encoder: "
            + _problems(missing=missing, unexpected=list(src))
        )
    return out


def hf_encoder(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The encoder's part of a transformers UMT5 state dict (the decoder, lm_head and the
    tied copy of the embedding dropped)."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key.startswith(_NOT_ENCODER):
            continue
        if key == _TIED_EMBED:
            out.setdefault(_EMBED, value)
            continue
        out[key] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a weights file (.pth / .pt / .bin / .safetensors) or of a folder holding
    model.safetensors, pytorch_model.bin, or either sharded with its ``*.index.json``.
    ``decoder.*`` / ``lm_head.*`` tensors of a full UMT5 checkpoint are never read (nor are
    shards holding only those); zip-format torch files are memory-mapped."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_state_dict(path / name)
            index = path / f"{name}.index.json"
            if index.is_file():
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
                shards = {f for k, f in weight_map.items() if not k.startswith(_NOT_ENCODER)}
                sd: dict[str, Tensor] = {}
                for shard in sorted(shards):
                    if not (path / shard).is_file():
                        raise FileNotFoundError(f"{index} names the shard {shard}, not in {path}")
                    sd.update(read_state_dict(path / shard))
                return sd
        raise FileNotFoundError(
            f"{path} has no UMT5 weights (model.safetensors, pytorch_model.bin, or a sharded "
            f"set with its .index.json; or pass the {WAN_WEIGHTS_FILE} file); {_WHERE}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"UMT5 weights not found: {path}; {_WHERE}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if not k.startswith(_NOT_ENCODER)}
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # a legacy (non-zip) torch file cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values())):
        raise UMT5CheckpointError(f"{path} does not hold a state dict of tensors")
    return obj


def match_umt5_config(path: str | Path) -> UMT5Config:
    """The preset whose embedding table a weights file has (XXL for the release, the tiny
    test shape otherwise); XXL when none matches, so the strict loader names the keys."""
    raw = read_state_dict(path)
    table = raw.get("token_embedding.weight", raw.get(_EMBED, raw.get(_TIED_EMBED)))
    for config in UMT5_PRESETS.values():
        if table is not None and tuple(table.shape) == (config.vocab_size, config.dim):
            return config
    return UMT5_PRESETS["xxl"]


def load_umt5_state_dict(path: str | Path, config: UMT5Config) -> dict[str, Tensor]:
    """The weights at ``path`` in either layout, as UMT5EncoderModel keys, checked against
    ``config`` (every key present, none left over, every shape right)."""
    raw = read_state_dict(path)
    if "token_embedding.weight" in raw:  # Wan's layout
        sd = wan_to_hf(raw, config.n_layers)
    elif _EMBED in raw or _TIED_EMBED in raw:
        sd = hf_encoder(raw)
    else:
        raise UMT5CheckpointError(
            f"{path}: neither Wan's UMT5 layout (token_embedding.weight, blocks.N.*) nor Hugging "
            f"Face's (shared.weight, encoder.block.N.*); its keys start {_names(list(raw))}"
        )
    expected = {
        k: tuple(v.shape) for k, v in build_umt5(config).state_dict().items() if k != _TIED_EMBED
    }
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k} {list(sd[k].shape)} != {list(s)}"
        for k, s in expected.items()
        if k in sd and tuple(sd[k].shape) != s
    ]
    if missing or unexpected or shapes:
        raise UMT5CheckpointError(
            f"{path} does not fit the UMT5 config {config}: "
            + _problems(missing=missing, unexpected=unexpected, mis_shaped=shapes)
        )
    return sd


def load_umt5(
    path: str | Path,
    config: UMT5Config,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "eager",
) -> UMT5EncoderModel:
    """UMT5EncoderModel with the weights at ``path`` (either layout), in eval mode, frozen.

    Built on the meta device; each tensor is cast and moved on its own, so peak host memory
    stays near one copy of the weights (the file is memory-mapped)."""
    sd = load_umt5_state_dict(path, config)
    device = torch.device(device)
    for key in list(sd):
        sd[key] = sd[key].to(device=device, dtype=dtype)
    model = build_umt5(config, attn_implementation=attn_implementation)
    result = model.load_state_dict(sd, strict=False, assign=True)
    assert list(result.missing_keys) == [_TIED_EMBED] and not result.unexpected_keys, result
    model.encoder.embed_tokens = model.shared  # re-tie: assign replaced shared's parameter
    assert not any(p.is_meta for p in model.parameters())
    return model


def model_forward(model: nn.Module, ids: Tensor, mask: Tensor) -> Tensor:
    """ids, mask: [B, L] int64 (mask 1 on tokens, 0 on padding) -> [B, L, dim] hidden states.
    Rows at padded positions are computed but meaningless (Wan's T5Encoder keeps them too)."""
    assert ids.ndim == 2 and ids.shape == mask.shape, f"{ids.shape=} {mask.shape=}"
    hidden: Tensor = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden


# ---- tokenizer ----

# Unicode White_Space, the class that Wan's `regex` pattern \s matches. Python's own \s adds
# U+001C..U+001F, which ftfy and html.unescape have already removed by then; spelled out anyway.
_WHITESPACE = re.compile(
    "[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"
)


def clean_prompt(text: str) -> str:
    """Wan's clean='whitespace' (wan/modules/tokenizers.py): ftfy.fix_text, HTML entities
    unescaped twice, every whitespace run to one space, stripped."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip()


class UMT5Tokenizer:
    """The google/umt5-xxl tokenizer read offline from a folder's tokenizer.json.

    Equivalent to Wan's ``HuggingfaceTokenizer(seq_len=512, clean='whitespace')`` (an
    AutoTokenizer over the same file): prompts cleaned by ``clean_prompt``, </s> appended
    by the file's post-processor, truncated to ``text_len`` tokens (</s> kept last), padded
    with the pad id to exactly ``text_len``.

    Usage::

        tok = UMT5Tokenizer("Wan2.1-T2V-1.3B/google/umt5-xxl")
        ids, mask = tok(["a red fox in the snow"])  # [1, 512] int64 each; mask 1 on tokens
    """

    def __init__(self, folder: str | Path, text_len: int = UMT5_TEXT_LEN) -> None:
        folder = Path(folder)
        path = folder / "tokenizer.json" if folder.is_dir() else folder
        if not path.is_file():
            raise FileNotFoundError(
                f"UMT5 tokenizer not found: {path} (the tokenizer folder must hold "
                f"tokenizer.json); {_WHERE}"
            )
        from tokenizers import Tokenizer

        self.text_len = text_len
        self.path = path
        self.pad_token = _pad_token(path.parent)
        tok = Tokenizer.from_file(str(path))
        pad_id = tok.token_to_id(self.pad_token)
        if pad_id is None:
            raise ValueError(f"{path} has no pad token {self.pad_token!r}")
        self.pad_id: int = pad_id
        tok.enable_truncation(max_length=text_len)
        tok.enable_padding(length=text_len, pad_id=pad_id, pad_token=self.pad_token)
        self._tok = tok

    def __call__(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """-> ids [B, text_len] int64, mask [B, text_len] int64 (1: token, 0: padding)."""
        encodings = self._tok.encode_batch([clean_prompt(p) for p in prompts])
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids.view(len(prompts), self.text_len), mask.view(len(prompts), self.text_len)


def _pad_token(folder: Path) -> str:
    """The pad token that tokenizer_config.json names (UMT5: '<pad>', id 0)."""
    config = folder / "tokenizer_config.json"
    if config.is_file():
        pad = json.loads(config.read_text()).get("pad_token", "<pad>")
        return str(pad["content"] if isinstance(pad, dict) else pad)
    return "<pad>"


# ---- the prompt encoder ----

Offload = Literal["none", "cpu", "swap"]


class UMT5PromptEncoder:
    """Wan2.1's prompt embeddings: UMT5-XXL from the user's files (a PromptEncoder).

    - ``encode(prompt)`` -> ``[T, 4096]`` float32 on ``device``: the T real tokens' rows
      (</s> included, T <= 512), unpadded; cached per prompt (LRU of ``cache_size``), the
      same tensor on a hit: treat it as read-only.
    - ``encode_batch(prompts)`` -> ``[B, 512, 4096]`` float32, rows past each prompt's length
      zeroed (Self-Forcing's ``prompt_embeds``), and the lengths ``[B]``; not cached.

    ``weights``: Wan's models_t5_umt5-xxl-enc-bf16.pth, or Hugging Face UMT5 weights (file or
    folder); ``tokenizer``: the google/umt5-xxl folder. Both are checked at construction; the
    weights load on first use (or ``load()``).

    ``dtype`` (default: bfloat16 when ``device`` is a GPU, as Wan and Self-Forcing run it;
    float32 on a CPU-only setup). ``offload`` decides where the ~11.4 GB (bf16) live:
    - "none": on ``device``, next to the DiT (fastest);
    - "cpu": on the CPU, which also runs the encoder; only the result moves to ``device``;
    - "swap": on the CPU, copied to ``device`` for each encode that misses the cache and
      dropped there afterwards: a 24 GB GPU keeps room for the DiT, at the price of an
      11.4 GB host-to-device copy per new prompt (about a second over PCIe 4; not measured).
    ``trim_padding``: run the encoder on the batch cut to its longest prompt instead of all
    512 positions: padded keys are masked and the position bias depends only on distance,
    so the real rows agree with the padded run up to float rounding; much faster on a CPU.

    Usage::

        enc = UMT5PromptEncoder("Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth",
                                "Wan2.1-T2V-1.3B/google/umt5-xxl", device="cuda", offload="swap")
        ctx = enc.encode("a red fox running through snow")  # [T, 4096] float32 on cuda
    """

    def __init__(
        self,
        weights: str | Path,
        tokenizer: str | Path,
        *,
        config: UMT5Config | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        offload: Offload = "none",
        trim_padding: bool = False,
        cache_size: int = 32,
        attn_implementation: str = "eager",
    ) -> None:
        if offload not in ("none", "cpu", "swap"):
            raise ValueError(f"offload must be 'none', 'cpu' or 'swap', got {offload!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.config = config or UMT5_PRESETS["xxl"]
        self.device = torch.device(device)
        on_gpu = self.device.type != "cpu"
        self.dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
        self.offload: Offload = offload
        self.trim_padding = trim_padding
        self.attn_implementation = attn_implementation
        self.weights = Path(weights)
        if not self.weights.exists():
            raise FileNotFoundError(f"UMT5 weights not found: {self.weights}; {_WHERE}")
        self.tokenizer = UMT5Tokenizer(tokenizer, self.config.text_len)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._model: nn.Module | None = None
        self._host: list[tuple[nn.Parameter, Tensor]] = []  # "swap": each parameter's CPU copy
        # Streams encode from worker threads: one lock guards the lazy load and the cache.
        self._lock = threading.Lock()

    @property
    def text_dim(self) -> int:
        return self.config.dim

    @property
    def compute_device(self) -> torch.device:
        return torch.device("cpu") if self.offload == "cpu" else self.device

    def load(self) -> nn.Module:
        """Load the weights now (otherwise the first encode does)."""
        with self._lock:
            return self._load()

    def encode(self, prompt: str) -> Tensor:
        """[T, text_dim] float32 on ``device``: the prompt's real tokens, no padding."""
        with self._lock:
            hit = self._cache.get(prompt)
            if hit is not None:
                self._cache.move_to_end(prompt)
                return hit
            padded, lengths = self._encode(self._tokens([prompt]))
            out = padded[0, : int(lengths[0])].clone()  # lengths is on the CPU: no sync
            if self.cache_size:
                self._cache[prompt] = out
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return out

    def encode_batch(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """-> [B, text_len, text_dim] float32 on ``device`` with rows past each prompt's
        length zero, and the lengths [B] int64 (tokens including </s>)."""
        with self._lock:
            return self._encode(self._tokens(prompts))

    # ---- internals ----

    def _tokens(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if not prompts:
            raise ValueError("no prompts to encode")
        ids, mask = self.tokenizer(prompts)
        if not mask[:, 0].all():
            empty = [p for p, m in zip(prompts, mask[:, 0].tolist(), strict=True) if not m]
            raise ValueError(f"prompts with no tokens: {empty}")
        return ids, mask

    def _encode(self, tokens: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        ids, mask = tokens
        lengths = mask.sum(dim=1)  # CPU tensors: no device sync
        width = int(lengths.max()) if self.trim_padding else ids.shape[1]
        model = self._load()
        dev = self.compute_device
        with torch.inference_mode(), self._on_device():
            hidden = model_forward(model, ids[:, :width].to(dev), mask[:, :width].to(dev))
            pad = mask[:, :width, None].to(dev) == 0
            out = torch.zeros(*ids.shape, self.config.dim, device=self.device)
            out[:, :width] = hidden.masked_fill(pad, 0).to(self.device, torch.float32)
        # Outside inference mode the clone is a normal tensor (usable under autograd).
        return out.clone(), lengths

    def _load(self) -> nn.Module:
        if self._model is None:
            log.info(
                "loading UMT5 weights from %s (%s, offload=%s)",
                self.weights,
                self.dtype,
                self.offload,
            )
            home = "cpu" if self.offload in ("cpu", "swap") else self.device
            self._model = load_umt5(
                self.weights,
                self.config,
                dtype=self.dtype,
                device=home,
                attn_implementation=self.attn_implementation,
            )
            if self.offload == "swap":
                self._host = [(p, p.data) for p in self._model.parameters()]
        return self._model

    def _on_device(self) -> _Swap:
        return _Swap(self._host if self.offload == "swap" else [], self.device)


class _Swap:
    """Context manager: parameters copied to ``device`` inside, back to their CPU tensors
    after (nothing copied back: the CPU tensors are kept, the device copies dropped)."""

    def __init__(self, host: list[tuple[nn.Parameter, Tensor]], device: torch.device) -> None:
        self.host, self.device = host, device

    def __enter__(self) -> None:
        try:
            for p, cpu in self.host:
                p.data = cpu.to(self.device, non_blocking=True)
        except BaseException:  # e.g. out of memory half way: leave nothing on the device
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        for p, cpu in self.host:
            p.data = cpu
