"""Scene drawing for the synthetic dataset: classes, backgrounds, objects, visible boxes.

A scene is drawn onto a PIL RGB canvas. Each object is a binary mask (its shape) filled with a
textured colour patch; an ``owner`` map (H, W) records which object each pixel shows last, so
that every annotation is the *visible* extent of its object (COCO boxes enclose visible parts).
Boxes are COCO ``[x, y, w, h]`` in pixels, pixel i covering [i, i + 1).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw


@dataclass(frozen=True)
class ShapeClass:
    cat_id: int  # sparse, like COCO's 1..90
    name: str
    hue: float  # base hue in [0, 1); saturation 0 for grey classes
    saturation: float
    texture: str  # "solid" | "stripes" | "checker"
    aspect: tuple[float, float]  # range of the box's w/h (inverted at random for bars)


CLASSES = [
    ShapeClass(1, "disc", 0.00, 0.85, "solid", (0.75, 1.33)),
    ShapeClass(3, "square", 0.62, 0.80, "checker", (0.8, 1.25)),
    ShapeClass(7, "triangle", 0.33, 0.80, "solid", (0.8, 1.3)),
    ShapeClass(12, "ring", 0.15, 0.90, "solid", (0.75, 1.33)),
    ShapeClass(18, "cross", 0.83, 0.75, "stripes", (0.8, 1.25)),
    ShapeClass(25, "star", 0.08, 0.90, "solid", (0.85, 1.2)),
    ShapeClass(33, "bar", 0.50, 0.85, "stripes", (2.8, 5.0)),
    ShapeClass(41, "diamond", 0.0, 0.0, "checker", (0.6, 1.0)),
    ShapeClass(50, "ell", 0.72, 0.70, "solid", (0.7, 1.4)),
]


def categories() -> list[dict]:
    """COCO ``categories`` list (sparse ids, in label order)."""
    return [{"id": c.cat_id, "name": c.name, "supercategory": "shape"} for c in CLASSES]


# --- shape outlines in unit coordinates, fitted to the object's box --------------------------
def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    return [((1 if k % 2 == 0 else inner) * math.sin(k * math.pi / points),
             -(1 if k % 2 == 0 else inner) * math.cos(k * math.pi / points)) for k in range(2 * points)]


POLYGONS = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (0.87, 0.5), (-0.87, 0.5)],
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
              (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "star": _star(),
    "bar": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
    "ell": [(-1, -1), (-0.35, -1), (-0.35, 0.4), (1, 0.4), (1, 1), (-1, 1)],
}
MAX_ROTATION = {"square": 12, "triangle": 25, "cross": 15, "star": 36, "bar": 0, "diamond": 0, "ell": 20}


def _fit_polygon(points, w: int, h: int, degrees: float) -> list[tuple[float, float]]:
    """Rotate unit-coordinate ``points`` and scale them to fill a w x h box exactly."""
    a = math.radians(degrees)
    rot = [(x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)) for x, y in points]
    xs, ys = [p[0] for p in rot], [p[1] for p in rot]
    x0, y0, sx, sy = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return [((x - x0) / sx * (w - 1), (y - y0) / sy * (h - 1)) for x, y in rot]


def shape_mask(rng: np.random.Generator, cls: ShapeClass, w: int, h: int) -> np.ndarray:
    """Binary mask bool (h, w) of one object of ``cls`` filling its w x h box."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if cls.name == "disc":
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif cls.name == "ring":
        draw.ellipse((0, 0, w - 1, h - 1), outline=255, width=max(2, int(0.22 * min(w, h))))
    else:
        limit = MAX_ROTATION[cls.name]
        degrees = rng.uniform(-limit, limit) if limit else 0.0
        draw.polygon(_fit_polygon(POLYGONS[cls.name], w, h, degrees), fill=255)
    return np.asarray(mask) > 127


# --- colours and textures --------------------------------------------------------------------
def object_colour(rng: np.random.Generator, cls: ShapeClass) -> np.ndarray:
    """RGB float32 (3,) in [0, 255]: the class hue with jitter in hue, saturation and value."""
    hue = (cls.hue + rng.uniform(-0.035, 0.035)) % 1.0
    sat = cls.saturation * rng.uniform(0.7, 1.0)
    val = rng.uniform(0.55, 1.0) if cls.saturation else rng.uniform(0.8, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), np.float32) * 255


def textured_patch(rng: np.random.Generator, cls: ShapeClass, w: int, h: int) -> np.ndarray:
    """uint8 (h, w, 3) patch: the object's colour, its class texture and a shading ramp."""
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    shade = 1.0 + rng.uniform(-0.25, 0.25) * (xs / max(w, 1) - 0.5) + rng.uniform(-0.25, 0.25) * (
        ys / max(h, 1) - 0.5)
    period = float(rng.integers(4, 11))
    if cls.texture == "stripes":
        shade = shade * (1.0 - 0.4 * ((xs + ys) // period % 2))
    elif cls.texture == "checker":
        shade = shade * (1.0 - 0.4 * ((xs // period + ys // period) % 2))
    patch = object_colour(rng, cls)[None, None, :] * shade[:, :, None]
    return np.clip(patch, 0, 255).astype(np.uint8)


# --- background ------------------------------------------------------------------------------
def background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Gradient + low-frequency blotches + pixel noise + distractor strokes (RGB, w x h).

    The smooth part is drawn at 1/48 scale and upsampled (bilinear); the noise is added by
    Pillow: the full-size work stays in C (about 3 ms for 640x480).
    """
    gw, gh = max(w // 48, 2), max(h // 48, 2)
    c0, c1 = rng.uniform(30, 225, (2, 3)).astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    t = (np.linspace(0, 1, gw, dtype=np.float32)[None, :] * math.cos(a)
         + np.linspace(0, 1, gh, dtype=np.float32)[:, None] * math.sin(a))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    small = c0 + (c1 - c0) * t[:, :, None] + rng.uniform(-35, 35, (gh, gw, 3)).astype(np.float32)
    base = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    amp = int(rng.integers(4, 21))
    noise = Image.fromarray(rng.integers(0, 2 * amp + 1, (h, w), dtype=np.uint8))
    canvas = ImageChops.add(base, Image.merge("RGB", (noise, noise, noise)), 1.0, -amp)
    _strokes(rng, ImageDraw.Draw(canvas), w, h)
    return canvas


def _strokes(rng: np.random.Generator, draw: ImageDraw.ImageDraw, w: int, h: int) -> None:
    """Thin random lines and arcs: clutter that is no object (not annotated)."""
    for _ in range(rng.integers(3, 14)):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, x1 = rng.uniform(0, w, 2)
        y0, y1 = rng.uniform(0, h, 2)
        width = int(rng.integers(1, 4))
        if rng.random() < 0.6:
            draw.line((x0, y0, x1, y1), fill=colour, width=width)
        else:
            box = (min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1)
            draw.arc(box, *sorted(rng.uniform(0, 360, 2)), fill=colour, width=width)
