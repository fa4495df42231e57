"""Plain-English prompts for scenes, with phrasings held out from training.

A prompt is built in two levels: an object phrase per object ("a small red
circle drifting to the left") and a sentence template that places the object
phrases and the background ("{o1} on {bg}"). Each level's templates, and the
synonyms for motions and backgrounds, are split into a train set and a
held-out set:

- "train" prompts use only train templates and train synonyms.
- "heldout" prompts use only held-out sentence and object templates (so no
  held-out prompt can equal a train prompt), with synonyms from both sets:
  a held-out prompt can also use words a model never saw in training
  ("navy", "grey", "backdrop", "leftward", "motionless"). Pass
  `novel_words=False` to keep the vocabulary of training and test new
  sentence structure only.

Colour and shape words have no synonyms: they are exactly the palette and
shape names, so a prompt always names them literally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.world.palette import Background
from models.world.scene import Motion, Scene, SceneObject, Size, sample_scene

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class Phrase:
    """A motion phrase in the two verb forms templates need."""

    ing: str  # "drifting upward": follows a noun ("a red circle drifting upward")
    s: str  # "drifts upward": follows "that" / "which"


def _p(ing: str, s: str) -> Phrase:
    return Phrase(ing, s)


MOTION_PHRASES: dict[Split, dict[Motion, tuple[Phrase, ...]]] = {
    "train": {
        "left": (
            _p("moving left", "moves left"),
            _p("heading left", "heads left"),
            _p("drifting to the left", "drifts to the left"),
        ),
        "right": (
            _p("moving right", "moves right"),
            _p("heading right", "heads right"),
            _p("drifting to the right", "drifts to the right"),
        ),
        "up": (
            _p("moving up", "moves up"),
            _p("drifting upward", "drifts upward"),
            _p("rising", "rises"),
        ),
        "down": (
            _p("moving down", "moves down"),
            _p("drifting downward", "drifts downward"),
            _p("falling", "falls"),
        ),
        "still": (
            _p("standing still", "stands still"),
            _p("staying still", "stays still"),
            _p("not moving", "does not move"),
        ),
    },
    "heldout": {
        "left": (_p("sliding leftward", "slides leftward"), _p("gliding left", "glides left")),
        "right": (
            _p("sliding rightward", "slides rightward"),
            _p("gliding right", "glides right"),
        ),
        "up": (_p("floating upward", "floats upward"), _p("climbing up", "climbs up")),
        "down": (_p("sinking downward", "sinks downward"), _p("sliding down", "slides down")),
        "still": (_p("motionless", "is motionless"), _p("stationary", "stays stationary")),
    },
}

BACKGROUND_PHRASES: dict[Split, dict[Background, tuple[str, ...]]] = {
    "train": {
        "black": ("a black background", "a plain black background"),
        "gray": ("a gray background", "a plain gray background"),
        "dark blue": ("a dark blue background", "a plain dark blue background"),
    },
    "heldout": {
        "black": ("a black backdrop", "a jet black background"),
        "gray": ("a grey background", "a grey backdrop"),
        "dark blue": ("a navy background", "a navy blue backdrop"),
    },
}

SIZE_WORDS: dict[Size, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}

# Object phrases. {size} {colour} {shape} are the object's words, {ing} / {s}
# the motion phrase in either verb form. No size or colour word starts with a
# vowel, so the article is always "a".
OBJECT_TEMPLATES: dict[Split, tuple[str, ...]] = {
    "train": ("a {colour} {shape} {ing}", "a {size} {colour} {shape} {ing}"),
    "heldout": ("a {colour} {shape} that {s}", "a {size} {colour} {shape} which {s}"),
}

# Sentences. {o1} {o2} are object phrases, {bg} the background phrase and
# {Bg} the same phrase capitalised.
SCENE_TEMPLATES: dict[Split, dict[int, tuple[str, ...]]] = {
    "train": {
        1: ("{o1} on {bg}", "on {bg}, {o1}", "{o1}, in front of {bg}"),
        2: (
            "two objects on {bg}: {o1} and {o2}",
            "{o1} and {o2} on {bg}",
            "on {bg}, {o1} and {o2}",
        ),
    },
    "heldout": {
        1: ("{o1} against {bg}", "{Bg} with {o1}", "a video of {o1} over {bg}"),
        2: (
            "{o1} alongside {o2}, against {bg}",
            "{Bg} with {o1} and {o2}",
            "a video of two shapes over {bg}: {o1}, plus {o2}",
        ),
    },
}

SPLITS: tuple[Split, ...] = ("train", "heldout")


def _pick(rng: np.random.Generator, options: tuple[str, ...] | tuple[Phrase, ...]) -> int:
    return int(rng.integers(len(options)))


def _vocabulary(split: Split, novel_words: bool) -> tuple[Split, ...]:
    """Which synonym sets a split may draw from."""
    return ("train", "heldout") if split == "heldout" and novel_words else ("train",)


def _object_phrase(
    obj: SceneObject, split: Split, rng: np.random.Generator, novel_words: bool
) -> str:
    template = OBJECT_TEMPLATES[split][_pick(rng, OBJECT_TEMPLATES[split])]
    phrases = tuple(
        p for v in _vocabulary(split, novel_words) for p in MOTION_PHRASES[v][obj.motion]
    )
    phrase = phrases[_pick(rng, phrases)]
    size = SIZE_WORDS[obj.size][_pick(rng, SIZE_WORDS[obj.size])]
    return template.format(
        size=size, colour=obj.colour, shape=obj.shape, ing=phrase.ing, s=phrase.s
    )


def make_prompt(
    scene: Scene, split: Split, rng: np.random.Generator, *, novel_words: bool = True
) -> str:
    """One prompt for a scene, phrased from the given split's templates."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    objects = [_object_phrase(o, split, rng, novel_words) for o in scene.objects]
    backgrounds = tuple(
        b for v in _vocabulary(split, novel_words) for b in BACKGROUND_PHRASES[v][scene.background]
    )
    bg = backgrounds[_pick(rng, backgrounds)]
    templates = SCENE_TEMPLATES[split][len(scene.objects)]
    template = templates[_pick(rng, templates)]
    slots = {f"o{i + 1}": phrase for i, phrase in enumerate(objects)}
    return template.format(bg=bg, Bg=bg[0].upper() + bg[1:], **slots)


@dataclass(frozen=True)
class EvalPrompt:
    """A held-out prompt and the scene it describes (render it for ground truth)."""

    prompt: str
    scene: Scene


def heldout_prompts(
    count: int = 64, seed: int = 0, *, novel_words: bool = True
) -> list[EvalPrompt]:
    """A fixed list of held-out evaluation prompts, the same for the same arguments.

    Scenes and phrasings come from one generator seeded with `seed`;
    duplicates of an earlier prompt are skipped, so every prompt is distinct.
    """
    rng = np.random.default_rng(seed)
    out: list[EvalPrompt] = []
    seen: set[str] = set()
    while len(out) < count:
        scene = sample_scene(rng)
        prompt = make_prompt(scene, "heldout", rng, novel_words=novel_words)
        if prompt not in seen:
            seen.add(prompt)
            out.append(EvalPrompt(prompt, scene))
    return out
