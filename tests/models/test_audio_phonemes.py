"""espeak-ng phonemes for Piper: the two backends agree, and ids have Piper's layout."""

from __future__ import annotations

import pytest

from models.audio.phonemes import Clause, EspeakPhonemizer, _terminator, phoneme_ids

# Texts whose phonemes both espeak-ng builds spell the same (see the module docstring).
CORPUS = [
    "Hello there, how are you today? I am fine: thanks! Dr. Smith paid $5.50 on 3/4.",
    "It's 10:30; we leave at noon... maybe",
    "Wait - what?! No way.",
    'He said "stop." Then he left.',
    "Numbers: 1, 2, 3; letters (a, b, c)!",
    "One.Two.Three",
    "Mr. and Mrs. Jones live at 221B Baker St. in London, UK.",
    "Caf\u00e9 d\u00e9j\u00e0 vu, na\u00efve r\u00e9sum\u00e9\u2026 and so on",
    "?!",
    "",
]


@pytest.fixture(scope="module")
def piper() -> EspeakPhonemizer:
    return EspeakPhonemizer(backend="piper")


@pytest.fixture(scope="module")
def library() -> EspeakPhonemizer:
    return EspeakPhonemizer(backend="espeak-ng")


@pytest.mark.parametrize("text", CORPUS)
def test_library_backend_matches_pipers_bridge(
    text: str, piper: EspeakPhonemizer, library: EspeakPhonemizer
) -> None:
    assert library.clauses(text) == piper.clauses(text)
    assert library.sentences(text) == piper.sentences(text)


def test_sentences_keep_punctuation_and_split_at_sentence_ends(
    library: EspeakPhonemizer,
) -> None:
    sentences = library.sentences("Hello there, friend. How are you?")
    assert len(sentences) == 2
    first = "".join(sentences[0])
    assert first.endswith(".") and ", " in first
    assert "".join(sentences[1]).endswith("?")


def test_ids_follow_pipers_layout() -> None:
    id_map = {"^": [1], "_": [0], "$": [2], "a": [14], "b": [15]}
    assert phoneme_ids(["a", "?", "b"], id_map) == [1, 0, 14, 0, 15, 0, 2]  # "?" unknown: skipped


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there, ", (",", False)),
        ("today? ", ("?", True)),
        ('he said "stop." ', (".", True)),
        ("what?! ", ("?", True)),
        ("noon... ", ("", False)),
        ("no mark ", ("", False)),
    ],
)
def test_terminator_read_from_clause_text(text: str, expected: tuple[str, bool]) -> None:
    assert _terminator(text) == expected


def test_unknown_voice_is_named(library: EspeakPhonemizer) -> None:
    bad = EspeakPhonemizer("no-such-voice", backend="espeak-ng")
    with pytest.raises(ValueError, match="no-such-voice"):
        bad.clauses("hello")
    assert library.clauses("hello") == [Clause("h\u0259l\u02c8o\u028a", "", True)]
