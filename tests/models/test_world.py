"""The procedural world: scenes, bouncing, and the renderer (whole clips versus streaming)."""

from __future__ import annotations

import numpy as np
import pytest

from models.world.palette import BACKGROUND_RGB, BACKGROUNDS, COLOURS, OBJECT_RGB
from models.world.render import WorldStream, render_clip
from models.world.scene import (
    BOUNCE_FREE_SECONDS,
    DIRECTION,
    FPS,
    HALF_EXTENT,
    MOTIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    sample_scene,
    scene_for_seed,
    trajectory,
)


def _obj(**kw: object) -> SceneObject:
    fields: dict[str, object] = dict(
        colour="red", shape="circle", motion="left", size="small", x0=0.5, y0=0.5, speed=0.2
    )
    fields.update(kw)
    return SceneObject(**fields)  # type: ignore[arg-type]


def test_scene_validation() -> None:
    with pytest.raises(ValueError, match="distinct colours"):
        Scene("black", (_obj(), _obj(shape="square")))
    with pytest.raises(ValueError, match="1 or 2"):
        Scene("black", ())
    with pytest.raises(ValueError, match="speed"):
        _obj(motion="still", speed=0.2)
    with pytest.raises(ValueError, match="speed"):
        _obj(motion="up", speed=0.0)
    with pytest.raises(ValueError, match="outside"):
        _obj(size="large", x0=0.1)
    with pytest.raises(ValueError, match="colour"):
        _obj(colour="orange")
    with pytest.raises(ValueError, match="background"):
        Scene("white", (_obj(),))  # type: ignore[arg-type]


def test_sampler_is_deterministic_and_covers_the_vocabulary() -> None:
    assert scene_for_seed(3) == scene_for_seed(3)
    assert scene_for_seed(3) != scene_for_seed(4)
    scenes = [scene_for_seed(s) for s in range(400)]
    objects = [o for sc in scenes for o in sc.objects]
    assert {sc.background for sc in scenes} == set(BACKGROUNDS)
    assert {len(sc.objects) for sc in scenes} == {1, 2}
    assert {o.colour for o in objects} == set(COLOURS)
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.motion for o in objects} == set(MOTIONS)
    assert {o.size for o in objects} == set(SIZES)
    assert len(sample_scene(np.random.default_rng(0), n_objects=2).objects) == 2


def test_no_bounce_before_the_motion_window() -> None:
    """A motion label is the direction before the first bounce; sampled scenes keep it >= 2 s."""
    window = np.arange(int(BOUNCE_FREE_SECONDS * FPS) + 1)
    for seed in range(1000):
        for obj in scene_for_seed(seed).objects:
            assert obj.first_bounce_seconds() >= BOUNCE_FREE_SECONDS - 1e-9
            xy = trajectory(obj, window, 64, 64)
            dx, dy = DIRECTION[obj.motion]
            step = np.diff(xy, axis=0)
            assert np.allclose(step[:, 0] * dx, obj.speed * 64 / FPS * abs(dx))
            assert np.allclose(step[:, 1] * dy, obj.speed * 64 / FPS * abs(dy))
            assert np.allclose(xy[0], (obj.x0 * 64, obj.y0 * 64))


@pytest.mark.parametrize(("height", "width"), [(128, 128), (48, 80)])
def test_bouncing_keeps_objects_inside_for_10000_frames(height: int, width: int) -> None:
    frames = np.arange(10_000)
    side = min(height, width)
    reversals = 0
    for seed in range(200):
        for obj in scene_for_seed(seed).objects:
            x, y = trajectory(obj, frames, height, width).T
            half = obj.half_extent * side
            assert (x >= half - 1e-9).all() and (x <= width - half + 1e-9).all()
            assert (y >= half - 1e-9).all() and (y <= height - half + 1e-9).all()
            moving = np.diff(x if DIRECTION[obj.motion][0] else y)
            reversals += int((np.sign(moving[1:]) != np.sign(moving[:-1])).sum())
    assert reversals > 10_000  # the objects really do bounce, many times


