"""A scene of the procedural world: what is in the clip and how it moves.

The world exists to train small text-to-video models and to score them
exactly, so a scene holds only what a prompt can name (background, and per
object colour, shape, size, motion) plus the hidden numbers that make a clip
unique (initial position, speed). Everything else follows from these fields:
`trajectory` gives an object's centre at any frame in closed form, so a frame
far into a stream costs the same as the first and streamed and whole-clip
renders agree bit for bit.

Coordinates: x grows to the right, y grows *down* (image rows), so "up" means
decreasing y. Positions are fractions of the frame (x of the width, y of the
height); sizes and speeds are in units of the frame's shorter side
(`min(height, width)`), so objects stay round and move at the same pixel
speed along both axes whatever the aspect ratio.

Motion and bouncing: objects move along one axis at constant speed and
reflect off the frame edges (the whole shape stays inside the frame). A
motion label ("left", ...) is the direction *before the first bounce*. The
sampler makes it unambiguous by starting each moving object far enough from
the edge it moves towards that the first bounce comes no earlier than
BOUNCE_FREE_SECONDS (2 s = 32 frames at 16 fps) into the clip; the detector
reads motion from that window only. Clips for training and scoring should be
at most that long; longer streams are valid and keep bouncing forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.world.palette import BACKGROUNDS, COLOURS, Background, Colour

Shape = Literal["circle", "square", "triangle"]
Motion = Literal["left", "right", "up", "down", "still"]
Size = Literal["small", "large"]
Layout = Literal["random", "canonical"]

SHAPES: tuple[Shape, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[Motion, ...] = ("left", "right", "up", "down", "still")
SIZES: tuple[Size, ...] = ("small", "large")

FPS = 16  # frames per second of the world's clock; speeds are per second
BOUNCE_FREE_SECONDS = 2.0  # sampled scenes never bounce earlier than this
# Half the object's extent (circle radius, half the square's side, half the
# triangle's base and height), as a fraction of min(height, width).
HALF_EXTENT: dict[Size, float] = {"small": 0.10, "large": 0.15}
SPEED_RANGE = (0.12, 0.28)  # frame sides per second, for moving objects
CANONICAL_SPEED = 0.2  # the one speed of the canonical layout
# Anchors of the canonical layout: one object in the middle, two on the diagonal.
CANONICAL_ANCHORS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.5, 0.5),),
    2: ((0.3, 0.3), (0.7, 0.7)),
}
MIN_GAP = 0.05  # frame sides between two objects' boxes in the first frame

DIRECTION: dict[Motion, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}


@dataclass(frozen=True)
class SceneObject:
    """One object. (x0, y0) is its centre at frame 0 as a fraction of the frame."""

    colour: Colour
    shape: Shape
    motion: Motion
    size: Size
    x0: float
    y0: float
    speed: float  # frame sides per second; 0 exactly when motion == "still"

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")
        half = HALF_EXTENT[self.size]
        # Inside on a square frame means inside on every frame: the bounds of
        # the longer axis are only looser.
        for name, v in (("x0", self.x0), ("y0", self.y0)):
            if not half <= v <= 1.0 - half:
                raise ValueError(f"{name}={v} puts a {self.size} object outside the frame")
        if (self.speed == 0.0) != (self.motion == "still") or self.speed < 0.0:
            raise ValueError(f"speed {self.speed} does not fit motion {self.motion!r}")

    @property
    def half_extent(self) -> float:
        return HALF_EXTENT[self.size]

    def first_bounce_seconds(self) -> float:
        """Seconds until the object first touches an edge (on a square frame; later on others)."""
        dx, dy = DIRECTION[self.motion]
        if self.motion == "still":
            return float("inf")
        pos = self.x0 if dx else self.y0
        sign = dx or dy
        room = (1.0 - self.half_extent - pos) if sign > 0 else (pos - self.half_extent)
        return room / self.speed


@dataclass(frozen=True)
class Scene:
    """A background and one or two objects, drawn in order (the second on top).

    Two objects must differ in colour, not only in (colour, shape): the
    prompt is then unambiguous, and the detector can follow each object by
    its colour even while one hides part of the other.
    """

    background: Background
    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}")
        if not 1 <= len(self.objects) <= 2:
            raise ValueError(f"a scene has 1 or 2 objects, got {len(self.objects)}")
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            raise ValueError(f"objects must have distinct colours, got {colours}")


def _reflect(u: npt.NDArray[np.float64], lo: float, hi: float) -> npt.NDArray[np.float64]:
    """Fold an unbounded coordinate into [lo, hi] as a ball bouncing between two walls."""
    span = hi - lo
    if span <= 0.0:
        return np.full_like(u, (lo + hi) / 2)
    s = np.mod(u - lo, 2.0 * span)
    return lo + np.where(s <= span, s, 2.0 * span - s)


def trajectory(
    obj: SceneObject,
    frame_index: npt.NDArray[np.int64],
    height: int,
    width: int,
    fps: float = FPS,
) -> npt.NDArray[np.float64]:
    """Centres in pixels, [N, 2] as (x, y), at the given frame indices.

    Pixel (row i, column j) covers [j, j+1) x [i, i+1). The closed form makes
    frame 10,000 as cheap and as exact as frame 0.
    """
    side = min(height, width)
    half = obj.half_extent * side
    dx, dy = DIRECTION[obj.motion]
    t = np.asarray(frame_index, dtype=np.float64) / fps
    step = obj.speed * side * t
    x = _reflect(obj.x0 * width + dx * step, half, width - half)
    y = _reflect(obj.y0 * height + dy * step, half, height - half)
    return np.stack([x, y], axis=-1)


def _sample_object(rng: np.random.Generator, colour: Colour) -> SceneObject:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    half = HALF_EXTENT[size]
    lo, hi = half, 1.0 - half
    speed = 0.0 if motion == "still" else float(rng.uniform(*SPEED_RANGE))
    travel = speed * BOUNCE_FREE_SECONDS  # room kept free ahead of the object
    dx, dy = DIRECTION[motion]

    def along(sign: int) -> float:
        if sign > 0:
            return float(rng.uniform(lo, hi - travel))
        if sign < 0:
            return float(rng.uniform(lo + travel, hi))
        return float(rng.uniform(lo, hi))

    x0, y0 = along(dx), along(dy)
    return SceneObject(colour, shape, motion, size, x0, y0, speed)


def _canonical_object(
    rng: np.random.Generator, colour: Colour, anchor: tuple[float, float]
) -> SceneObject:
    """An object at its anchor, pushed back to the edge its motion leaves from.

    A prompt then fixes the first frame up to the size (when the prompt leaves
    it out), so the first block a small few-step model samples has nearly one
    right answer instead of an average over positions (a blur).
    """
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    half = HALF_EXTENT[size]
    edge = half + 0.02  # from the wall, so the object is whole in frame 0
    dx, dy = DIRECTION[motion]
    x0 = anchor[0] if dx == 0 else (edge if dx > 0 else 1.0 - edge)
    y0 = anchor[1] if dy == 0 else (edge if dy > 0 else 1.0 - edge)
    speed = 0.0 if motion == "still" else CANONICAL_SPEED
    return SceneObject(colour, shape, motion, size, x0, y0, speed)


def _apart(a: SceneObject, b: SceneObject) -> bool:
    """True when the two objects' boxes are at least MIN_GAP apart along some axis."""
    reach = a.half_extent + b.half_extent + MIN_GAP
    return abs(a.x0 - b.x0) >= reach or abs(a.y0 - b.y0) >= reach


