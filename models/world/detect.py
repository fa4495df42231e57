"""Read a clip back into scene terms: background, and each object's colour, shape, size, motion.

The detector scores generated video against its prompt, so it must work on
imperfect frames: it never raises on content (noise, blank or saturated
frames, smeared or flickering objects) and says "unknown" instead of guessing.
Only a wrong array type or layout raises, since that is a caller's bug.

How it reads a clip [T, H, W, 3] uint8:
1. Background: per frame, the median of a pixel grid (objects cover well
   under half the frame); the clip's median is matched to the background
   palette within BACKGROUND_TOL. Its confidence is the fraction of pixels
   near the frame's background colour; under MIN_BACKGROUND_PURITY (noise)
   the background is unknown.
2. Pixels farther than FOREGROUND_TOL from their frame's background are
   foreground and take the nearest object colour within COLOUR_TOL; the
   rest are "unmatched" (reported as a fraction: a quality signal).
3. Objects are found by colour: scenes never repeat a colour, so the
   colour's pixels are the object even when another object covers part of
   it. Isolated pixels are dropped (fewer than 2 same-colour neighbours),
   then a box around the robust centre (recomputed twice) keeps stray
   pixels elsewhere out. A colour is an object when it covers MIN_AREA of
   the frame in at least half of the frames.
4. Shape, per frame, from two features of the mask in its bounding box:
   fill ratio (circle ~0.785, square 1.0, triangle 0.5) and how low the
   centroid sits (triangle ~0.667, circle and square 0.5); the clip's shape
   is the majority over frames where the object's box touches neither the
   other object's box nor the frame edge (fallback: all frames).
5. Track: the centroid in clear frames; where a side of the box may be
   hidden (another object's box or the frame edge reaches it), the centre
   comes from the trusted sides and the size seen in clear frames, so an
   object passing under another keeps an unbiased track.
6. Motion from a least-squares line through the track over the first
   BOUNCE_FREE_SECONDS (the world's definition of a motion label: the
   direction before the first bounce).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.world.palette import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOURS,
    OBJECT_RGB,
    Background,
    Colour,
)
from models.world.scene import BOUNCE_FREE_SECONDS, FPS, HALF_EXTENT, Motion, Scene, Shape, Size

Unknown = Literal["unknown"]
UNKNOWN: Unknown = "unknown"

# Tolerances are RGB Euclidean distances (0..441); see palette.py for the gaps they split.
BACKGROUND_TOL = 48.0  # clip background colour to its palette entry (backgrounds are >= 96 apart)
FOREGROUND_TOL = 64.0  # pixel to its frame's background before it counts as foreground
COLOUR_TOL = 110.0  # foreground pixel to an object colour (object colours are >= 255 apart)
MIN_BACKGROUND_PURITY = 0.5  # fraction of pixels near the background for a known background
MIN_AREA = 0.006  # of min(H, W)^2: ~30% of the smallest object (a small triangle)
MIN_PRESENCE = 0.5  # fraction of frames a colour must be seen in to be an object
WINDOW = 1.2  # box half-size around the centre, in units of sqrt(pixel count)
STILL_SPEED = 0.05  # frame sides per second; moving objects are sampled at >= 0.12
DOMINANCE = 2.0  # the motion axis must beat the other by this factor
CHUNK_PIXELS = 1 << 20  # pixels classified at a time, to bound memory on long or large clips

_PALETTE = np.array([OBJECT_RGB[c] for c in COLOURS], dtype=np.int32)  # [7, 3]
_UNMATCHED = len(COLOURS)  # label of foreground pixels that match no colour
_BACKGROUND = len(COLOURS) + 1  # label of background pixels


@dataclass(frozen=True, eq=False)
class DetectedObject:
    """One object found by its colour.

    track is [T, 2] (x, y), the centre as fractions of width and height, NaN
    in frames where the object was not seen. occluded [T] marks frames where
    part of it may be hidden (its box touches another object's box or the
    frame edge and its mask differs from its unhidden look): shape and size
    are read from the other frames, and the track from the box's visible sides. velocity is the
    fitted (vx, vy) in frame sides per second (y down) over the motion window.
    """

    colour: Colour
    shape: Shape | Unknown
    size: Size | Unknown
    motion: Motion | Unknown
    shape_confidence: float  # fraction of the voting frames that agree with `shape`
    presence: float  # fraction of frames the object was seen in
    velocity: tuple[float, float]
    track: npt.NDArray[np.float64] = field(repr=False)
    occluded: npt.NDArray[np.bool_] = field(repr=False)


@dataclass(frozen=True)
class Detection:
    """What a clip shows; "unknown" wherever the frames do not say it clearly."""

    background: Background | Unknown
    background_confidence: float  # fraction of pixels near the background colour
    objects: tuple[DetectedObject, ...]
    unmatched_fraction: float  # foreground pixels near no object colour / all pixels


def _classify_background(rgb: npt.NDArray[np.float64]) -> Background | Unknown:
    """The palette background nearest to an RGB colour, if within BACKGROUND_TOL."""
    dist = {b: float(np.linalg.norm(rgb - np.array(BACKGROUND_RGB[b]))) for b in BACKGROUNDS}
    best = min(dist, key=dist.__getitem__)
    return best if dist[best] <= BACKGROUND_TOL else UNKNOWN


def _label_pixels(
    frames: npt.NDArray[np.uint8], background: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int64], int]:
    """Label every pixel and count labels per frame.

    Returns labels [T, H, W] (colour index, _UNMATCHED or _BACKGROUND), counts
    [T, len(COLOURS) + 1] of each colour and of unmatched pixels per frame,
    and how many pixels lie within FOREGROUND_TOL of their frame's background.
    """
    n = frames.shape[0]
    labels = np.full(frames.shape[:3], _BACKGROUND, dtype=np.int8)
    counts = np.zeros((n, _UNMATCHED + 1), dtype=np.int64)
    near_background = 0
    step = max(1, CHUNK_PIXELS // (frames.shape[1] * frames.shape[2]))
    for start in range(0, n, step):
        chunk = frames[start : start + step]
        bg = np.rint(background[start : start + step]).astype(np.int32)
        # Channel by channel: a reduction over a trailing axis of 3 is several times slower.
        d2 = np.zeros(chunk.shape[:3], dtype=np.int32)
        for k in range(3):
            diff = chunk[..., k].astype(np.int32) - bg[:, k, None, None]
            d2 += diff * diff
        where = np.nonzero(d2 > FOREGROUND_TOL**2)  # foreground pixels (t, y, x)
        near_background += d2.size - len(where[0])
        pixels = chunk[where].astype(np.int32)  # [N, 3]
        c2 = np.zeros((len(pixels), len(COLOURS)), dtype=np.int32)
        for k in range(3):
            diff = pixels[:, k, None] - _PALETTE[None, :, k]
            c2 += diff * diff
        nearest = c2.argmin(-1)
        ok = c2[np.arange(len(pixels)), nearest] <= COLOUR_TOL**2
        label = np.where(ok, nearest, _UNMATCHED)
        labels[start : start + step][where] = label
        width = _UNMATCHED + 1
        counts[start : start + step] = np.bincount(
            where[0] * width + label, minlength=len(chunk) * width
        ).reshape(len(chunk), width)
    return labels, counts, near_background


def _drop_isolated(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Keep pixels with at least 2 of their 8 neighbours set: kills speckle, keeps corners."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1))).astype(np.uint8)
    h, w = mask.shape[1:]
    box = sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3))
    return mask & (box >= 3)


@dataclass(frozen=True, eq=False)
class _Blob:
    """Per-frame measurements of one colour's mask, all [T] (NaN where absent)."""

    count: npt.NDArray[np.float64]
    cx: npt.NDArray[np.float64]  # pixels
    cy: npt.NDArray[np.float64]
    box: npt.NDArray[np.float64]  # [T, 4] x0, y0, x1, y1 in pixel edges (exclusive end)