def test_rendered_objects_are_never_clipped_in_a_long_stream() -> None:
    """10,000 rendered frames (32x32, fast): a bouncing object's pixel count never drops."""
    for shape in SHAPES:
        obj = _obj(shape=shape, size="large", motion="right", x0=0.2, speed=0.28)
        stream = WorldStream(Scene("black", (obj,)), height=32, width=32)
        counts = np.concatenate(
            [(stream.next_frames(2000).max(-1) > 0).sum((1, 2)) for _ in range(5)]
        )
        assert stream.frame_index == 10_000
        assert counts.min() >= 0.85 * counts.max(), shape


def test_render_is_deterministic_per_seed() -> None:
    a = render_clip(scene_for_seed(11), 12, 64, 64)
    b = render_clip(scene_for_seed(11), 12, 64, 64)
    c = render_clip(scene_for_seed(12), 12, 64, 64)
    assert a.dtype == np.uint8 and a.shape == (12, 64, 64, 3)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_render_uses_exact_palette_colours() -> None:
    for seed in range(30):
        scene = scene_for_seed(seed)
        clip = render_clip(scene, 4, 64, 64)
        allowed = {BACKGROUND_RGB[scene.background]} | {OBJECT_RGB[o.colour] for o in scene.objects}
        seen = {tuple(int(v) for v in p) for p in np.unique(clip.reshape(-1, 3), axis=0)}
        assert seen == allowed, seed  # every object visible in the first frames, nothing else


def test_objects_are_apart_in_the_first_frame() -> None:
    for seed in range(300):
        scene = sample_scene(np.random.default_rng(seed), n_objects=2)
        together = render_clip(scene, 1, 64, 64)[0]
        for obj in scene.objects:
            alone = render_clip(Scene(scene.background, (obj,)), 1, 64, 64)[0]
            rgb = OBJECT_RGB[obj.colour]
            assert ((together == rgb).all(-1) == (alone == rgb).all(-1)).all(), seed


@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80)])
def test_stream_equals_render_clip(height: int, width: int) -> None:
    scene = scene_for_seed(5, n_objects=2)
    whole = render_clip(scene, 64, height, width)
    stream = WorldStream(scene, height, width)
    parts = [stream.next_frames(n) for n in (1, 7, 0, 16, 40)]
    assert np.array_equal(np.concatenate(parts), whole)
    stream.reset()
    assert np.array_equal(stream.next_frames(5), whole[:5])


def test_shapes_have_their_documented_geometry() -> None:
    """Circle radius r, square side 2r, triangle base and height 2r, pointing up."""
    for shape, area in (("circle", np.pi), ("square", 4.0), ("triangle", 2.0)):
        obj = _obj(shape=shape, size="large", motion="still", speed=0.0)
        frame = render_clip(Scene("black", (obj,)), 1, 256, 256)[0]
        mask = frame.any(-1)
        r = HALF_EXTENT["large"] * 256
        assert abs(mask.sum() / (area * r * r) - 1) < 0.03, shape
        rows = np.flatnonzero(mask.any(1))
        widths = mask.sum(1)[rows]
        if shape == "triangle":
            assert widths[0] < widths[-1] / 10  # apex on top


def test_canonical_layout_fixes_first_frame_per_prompt() -> None:
    """Canonical scenes with the same words put objects at the same place at the same speed."""
    from models.world.scene import CANONICAL_SPEED, sample_scene

    rng = np.random.default_rng(3)
    seen: dict[tuple[object, ...], tuple[float, float, float]] = {}
    for _ in range(400):
        scene = sample_scene(rng, n_objects=1, layout="canonical")
        (o,) = scene.objects
        key = (o.shape, o.motion, o.size)
        where = (o.x0, o.y0, o.speed)
        assert seen.setdefault(key, where) == where
        assert o.speed in (0.0, CANONICAL_SPEED)
        # the first bounce still comes after the detector's motion window
        assert o.first_bounce_seconds() >= 2.0
    assert len(seen) == 3 * 5 * 2
    for _ in range(200):  # two objects never overlap in frame 0
        scene = sample_scene(rng, n_objects=2, layout="canonical")
        a, b = scene.objects
        reach = a.half_extent + b.half_extent
        assert abs(a.x0 - b.x0) >= reach or abs(a.y0 - b.y0) >= reach