def sample_scene(
    rng: np.random.Generator, n_objects: int | None = None, layout: Layout = "random"
) -> Scene:
    """A random scene; deterministic for the generator's state.

    One or two objects (even odds unless `n_objects` is given), colours
    without repeats, and the two objects apart in the first frame so that a
    prompt's objects are all visible at the start.

    Layout "random" draws positions and speeds; "canonical" puts objects at
    fixed anchors and one speed (see `_canonical_object`), which is what the
    embedded generator trains on. Two canonical objects that would touch in
    frame 0 (one leaving from the edge next to the other) swap anchors, and
    keep random positions if they still touch.
    """
    if n_objects is None:
        n_objects = 1 + int(rng.integers(2))
    if n_objects not in (1, 2):
        raise ValueError(f"n_objects must be 1 or 2, got {n_objects}")
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    colours = rng.choice(len(COLOURS), size=n_objects, replace=False)
    if layout == "canonical":
        pair = [COLOURS[int(c)] for c in colours]
        anchors = CANONICAL_ANCHORS[n_objects]
        state = rng.bit_generator.state
        objects = tuple(_canonical_object(rng, c, a) for c, a in zip(pair, anchors, strict=True))
        if n_objects == 1 or _apart(*objects):
            return Scene(background, objects)
        rng.bit_generator.state = state  # same shapes and motions, anchors swapped
        objects = tuple(
            _canonical_object(rng, c, a) for c, a in zip(pair, anchors[::-1], strict=True)
        )
        if _apart(*objects):
            return Scene(background, objects)
    elif layout != "random":
        raise ValueError(f"layout must be 'random' or 'canonical', got {layout!r}")
    first = _sample_object(rng, COLOURS[int(colours[0])])
    if n_objects == 1:
        return Scene(background, (first,))
    while True:  # rejection sampling; about 3 tries on average
        second = _sample_object(rng, COLOURS[int(colours[1])])
        if _apart(first, second):
            return Scene(background, (first, second))


def scene_for_seed(seed: int, n_objects: int | None = None) -> Scene:
    """The scene of a seed: `sample_scene(np.random.default_rng(seed))`."""
    return sample_scene(np.random.default_rng(seed), n_objects)
