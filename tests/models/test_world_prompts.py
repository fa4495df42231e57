"""Prompts: every prompt names its scene, and held-out phrasings never appear in training."""

from __future__ import annotations

import re

import numpy as np
import pytest

from models.world.palette import COLOURS
from models.world.prompts import (
    BACKGROUND_PHRASES,
    MOTION_PHRASES,
    OBJECT_TEMPLATES,
    SCENE_TEMPLATES,
    heldout_prompts,
    make_prompt,
)
from models.world.scene import MOTIONS, Scene, scene_for_seed

# What a reader (or a future prompt parser) keys on for each label.
MOTION_WORDS = {
    "left": r"\bleft(ward)?\b",
    "right": r"\bright(ward)?\b",
    "up": r"\bup(ward)?\b|\brising\b|\brises\b",
    "down": r"\bdown(ward)?\b|\bfalling\b|\bfalls\b",
    "still": r"\bstill\b|\bnot mov|\bmotionless\b|\bstationary\b|\bdoes not move\b",
}
BACKGROUND_WORDS = {
    "black": r"\bblack\b",
    "gray": r"\bgr[ae]y\b",
    "dark blue": r"\bdark blue\b|\bnavy\b",
}


def _train_prompts(n: int) -> list[tuple[Scene, str]]:
    rng = np.random.default_rng(123)
    return [(sc, make_prompt(sc, "train", rng)) for sc in (scene_for_seed(s) for s in range(n))]


def _novel_phrases() -> list[str]:
    """Synonyms that only held-out prompts may use."""
    held = [p for m in MOTIONS for p in MOTION_PHRASES["heldout"][m]]
    return (
        [p.s for p in held]
        + [p.ing for p in held]
        + [b for bs in BACKGROUND_PHRASES["heldout"].values() for b in bs]
    )


def _uses_novel_words(prompt: str) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", prompt) for w in _novel_phrases())


def test_template_and_synonym_splits_are_disjoint() -> None:
    assert not set(OBJECT_TEMPLATES["train"]) & set(OBJECT_TEMPLATES["heldout"])
    for n in (1, 2):
        assert not set(SCENE_TEMPLATES["train"][n]) & set(SCENE_TEMPLATES["heldout"][n])
    for motion in MOTIONS:
        train = {p.ing for p in MOTION_PHRASES["train"][motion]}
        held = {p.ing for p in MOTION_PHRASES["heldout"][motion]}
        assert not train & held
    for bg, phrases in BACKGROUND_PHRASES["train"].items():
        assert not set(phrases) & set(BACKGROUND_PHRASES["heldout"][bg])


def test_heldout_prompts_never_occur_in_training() -> None:
    train = _train_prompts(3000)
    train_text = {p for _, p in train}
    held = heldout_prompts(200)
    assert not train_text & {e.prompt for e in held}
    for _, prompt in train:
        assert not _uses_novel_words(prompt), prompt
        assert "backdrop" not in prompt and "navy" not in prompt and "grey" not in prompt


def test_heldout_list_is_fixed_distinct_and_large_enough() -> None:
    a, b = heldout_prompts(), heldout_prompts()
    assert len(a) >= 50
    assert [e.prompt for e in a] == [e.prompt for e in b]
    assert [e.scene for e in a] == [e.scene for e in b]
    assert len({e.prompt for e in a}) == len(a)
    assert {len(e.scene.objects) for e in a} == {1, 2}
    assert any(_uses_novel_words(e.prompt) for e in a)
    assert not any(_uses_novel_words(e.prompt) for e in heldout_prompts(novel_words=False))


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_prompts_name_every_attribute(split: str) -> None:
    rng = np.random.default_rng(7)
    for seed in range(1500):
        scene = scene_for_seed(seed)
        prompt = make_prompt(scene, split, rng)  # type: ignore[arg-type]
        assert re.search(BACKGROUND_WORDS[scene.background], prompt), prompt
        others = [b for b in BACKGROUND_WORDS if b != scene.background]
        assert not any(re.search(BACKGROUND_WORDS[b], prompt) for b in others), prompt
        # Colour words name exactly the objects (the "blue" of a background aside).
        bare = re.sub(r"\b(dark|navy) blue\b", "", prompt)
        named = {c for c in COLOURS if re.search(rf"\b{c}\b", bare)}
        assert named == {o.colour for o in scene.objects}, prompt
        for obj in scene.objects:
            assert re.search(rf"\b{obj.colour} {obj.shape}\b", prompt), prompt
        motions = {m for m in MOTIONS if re.search(MOTION_WORDS[m], prompt)}
        assert motions == {o.motion for o in scene.objects}, prompt


def test_make_prompt_is_deterministic_and_checks_its_split() -> None:
    scene = scene_for_seed(1)
    a = make_prompt(scene, "train", np.random.default_rng(5))
    assert a == make_prompt(scene, "train", np.random.default_rng(5))
    with pytest.raises(ValueError, match="split"):
        make_prompt(scene, "test", np.random.default_rng(0))  # type: ignore[arg-type]
