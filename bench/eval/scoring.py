"""Reading clips for the evaluation harness: summaries, temporal consistency, bounce-proof motion.

models.world.detect reads a clip the way the world defines its labels (motion
is the direction over the first 2 s). The harness also needs readings that
hold anywhere in a long stream and through occlusions:

- `temporal_consistency`: objects persist (seen, or plausibly hidden behind
  another object, in >= 90% of frames) and nothing pops in for part of a clip;
- `motion_axis`: the axis an object moves along in a segment, whatever bounce
  falls inside it (objects reflect off the frame edges);
- `segment_flags`: the attributes drift scores per segment.

Identity is colour throughout: a scene never repeats one.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bench.eval.sources import Frames
from models.world import Detection, Scene, check, detect
from models.world.detect import DOMINANCE, STILL_SPEED
from models.world.scene import FPS, HALF_EXTENT, Motion

Axis = Literal["horizontal", "vertical", "still", "unknown"]

MIN_PRESENCE = 0.9  # fraction of frames an object must be seen (or hidden behind another) in
CONSISTENCY_SEGMENT = 8  # frames per segment of the pop-in check (half a second at 16 fps)
# Sub-windows of the motion axis (overlapping by half): bounces are >= 2.5 s apart
# (a 0.7-side span at <= 0.28 sides/s), so a bounce spoils at most two of them.
MOTION_SUBWINDOW = FPS // 2  # frames
MIN_TRACKED = 0.75  # fraction of a sub-window's frames with a known centre, to be preferred
AXIS: dict[Motion, Axis] = {
    "left": "horizontal",
    "right": "horizontal",
    "up": "vertical",
    "down": "vertical",
    "still": "still",
}
DRIFT_ATTRIBUTES = ("background", "colour", "shape", "count", "motion_axis")


def pct(hits: int, total: int) -> float:
    """hits / total in percent, 0 for an empty total."""
    return 100.0 * hits / total if total else 0.0


def num(x: float) -> float | None:
    """A float for JSON: rounded, None for NaN or infinity."""
    return round(float(x), 4) if math.isfinite(x) else None


def scene_summary(scene: Scene) -> dict[str, Any]:
    """What a prompt asks for, in the detector's terms."""
    return {
        "background": scene.background,
        "objects": [
            {"colour": o.colour, "shape": o.shape, "size": o.size, "motion": o.motion}
            for o in scene.objects
        ],
    }


def detection_summary(detection: Detection) -> dict[str, Any]:
    """A detection without its per-frame arrays."""
    return {
        "background": detection.background,
        "objects": [
            {
                "colour": o.colour,
                "shape": o.shape,
                "size": o.size,
                "motion": o.motion,
                "presence": num(o.presence),
            }
            for o in detection.objects
        ],
        "unmatched_fraction": num(detection.unmatched_fraction),
    }


