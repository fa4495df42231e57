"""What the embedded `world` model can be asked for, and a prompt check that says so.

The `world` model learned from prompts made by `models.world.prompts` only, so
a word outside those prompts ("cat", "sofa") conditions it on nothing it was
trained to draw. The known vocabulary is read from that module's own tables
(motion, background and size phrases, object and sentence templates, both
splits) plus the colour and shape names the templates fill in, so it follows
any change to the generator. Held-out synonyms ("navy", "backdrop",
"leftward") count as known: the project's held-out evaluation prompts use
them (docs/models/world.md), and they name attributes the world has.

Words are compared lowercased, split at anything that is not a letter or a
digit; "circles" is known through "circle", "object" through "objects",
"doesn't" through "does not", and the articles "an" / "the" are never
reported (they name nothing).

    from models.world.vocabulary import VocabularyCheckingEncoder, unknown_words

    unknown_words("A cat on a sofa!")                   # ["cat", "sofa"]
    encoder = VocabularyCheckingEncoder(SentenceEncoder(), name="session-1")
    emb = encoder.encode("a cat on a sofa")             # one WARNING, then the inner tensor
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from torch import Tensor

from engine.protocols import PromptEncoder
from models.world.palette import COLOURS
from models.world.prompts import (
    BACKGROUND_PHRASES,
    MOTION_PHRASES,
    OBJECT_TEMPLATES,
    SCENE_TEMPLATES,
    SIZE_WORDS,
    SPLITS,
    make_prompt,
)
from models.world.scene import SHAPES, scene_for_seed

log = logging.getLogger(__name__)

# A token: letters and digits (any script), with one inner apostrophe kept ("doesn't").
_TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")
_SLOT = re.compile(r"\{\w+\}")  # a template's placeholder, "{o1}", "{bg}"
# Articles the templates never happen to use ("a" only: no colour or size starts
# with a vowel). They name no attribute of a scene, so they are never reported.
_ARTICLES = frozenset({"a", "an", "the"})
_MIN_PLURAL_STEM = 3  # "circles" -> "circle", but never "as" -> "a"


def _words(text: str) -> list[str]:
    return [w.replace("’", "'") for w in _TOKEN.findall(text.lower())]


@functools.lru_cache(maxsize=1)
def known_words() -> frozenset[str]:
    """Every word some prompt of `models.world.prompts` (either split) can contain, lowercased."""
    texts: list[str] = [*COLOURS, *SHAPES]
    texts += [w for words in SIZE_WORDS.values() for w in words]
    for split in SPLITS:
        for phrases in MOTION_PHRASES[split].values():
            texts += [t for p in phrases for t in (p.ing, p.s)]
        texts += [b for bs in BACKGROUND_PHRASES[split].values() for b in bs]
        texts += [_SLOT.sub(" ", t) for t in OBJECT_TEMPLATES[split]]
        texts += [_SLOT.sub(" ", t) for ts in SCENE_TEMPLATES[split].values() for t in ts]
    return frozenset(w for t in texts for w in _words(t)) | _ARTICLES


def _parts(token: str) -> list[str]:
    """The words a token stands for: "doesn't" -> ["does", "not"], "cat's" -> ["cat"]."""
    if token.endswith("n't"):
        return [token[:-3], "not"]
    if token.endswith("'s"):
        return [token[:-2]]
    return token.split("'")


def _is_known(word: str, vocab: frozenset[str]) -> bool:
    if word in vocab or word + "s" in vocab:  # "object" from the templates' "objects"
        return True
    # Plurals: "circles", "squares", "backgrounds", "boxes" (unknown either way).
    for suffix in ("s", "es"):
        stem = word[: -len(suffix)]
        if word.endswith(suffix) and len(stem) >= _MIN_PLURAL_STEM and stem in vocab:
            return True
    return False


def unknown_words(prompt: str) -> list[str]:
    """The words of `prompt` the `world` model never saw, lowercased, once each, in order.

    `unknown_words("Two cats on a red sofa")` is `["cats", "sofa"]`; a prompt
    made by `models.world.prompts.make_prompt` always gives `[]`.
    """
    vocab = known_words()
    out: list[str] = []
    for token in _words(prompt):
        if token not in out and not all(_is_known(p, vocab) for p in _parts(token) if p):
            out.append(token)
    return out


@functools.lru_cache(maxsize=1)
def vocabulary_summary() -> str:
    """One paragraph: the colours, shapes, sizes, motions, backgrounds and object counts
    the `world` model was trained on, and one prompt its training set could contain."""
    example = make_prompt(scene_for_seed(0, n_objects=1), "train", np.random.default_rng(0))
    counts = sorted(SCENE_TEMPLATES["train"])
    return (
        "The embedded model `world` only knows scenes of "
        f"{' or '.join(str(n) for n in counts)} coloured shapes: "
        f"colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; "
        f"sizes {', '.join(SIZE_WORDS)}; motions {', '.join(MOTION_PHRASES['train'])}; "
        f"backgrounds {', '.join(BACKGROUND_PHRASES['train'])}. "
        f'Example: "{example}".'
    )


class VocabularyCheckingEncoder:
    """A PromptEncoder that warns about words the `world` model does not know.

    `encode` returns the inner encoder's tensor unchanged (the stream goes on
    either way); the first time a prompt with unknown words is seen, it logs
    one WARNING naming them, with `vocabulary_summary()`. It remembers the
    last `max_prompts` such prompts (least recently seen forgotten first), so
    memory stays bounded and a prompt forgotten that way warns again. Other
    attributes (`text_dim`, ...) are read from the inner encoder. Safe to call
    from several threads.

        encoder = VocabularyCheckingEncoder(SentenceEncoder(), name="session-1")
        encoder.encode("a cat on a sofa")   # WARNING [session-1] ... cat, sofa ...
        encoder.encode("a cat on a sofa")   # silent
    """

    def __init__(
        self, inner: PromptEncoder, *, max_prompts: int = 256, name: str = "world"
    ) -> None:
        if max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
        self.inner = inner
        self.max_prompts = max_prompts
        self.name = name  # the log prefix, e.g. the session id
        self._warned: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, prompt: str) -> list[str]:
        """The prompt's unknown words; logs the warning if this prompt has not been warned about."""
        unknown = unknown_words(prompt)
        if not unknown:
            return unknown
        with self._lock:
            if prompt in self._warned:
                self._warned.move_to_end(prompt)
                return unknown
            self._warned[prompt] = None
            if len(self._warned) > self.max_prompts:
                self._warned.popitem(last=False)
        log.warning(
            "[%s] prompt %r has words the embedded model does not know: %s; "
            "the video may not follow them. %s",
            self.name,
            prompt,
            ", ".join(unknown),
            vocabulary_summary(),
        )
        return unknown

    def encode(self, prompt: str) -> Tensor:
        """The inner encoder's [T, text_dim] embeddings for `prompt`, after the check."""
        self.check(prompt)
        return self.inner.encode(prompt)

    def __getattr__(self, attr: str) -> Any:
        # Only called for attributes the wrapper lacks; "inner" guards against recursion
        # before __init__ has set it (copy, pickle).
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)
