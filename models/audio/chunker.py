"""Text arriving in pieces (as a language model streams it) -> phrases to speak now.

Waiting for the end of a sentence costs seconds of silence before a voice
agent answers; speaking each piece as it comes breaks words and prosody. A
phrase is released at the first safe boundary instead:

- punctuation that ends a clause (``, ; : . ? !`` and dashes) followed by
  whitespace, once the phrase has ``min_words`` words (so "Well," waits for
  more), except after abbreviations ("Dr.", "e.g.") and single initials;
- a newline;
- ``max_words`` words without any punctuation (a run-on list), cut at the last
  word boundary, so latency stays bounded whatever the text;
- ``flush()`` (the text ended, or the speaker was interrupted).

A boundary needs the whitespace after the mark, since "5." may become "5.5".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc prof mt ft no e.g i.e a.m p.m approx dept est fig inc ltd".split()
)
_BOUNDARY = re.compile(r"([,;:.?!\u2026]+[\"')\]\u201d\u2019]*|\s[-\u2013\u2014]+)(?=\s)|\n")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class ChunkerConfig:
    min_words: int = 2  # a clause shorter than this waits for the next one
    max_words: int = 12  # cut a phrase without punctuation after this many words

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(
                f"need 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}"
            )


class PhraseChunker:
    """Usage::

    chunker = PhraseChunker()
    for piece in llm_tokens:
        for phrase in chunker.push(piece):
            speak(phrase)
    for phrase in chunker.flush():
        speak(phrase)
    """

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        self.config = config or ChunkerConfig()
        self._buffer = ""

    @property
    def pending(self) -> str:
        """Text received and not yet released."""
        return self._buffer

    def reset(self) -> None:
        self._buffer = ""

    def push(self, text: str) -> list[str]:
        """Add a piece of text; the phrases it completes, in order."""
        self._buffer += text
        phrases: list[str] = []
        while (phrase := self._next_phrase()) is not None:
            phrases.append(phrase)
        return phrases

    def flush(self) -> list[str]:
        """Everything still held, as one last phrase (none if it is blank)."""
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []

    def _next_phrase(self) -> str | None:
        c = self.config
        for match in _BOUNDARY.finditer(self._buffer):
            end = match.end()
            head = self._buffer[:end]
            words = _WORD.findall(head)
            if not words:
                continue
            if match.group(0) != "\n" and len(words) < c.min_words:
                continue
            if head.rstrip().endswith(".") and _is_abbreviation(words[-1]):
                continue
            return self._take(end)
        words = list(_WORD.finditer(self._buffer))
        # the last word may still be growing; a cut needs max_words complete ones after it
        if len(words) > c.max_words:
            return self._take(words[c.max_words - 1].end())
        return None

    def _take(self, end: int) -> str | None:
        phrase, self._buffer = self._buffer[:end].strip(), self._buffer[end:].lstrip()
        return phrase or None


def _is_abbreviation(word: str) -> bool:
    """'Dr.', 'e.g.', 'J.' (an initial): a period that does not end the clause."""
    bare = word.rstrip(".").strip("\"'(").lower()
    return bare in ABBREVIATIONS or (len(bare) == 1 and bare.isalpha())
