"""Rasterise scenes to uint8 video, whole clips or as an endless stream.

Frames are NHWC uint8 RGB, [T, H, W, 3]. A pixel belongs to a shape when its
centre lies inside it; there is no anti-aliasing, so every pixel is exactly a
palette colour (models/world/palette.py) and a clip is its own ground-truth
segmentation. Shapes are axis-aligned: a circle of radius r, a square of side
2r, and a triangle pointing up with base 2r and height 2r (r is the object's
half extent). Later objects are drawn over earlier ones.

The output is a pure function of (scene, frame index, height, width, fps):
no randomness happens here, so a clip is deterministic for its scene's seed,
and `WorldStream.next_frames` in any chunking equals `render_clip`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from models.world.palette import BACKGROUND_RGB, OBJECT_RGB
from models.world.scene import FPS, Scene, SceneObject, Shape, trajectory

Frames = npt.NDArray[np.uint8]  # [T, H, W, 3]


def shape_mask(
    shape: Shape, cx: float, cy: float, half: float, rows: int, cols: int
) -> tuple[slice, slice, npt.NDArray[np.bool_]]:
    """The pixels of one shape: (row slice, column slice, mask over that window).

    The window is the shape's bounding box clipped to a rows x cols frame,
    so drawing costs the shape's area, not the frame's.
    """
    r0 = max(0, math.floor(cy - half))
    r1 = min(rows, math.ceil(cy + half) + 1)
    c0 = max(0, math.floor(cx - half))
    c1 = min(cols, math.ceil(cx + half) + 1)
    dy = (np.arange(r0, r1) + 0.5 - cy)[:, None]
    dx = (np.arange(c0, c1) + 0.5 - cx)[None, :]
    if shape == "circle":
        mask = dx * dx + dy * dy <= half * half
    elif shape == "square":
        mask = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:  # triangle: apex at (cx, cy - half), base on y = cy + half
        mask = (dy >= -half) & (dy <= half) & (2.0 * np.abs(dx) <= dy + half)
    return slice(r0, r1), slice(c0, c1), mask


class WorldStream:
    """Renders one scene frame by frame, for streams of any length.

    Usage::

        stream = WorldStream(scene, height=64, width=64)
        first = stream.next_frames(16)   # [16, 64, 64, 3] uint8, frames 0..15
        more = stream.next_frames(16)    # frames 16..31
        stream.reset()                   # back to frame 0

    Its only state is the next frame index: positions come from the closed
    form in `trajectory`, so memory and cost per frame never grow.
    """

    def __init__(self, scene: Scene, height: int = 128, width: int = 128, fps: float = FPS) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"frame size must be positive, got {height}x{width}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.scene, self.height, self.width, self.fps = scene, height, width, fps
        self.frame_index = 0
        self._background = np.array(BACKGROUND_RGB[scene.background], dtype=np.uint8)

    def reset(self) -> None:
        """Rewind to frame 0."""
        self.frame_index = 0

    def centres(self, obj: SceneObject, start: int, n: int) -> npt.NDArray[np.float64]:
        """Pixel centres [n, 2] (x, y) of one object for frames start .. start+n-1."""
        index = np.arange(start, start + n, dtype=np.int64)
        return trajectory(obj, index, self.height, self.width, self.fps)

    def next_frames(self, n: int) -> Frames:
        """The next n frames, [n, H, W, 3] uint8."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out = np.empty((n, self.height, self.width, 3), dtype=np.uint8)
        out[:] = self._background
        side = min(self.height, self.width)
        for obj in self.scene.objects:
            rgb = np.array(OBJECT_RGB[obj.colour], dtype=np.uint8)
            half = obj.half_extent * side
            for t, (cx, cy) in enumerate(self.centres(obj, self.frame_index, n)):
                rows, cols, mask = shape_mask(
                    obj.shape, float(cx), float(cy), half, self.height, self.width
                )
                out[t, rows, cols][mask] = rgb
        self.frame_index += n
        return out


def render_clip(
    scene: Scene, frames: int, height: int = 128, width: int = 128, fps: float = FPS
) -> Frames:
    """Frames 0 .. frames-1 of a scene, [frames, H, W, 3] uint8."""
    return WorldStream(scene, height, width, fps).next_frames(frames)