def _seen(track: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """[T] frames where the detector saw the object (its track has a centre on some axis)."""
    return np.any(np.isfinite(track), axis=-1)


def _filled_track(
    track: npt.NDArray[np.float64], velocity: tuple[float, float]
) -> npt.NDArray[np.float64]:
    """A track [T, 2] in frame sides with its gaps filled.

    Interpolated between sightings; before the first and after the last, moved
    on at the detector's velocity (frame sides per second), which holds a
    still object in place.
    """
    out = track.copy()
    t = np.arange(len(track))
    for axis in range(2):
        seen = np.flatnonzero(np.isfinite(track[:, axis]))
        if len(seen) == 0:
            continue
        out[:, axis] = np.interp(t, seen, track[seen, axis])
        v = velocity[axis] if math.isfinite(velocity[axis]) else 0.0
        first, last = seen[0], seen[-1]
        out[:first, axis] = track[first, axis] + v * (t[:first] - first) / FPS
        out[last + 1 :, axis] = track[last, axis] + v * (t[last + 1 :] - last) / FPS
    return out


def _in_sides(track: npt.NDArray[np.float64], height: int, width: int) -> npt.NDArray[np.float64]:
    """A detector track [T, 2] in fractions of (width, height), in frame sides (min(H, W))."""
    side = min(height, width)
    return track * np.array([width / side, height / side])


def _hidden(detection: Detection, height: int, width: int) -> list[npt.NDArray[np.bool_]]:
    """Per object, [T] frames where it is unseen but could be behind another object.

    An object can only be hidden where its box overlaps another's: its
    position (gaps filled from its track) and the other's must be within the
    sum of their half extents on both axes (unknown sizes count as large).
    """
    centres, halves = [], []
    for o in detection.objects:
        centres.append(_filled_track(_in_sides(o.track, height, width), o.velocity))
        halves.append(HALF_EXTENT["large" if o.size == "unknown" else o.size])
    out = []
    for i, o in enumerate(detection.objects):
        behind = np.zeros(len(o.track), dtype=bool)
        for j in range(len(detection.objects)):
            if j != i:
                reach = halves[i] + halves[j]
                with np.errstate(invalid="ignore"):  # NaN: no position known, not behind
                    behind |= np.all(np.abs(centres[i] - centres[j]) <= reach, axis=-1)
        out.append(~_seen(o.track) & behind)
    return out


@dataclass(frozen=True)
class ClipConsistency:
    """Temporal consistency of one clip (see docs/eval.md)."""

    presence: bool  # every object seen, or hidden behind another, in >= MIN_PRESENCE of frames
    stable_count: bool  # no segment shows an object that the whole clip does not have
    consistent: bool  # both, and at least one object


def temporal_consistency(clip: Frames, detection: Detection) -> ClipConsistency:
    """Object identity persists through a clip [T, H, W, 3] and the object count is stable.

    Identity is colour (a scene never repeats one). `presence` catches
    objects that vanish or flicker, `stable_count` objects that pop in for
    part of the clip (too briefly to count as the clip's objects).
    """
    n, h, w, _ = clip.shape
    hidden = _hidden(detection, h, w)
    presence = all(
        float((_seen(o.track) | hid).mean()) >= MIN_PRESENCE
        for o, hid in zip(detection.objects, hidden, strict=True)
    )
    colours = {o.colour for o in detection.objects}
    stable = True
    for start in range(0, max(1, n - CONSISTENCY_SEGMENT + 1), CONSISTENCY_SEGMENT):
        part = detect(clip[start : start + CONSISTENCY_SEGMENT])
        if {o.colour for o in part.objects} - colours:
            stable = False
            break
    return ClipConsistency(presence, stable, presence and stable and bool(colours))


def _fit_velocity(track: npt.NDArray[np.float64]) -> tuple[float, float] | None:
    """Least-squares (vx, vy) in frame sides per second of a track [T, 2] in frame sides."""
    t = np.arange(len(track)) / FPS
    velocity = []
    for axis in range(2):
        ok = np.isfinite(track[:, axis])
        if ok.sum() < 2:
            return None
        ta, va = t[ok] - t[ok].mean(), track[ok, axis]
        velocity.append(float((ta * (va - va.mean())).sum() / (ta * ta).sum()))
    return velocity[0], velocity[1]


def _axis(velocity: tuple[float, float]) -> Axis:
    """Classify a velocity in frame sides per second with the detector's thresholds."""
    vx, vy = velocity
    if max(abs(vx), abs(vy)) < STILL_SPEED:
        return "still"
    if abs(vx) >= DOMINANCE * abs(vy):
        return "horizontal"
    if abs(vy) >= DOMINANCE * abs(vx):
        return "vertical"
    return "unknown"


def motion_axis(track: npt.NDArray[np.float64], height: int, width: int) -> Axis:
    """The axis an object moves along in a segment, read so that bounces do not matter.

    track [T, 2] is the detector's, in fractions of (width, height). A fit
    over the whole segment fails across a bounce (the slope of a V is about
    zero), so the segment is cut into overlapping sub-windows of
    MOTION_SUBWINDOW frames that each vote; a bounce spoils at most two of
    them. Windows where the object is mostly tracked vote (all windows when
    none is): a fit through a few points around an occlusion can point
    anywhere. A tie goes to a moving axis over "still", since a bounce can
    make a moving object look still in a window but not the reverse.
    """
    sides = _in_sides(track, height, width)
    sub = max(2, min(MOTION_SUBWINDOW, len(track) // 2))
    step = max(1, sub // 2)
    windows = [sides[s : s + sub] for s in range(0, len(track) - sub + 1, step)]
    tracked = [w for w in windows if np.isfinite(w).all(-1).mean() >= MIN_TRACKED]
    fits = [_fit_velocity(w) for w in (tracked or windows)]
    votes = Counter(_axis(v) for v in fits if v is not None)
    if not votes:
        return "unknown"
    top = max(votes.values())
    for axis in ("horizontal", "vertical", "still", "unknown"):  # the tie order
        if votes[axis] == top:
            return "unknown" if votes["horizontal"] == votes["vertical"] == top else axis
    return "unknown"


def segment_flags(scene: Scene, segment: Frames) -> dict[str, bool]:
    """The drift attributes of one segment [T, H, W, 3]: check() plus the motion axis per object."""
    detection = detect(segment)
    flags = check(scene, detection)
    by_colour = {o.colour: o for o in detection.objects}
    _, h, w, _ = segment.shape
    axis_ok = all(
        o.colour in by_colour and motion_axis(by_colour[o.colour].track, h, w) == AXIS[o.motion]
        for o in scene.objects
    )
    return {
        "background": flags["background"],
        "colour": flags["colour"],
        "shape": flags["shape"],
        "count": flags["count"],
        "motion_axis": axis_ok,
    }
