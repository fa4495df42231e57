"""The vocabulary check: the generator's own prompts pass, other words are named once."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import Tensor

from models.world.palette import COLOURS
from models.world.prompts import (
    BACKGROUND_PHRASES,
    MOTION_PHRASES,
    SPLITS,
    Split,
    heldout_prompts,
    make_prompt,
)
from models.world.scene import SHAPES, sample_scene
from models.world.vocabulary import (
    VocabularyCheckingEncoder,
    known_words,
    unknown_words,
    vocabulary_summary,
)

LOGGER = "models.world.vocabulary"


class _Inner:
    """An encoder that returns a distinct tensor per call and counts calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.text_dim = 8

    def encode(self, prompt: str) -> Tensor:
        self.calls.append(prompt)
        return torch.full((3, self.text_dim), float(len(self.calls)))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generator_prompts_have_no_unknown_words(split: Split, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(300):
        for novel_words in (True, False):
            prompt = make_prompt(sample_scene(rng), split, rng, novel_words=novel_words)
            assert unknown_words(prompt) == [], prompt


def test_heldout_evaluation_prompts_have_no_unknown_words() -> None:
    for e in heldout_prompts(200, seed=3):
        assert unknown_words(e.prompt) == [], e.prompt


def test_out_of_vocabulary_words_are_named_once_in_order() -> None:
    assert unknown_words("a cat on a sofa") == ["cat", "sofa"]
    assert unknown_words("A CAT, on the Sofa!") == ["cat", "sofa"]
    assert unknown_words("a cat chasing a cat") == ["cat", "chasing"]
    words = unknown_words("an orange circle above 3 hexagons")
    assert words == ["orange", "above", "3", "hexagons"]
    assert unknown_words("") == []


def test_case_punctuation_plurals_and_contractions() -> None:
    assert unknown_words("Two red circles, moving LEFT; on a dark-blue backdrop.") == []
    assert unknown_words("squares and triangles on black backgrounds") == []
    assert unknown_words("a white square that doesn't move") == []
    assert unknown_words("one object, a shape") == ["one"]
    assert unknown_words("a red circle that won't move") == ["won't"]
    assert unknown_words("a grey triangle, motionless") == []


def test_known_words_come_from_the_generator_tables() -> None:
    vocab = known_words()
    assert set(COLOURS) <= vocab and set(SHAPES) <= vocab
    for split in SPLITS:
        for phrases in MOTION_PHRASES[split].values():
            for p in phrases:
                assert set(p.ing.split()) <= vocab and set(p.s.split()) <= vocab
        for bgs in BACKGROUND_PHRASES[split].values():
            assert all(set(b.split()) <= vocab for b in bgs)
    assert not {"cat", "sofa", "{o1}", "o1", "bg"} & vocab


def test_summary_lists_the_world_and_a_known_example() -> None:
    summary = vocabulary_summary()
    for word in (*COLOURS, *SHAPES, "left", "still", "dark blue", "gray"):
        assert word in summary, word
    example = summary.split('Example: "')[1].rstrip('".')
    assert example and unknown_words(example) == []
    assert len(summary) < 400  # compact: one log line


def test_wrapper_returns_inner_tensor_and_warns_once_per_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = _Inner()
    encoder = VocabularyCheckingEncoder(inner, name="s1")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        first = encoder.encode("a cat on a sofa")
        second = encoder.encode("a cat on a sofa")
        encoder.encode("a red circle moving left on a black background")
    assert inner.calls == ["a cat on a sofa"] * 2 + [
        "a red circle moving left on a black background"
    ]
    assert torch.equal(first, torch.full((3, 8), 1.0))  # exactly the inner tensor, per call
    assert torch.equal(second, torch.full((3, 8), 2.0))
    (record,) = _warnings(caplog)
    message = record.getMessage()
    assert message.startswith("[s1] ")
    assert "cat, sofa" in message and vocabulary_summary() in message
    assert encoder.text_dim == 8  # other attributes come from the inner encoder


def test_wrapper_returns_the_same_tensor_object() -> None:
    emb = torch.randn(4, 2)

    class Fixed:
        def encode(self, prompt: str) -> Tensor:
            return emb

    assert VocabularyCheckingEncoder(Fixed()).encode("a cat") is emb


def test_memory_is_bounded_and_forgotten_prompts_warn_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    encoder = VocabularyCheckingEncoder(_Inner(), max_prompts=3)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(50):
            encoder.encode(f"a cat number {i}")
        assert len(encoder._warned) == 3
        assert len(_warnings(caplog)) == 50
        encoder.encode("a cat number 49")  # still remembered: silent
        assert len(_warnings(caplog)) == 50
        encoder.encode("a cat number 0")  # forgotten long ago: warns again
        assert len(_warnings(caplog)) == 51
    assert len(encoder._warned) == 3
    with pytest.raises(ValueError, match="max_prompts"):
        VocabularyCheckingEncoder(_Inner(), max_prompts=0)