def _measure(mask: npt.NDArray[np.bool_], min_count: float) -> _Blob:
    """Robust centre, count and bounding box per frame of a [T, H, W] mask."""
    h, w = mask.shape[1:]
    xs = np.arange(w) + 0.5
    ys = np.arange(h) + 0.5
    inside = mask
    for _ in range(3):
        count = inside.sum((1, 2)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cx = inside.sum(1) @ xs / count
            cy = inside.sum(2) @ ys / count
        radius = WINDOW * np.sqrt(count)
        keep_x = np.abs(xs[None, :] - cx[:, None]) <= radius[:, None]  # NaN compares False
        keep_y = np.abs(ys[None, :] - cy[:, None]) <= radius[:, None]
        inside = mask & keep_y[:, :, None] & keep_x[:, None, :]
    count = inside.sum((1, 2)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = inside.sum(1) @ xs / count
        cy = inside.sum(2) @ ys / count
    cols = np.any(inside, axis=1)  # [T, W]
    rows = np.any(inside, axis=2)  # [T, H]
    x0 = cols.argmax(1).astype(np.float64)
    x1 = w - cols[:, ::-1].argmax(1).astype(np.float64)
    y0 = rows.argmax(1).astype(np.float64)
    y1 = h - rows[:, ::-1].argmax(1).astype(np.float64)
    box = np.stack([x0, y0, x1, y1], axis=-1)
    absent = count < min_count
    for a in (count, cx, cy):
        a[absent] = np.nan
    box[absent] = np.nan
    return _Blob(count, cx, cy, box)


def _shape_votes(blob: _Blob) -> npt.NDArray[np.int64]:
    """Per-frame shape: an index into _SHAPE_ORDER, or -1 when the mask fits no shape."""
    bw = blob.box[:, 2] - blob.box[:, 0]
    bh = blob.box[:, 3] - blob.box[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        fill = blob.count / (bw * bh)
        drop = (blob.cy - blob.box[:, 1]) / bh  # 0 top .. 1 bottom of the box
    vote = np.full(len(fill), -1, dtype=np.int64)
    level = (drop >= 0.42) & (drop <= 0.58)
    vote[level & (fill >= 0.64) & (fill < 0.9)] = 0
    vote[level & (fill >= 0.9)] = 1
    vote[(drop > 0.58) & (drop <= 0.75) & (fill >= 0.35) & (fill < 0.75)] = 2
    return vote


_SHAPE_ORDER: tuple[Shape, ...] = ("circle", "square", "triangle")


def _size(blob: _Blob, use: npt.NDArray[np.bool_], side: int) -> Size | Unknown:
    """Size class from the median half extent of the box, between the two sizes' values."""
    half = ((blob.box[use, 2] - blob.box[use, 0]) + (blob.box[use, 3] - blob.box[use, 1])) / 4
    if len(half) == 0:
        return UNKNOWN
    h = float(np.median(half)) / side
    cut = (HALF_EXTENT["small"] + HALF_EXTENT["large"]) / 2
    if 0.5 * HALF_EXTENT["small"] <= h < cut:
        return "small"
    if cut <= h <= 1.4 * HALF_EXTENT["large"]:
        return "large"
    return UNKNOWN


def _motion(
    centres: npt.NDArray[np.float64], side: int, fps: float
) -> tuple[Motion | Unknown, tuple[float, float]]:
    """Direction of a least-squares line through the centres [T, 2] (pixels, NaN unknown).

    Only the first BOUNCE_FREE_SECONDS count: a motion label is the
    direction before the first bounce.
    """
    window = centres[: max(2, math.ceil(BOUNCE_FREE_SECONDS * fps))] / side
    velocity = []
    for axis in range(2):
        frames = np.flatnonzero(np.isfinite(window[:, axis]))
        if len(frames) < 2:
            return UNKNOWN, (math.nan, math.nan)
        t = frames / fps
        t = t - t.mean()
        v = window[frames, axis]
        velocity.append(float((t * (v - v.mean())).sum() / (t * t).sum()))
    vx, vy = velocity
    if max(abs(vx), abs(vy)) < STILL_SPEED:
        return "still", (vx, vy)
    if abs(vx) >= DOMINANCE * abs(vy):
        return ("right" if vx > 0 else "left"), (vx, vy)
    if abs(vy) >= DOMINANCE * abs(vx):
        return ("down" if vy > 0 else "up"), (vx, vy)
    return UNKNOWN, (vx, vy)


def _touching(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """[T] frames where two boxes [T, 4] overlap or share an edge (False where absent)."""
    with np.errstate(invalid="ignore"):
        return (
            (a[:, 0] <= b[:, 2])
            & (b[:, 0] <= a[:, 2])
            & (a[:, 1] <= b[:, 3])
            & (b[:, 1] <= a[:, 3])
        )


def _amodal_centres(
    blob: _Blob, others: list[_Blob], height: int, width: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Centres [T, 2] in pixels that see through occlusion, and the frames [T] that needed it.

    Frames where the box touches nothing (no other box, no frame edge) are
    clear (when there are none: the frames with the most pixels): they give
    the object's reference box size, fill ratio and centroid offset. A
    touching frame whose mask still matches the reference is complete (the
    object is the one on top, or merely adjacent). Clear and complete frames
    use the centroid. In the others, a side of the visible box is trusted
    unless another object's box (or the frame edge) reaches it, since only
    then can the true extreme be hidden; each axis takes its centre from its
    trusted sides and the reference size, or NaN when neither is trusted.
    """
    x0, y0, x1, y1 = blob.box.T
    present = ~np.isnan(blob.count)
    centres = np.stack([blob.cx, blob.cy], axis=-1)
    with np.errstate(invalid="ignore"):
        bad = [x0 <= 0, y0 <= 0, x1 >= width, y1 >= height]  # left, top, right, bottom
        touched = bad[0] | bad[1] | bad[2] | bad[3]
        for other in others:
            ox0, oy0, ox1, oy1 = other.box.T
            touch = _touching(blob.box, other.box)
            touched |= touch
            bad[0] = bad[0] | (touch & (ox0 <= x0 + 1))
            bad[1] = bad[1] | (touch & (oy0 <= y0 + 1))
            bad[2] = bad[2] | (touch & (ox1 >= x1 - 1))
            bad[3] = bad[3] | (touch & (oy1 >= y1 - 1))
        clear = present & ~touched
        if not clear.any():  # always touching: the fullest views stand in as the reference
            clear = present & (blob.count >= 0.95 * np.nanmax(blob.count))
        bw, bh = x1 - x0, y1 - y0
        fill = blob.count / (bw * bh)
        ref_w, ref_h = float(np.median(bw[clear])), float(np.median(bh[clear]))
        complete = (
            present
            & (np.abs(bw - ref_w) <= 1)
            & (np.abs(bh - ref_h) <= 1)
            & (np.abs(fill - float(np.median(fill[clear]))) <= 0.06)
        )
    whole = clear | complete
    for axis, (lo, hi, lo_bad, hi_bad, extent) in enumerate(
        ((x0, x1, bad[0], bad[2], ref_w), (y0, y1, bad[1], bad[3], ref_h))
    ):
        mid = (lo + hi) / 2
        offset = float(np.median((centres[:, axis] - mid)[clear]))
        amodal = np.where(
            ~lo_bad & ~hi_bad,
            mid,
            np.where(~lo_bad, lo + extent / 2, np.where(~hi_bad, hi - extent / 2, np.nan)),
        )
        centres[:, axis] = np.where(whole, centres[:, axis], amodal + offset)
    return centres, present & ~whole


def detect(frames: npt.NDArray[np.uint8], fps: float = FPS) -> Detection:
    """Detect the background and objects of a clip [T, H, W, 3] uint8."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a uint8 numpy array, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
    n, h, w, _ = frames.shape
    if n == 0 or h == 0 or w == 0:
        return Detection(UNKNOWN, 0.0, (), 0.0)
    side = min(h, w)

    stride = max(1, side // 32)  # ~1000 samples per frame are plenty for a median
    per_frame_bg = np.median(frames[:, ::stride, ::stride].reshape(n, -1, 3), axis=1)
    labels, per_frame, near_background = _label_pixels(frames, per_frame_bg)
    purity = near_background / labels.size
    background = _classify_background(np.median(per_frame_bg, axis=0))
    if purity < MIN_BACKGROUND_PURITY:
        background = UNKNOWN

    min_count = max(4.0, MIN_AREA * side * side)
    needed = max(1, math.ceil(MIN_PRESENCE * n))
    blobs: dict[Colour, _Blob] = {}
    for index, colour in enumerate(COLOURS):
        if (per_frame[:, index] >= min_count).sum() < needed:
            continue
        blob = _measure(_drop_isolated(labels == index), min_count)
        if (~np.isnan(blob.count)).sum() >= needed:
            blobs[colour] = blob

    objects = []
    for colour, blob in blobs.items():
        others = [other for c, other in blobs.items() if c != colour]
        centres, occluded = _amodal_centres(blob, others, h, w)
        present = ~np.isnan(blob.count)
        clear = present & ~occluded
        use = clear if clear.any() else present  # shape and size from whole-looking frames
        votes = _shape_votes(blob)[use]
        tally = np.bincount(votes + 1, minlength=4)  # [unknown, circle, square, triangle]
        best = int(tally.argmax())
        shape: Shape | Unknown = UNKNOWN if best == 0 else _SHAPE_ORDER[best - 1]
        motion, velocity = _motion(centres, side, fps)
        objects.append(
            DetectedObject(
                colour=colour,
                shape=shape,
                size=_size(blob, use, side),
                motion=motion,
                shape_confidence=float(tally[best] / max(1, len(votes))),
                presence=float(present.mean()),
                velocity=velocity,
                track=centres / np.array([w, h]),
                occluded=occluded,
            )
        )
    unmatched = float(per_frame[:, _UNMATCHED].sum() / labels.size)
    return Detection(background, float(purity), tuple(objects), unmatched)


def check(scene: Scene, detection: Detection) -> dict[str, bool]:
    """Prompt adherence of a detection: one bool per attribute the prompt names.

    Keys: background, colour, shape, motion (the required four), plus size
    and count (exactly as many objects as the prompt). Prompt objects are
    paired with detected ones by the assignment that matches the most
    colours, then shapes, then motions, then sizes, so a right shape in a
    wrong colour still earns the shape. An attribute is True only when it
    matches for every prompt object.
    """
    wanted = scene.objects
    found: list[DetectedObject | None] = [*detection.objects, *([None] * len(wanted))]
    attrs = ("colour", "shape", "motion", "size")
    best: tuple[int, list[tuple[bool, ...]]] = (-1, [])
    for pick in itertools.permutations(range(len(found)), len(wanted)):
        rows = []
        for obj, index in zip(wanted, pick, strict=True):
            det = found[index]
            rows.append(
                tuple(det is not None and getattr(det, a) == getattr(obj, a) for a in attrs)
            )
        score = sum(8 * c + 4 * s + 2 * m + z for c, s, m, z in rows)
        if score > best[0]:
            best = (score, rows)
    rows = best[1]
    result = {a: all(r[i] for r in rows) for i, a in enumerate(attrs)}
    result["background"] = detection.background == scene.background
    result["count"] = len(detection.objects) == len(wanted)
    return {k: result[k] for k in ("background", "colour", "shape", "motion", "size", "count")}
