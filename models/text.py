"""Prompt encoders with the engine's PromptEncoder contract.

- HashingPromptEncoder: a deterministic bag of word vectors, for tiny presets
  with random weights until the sentence-encoder conditioning lands. It keys
  on words, not meaning: label output made with it as such.
- PrecomputedPromptEncoder: embeddings computed elsewhere (UMT5-XXL for the
  public Wan checkpoints cannot run here), loaded from a tensor file.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import Tensor

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
