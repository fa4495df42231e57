"""The world's exact colours, shared by the renderer and the detector.

Every rendered pixel is exactly one of these values (no anti-aliasing), so a
clip's ground truth is readable pixel by pixel. The values are saturated and
far apart: any two object colours differ by >= 255 in RGB Euclidean distance,
every object colour differs from every background by >= 159 (blue on dark
blue, the closest pair), and backgrounds differ from each other by >= 96
(black vs dark blue). A detector can therefore use wide tolerances (half of
those gaps) and still tell the colours of an imperfect generated frame apart.
"""

from __future__ import annotations

from typing import Literal

Colour = Literal["red", "green", "blue", "yellow", "magenta", "cyan", "white"]
Background = Literal["black", "gray", "dark blue"]
RGB = tuple[int, int, int]

COLOURS: tuple[Colour, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
BACKGROUNDS: tuple[Background, ...] = ("black", "gray", "dark blue")

OBJECT_RGB: dict[Colour, RGB] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
}

BACKGROUND_RGB: dict[Background, RGB] = {
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "dark blue": (0, 0, 96),
}
