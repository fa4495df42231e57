"""PhraseChunker: text in pieces -> phrases released at the first safe boundary."""

from __future__ import annotations

import pytest

from models.audio.chunker import ChunkerConfig, PhraseChunker


def feed(text: str, piece: int = 3, config: ChunkerConfig | None = None) -> tuple[list[str], str]:
    """Push ``text`` a few characters at a time (as an LLM streams); phrases and what is held."""
    chunker = PhraseChunker(config)
    out: list[str] = []
    for i in range(0, len(text), piece):
        out += chunker.push(text[i : i + piece])
    return out, chunker.pending


def test_releases_at_clause_boundaries_before_the_sentence_ends() -> None:
    phrases, held = feed("Hello there, how are you today? I am fine")
    assert phrases == ["Hello there,", "how are you today?"]
    assert held == "I am fine"


def test_waits_for_the_space_after_a_mark() -> None:
    chunker = PhraseChunker()
    assert chunker.push("It costs 5.") == []  # may become 5.50
    assert chunker.push("50 dollars, or so. ") == ["It costs 5.50 dollars,", "or so."]


def test_short_clause_waits_for_more_words() -> None:
    phrases, held = feed("Well, I think so. Yes.")
    assert phrases == ["Well, I think so."]
    assert held == "Yes."


def test_abbreviations_and_initials_do_not_split() -> None:
    phrases, _ = feed("Dr. Smith met J. R. Jones at noon. Then they left. ")
    assert phrases == ["Dr. Smith met J. R. Jones at noon.", "Then they left."]


def test_run_on_text_is_cut_after_max_words() -> None:
    words = " ".join(f"word{i}" for i in range(30))
    phrases, held = feed(words + " ", config=ChunkerConfig(min_words=2, max_words=8))
    assert [len(p.split()) for p in phrases] == [8, 8, 8]
    assert len(held.split()) == 6


def test_flush_releases_the_rest_and_blank_text_gives_nothing() -> None:
    chunker = PhraseChunker()
    assert chunker.push("no punctuation yet") == []
    assert chunker.flush() == ["no punctuation yet"]
    assert chunker.flush() == []
    assert chunker.push("   ") == [] and chunker.flush() == []


def test_newline_and_dash_are_boundaries() -> None:
    phrases, _ = feed("First line here\nand a pause - then more words. ")
    assert phrases == ["First line here", "and a pause -", "then more words."]


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="min_words"):
        ChunkerConfig(min_words=5, max_words=3)
