"""Compose one synthetic scene: background, crowd clusters, objects; visible-extent boxes.

Scene kinds: "empty" (clutter only, no annotation), "crowded" (12-25 mostly small objects and
1-2 crowd clusters) and "normal" (1-6 objects); ``scene_kind`` gives 4% and 8% of the first two
on a fixed schedule, so that even a tiny dataset contains every kind. Object sizes follow COCO's area classes:
small (< 32^2 px), medium (32^2..96^2) and large.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ssdbench.data.shapes import CLASSES, ShapeClass, background, shape_mask, textured_patch

SIZE_RANGES = {"small": (10, 32), "medium": (32, 96), "large": (96, 400)}  # sqrt(area), px
SIZE_MIX = {"normal": (0.2, 0.45, 0.35), "crowded": (0.5, 0.45, 0.05)}
MAX_COVER = 0.4  # a new object may cover at most this fraction of an earlier object's box
MIN_VISIBLE_PX = 4


class Scene:
    """A canvas plus the owner map: owner[y, x] = index + 1 of the object shown there (0 none)."""

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.rng, self.w, self.h = rng, width, height
        self.canvas = background(rng, width, height)
        self.owner = np.zeros((height, width), np.int16)
        self.objects: list[dict] = []  # {"cls", "box" (x0, y0, x1, y1) drawn, "crowd"}

    def paint(self, cls: ShapeClass, x0: int, y0: int, w: int, h: int, owner: int) -> None:
        """Draw one object of ``cls`` in the box (x0, y0, w, h) (may extend past the canvas)."""
        mask = shape_mask(self.rng, cls, w, h)
        patch = textured_patch(self.rng, cls, w, h)
        self.canvas.paste(Image.fromarray(patch), (x0, y0), Image.fromarray(mask.astype(np.uint8) * 255))
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, self.w), min(y0 + h, self.h)
        if cx1 <= cx0 or cy1 <= cy0:
            return
        sub = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        self.owner[cy0:cy1, cx0:cx1][sub] = owner

    def fits(self, box: tuple[int, int, int, int]) -> bool:
        """True when ``box`` covers no earlier object's box by more than MAX_COVER."""
        for obj in self.objects:
            b = obj["box"]
            iw = min(box[2], b[2]) - max(box[0], b[0])
            ih = min(box[3], b[3]) - max(box[1], b[1])
            area = (b[2] - b[0]) * (b[3] - b[1])
            if iw > 0 and ih > 0 and iw * ih > MAX_COVER * area:
                return False
        return True

    def place(self, w: int, h: int, tries: int = 12) -> tuple[int, int] | None:
        """Top-left corner for a w x h box that fits; 10% of the box may lie past each border."""
        for _ in range(tries):
            x0 = int(self.rng.integers(-w // 10, max(self.w - w + w // 10, -w // 10 + 1)))
            y0 = int(self.rng.integers(-h // 10, max(self.h - h + h // 10, -h // 10 + 1)))
            if self.fits((x0, y0, x0 + w, y0 + h)):
                return x0, y0
        return None

    def add(self, cls: ShapeClass, w: int, h: int, crowd: bool = False) -> None:
        """Place and paint one object (or, with ``crowd``, a cluster of tiny ones of ``cls``)."""
        corner = self.place(w, h)
        if corner is None:
            return
        x0, y0 = corner
        owner = len(self.objects) + 1
        self.objects.append({"cls": cls, "box": (x0, y0, x0 + w, y0 + h), "crowd": crowd})
        if not crowd:
            self.paint(cls, x0, y0, w, h, owner)
            return
        for _ in range(self.rng.integers(8, 17)):  # tiny members annotated only as a group
            s = int(self.rng.integers(6, 15))
            mx, my = int(self.rng.integers(0, max(w - s, 1))), int(self.rng.integers(0, max(h - s, 1)))
            self.paint(cls, x0 + mx, y0 + my, s, s, owner)

    def annotations(self) -> list[dict]:
        """COCO annotations (without ids) of the visible extent of each object."""
        anns = []
        for k, obj in enumerate(self.objects, start=1):
            x0, y0, x1, y1 = obj["box"]
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, self.w), min(y1, self.h)
            if x1 <= x0 or y1 <= y0:
                continue
            sub = self.owner[y0:y1, x0:x1] == k
            visible = int(sub.sum())
            if visible < MIN_VISIBLE_PX:
                continue
            cols, rows = np.flatnonzero(sub.any(0)), np.flatnonzero(sub.any(1))
            bbox = [x0 + int(cols[0]), y0 + int(rows[0]), int(cols[-1] - cols[0] + 1),
                    int(rows[-1] - rows[0] + 1)]
            anns.append({"category_id": obj["cls"].cat_id, "bbox": bbox, "area": float(visible),
                         "iscrowd": int(obj["crowd"])})
        return anns


def object_size(rng: np.random.Generator, cls: ShapeClass, mix, limit: int) -> tuple[int, int]:
    """(w, h) of one object: sqrt(area) log-uniform within a COCO size class, class aspect."""
    lo, hi = SIZE_RANGES[("small", "medium", "large")[rng.choice(3, p=mix)]]
    hi = min(hi, int(0.8 * limit))
    side = math.exp(rng.uniform(math.log(lo), math.log(max(hi, lo + 1))))
    aspect = math.exp(rng.uniform(*np.log(cls.aspect)))
    if cls.name == "bar" and rng.random() < 0.5:
        aspect = 1 / aspect  # vertical bar
    w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
    return max(round(w), 4), max(round(h), 4)


def scene_kind(index: int) -> str:
    """Kind of the scene of image ``index``: every 25th empty (4%), every 12th crowded (8%)."""
    if index % 25 == 7:
        return "empty"
    return "crowded" if index % 12 == 5 else "normal"


def draw_scene(rng: np.random.Generator, width: int, height: int,
               kind: str = "normal") -> tuple[Image.Image, list[dict]]:
    """Draw one scene of ``kind``; returns (RGB canvas, COCO annotations without ids)."""
    scene = Scene(rng, width, height)
    if kind == "empty":
        return scene.canvas, []
    crowded = kind == "crowded"
    if crowded:
        for _ in range(rng.integers(1, 3)):
            side = int(rng.integers(50, 141))
            scene.add(CLASSES[rng.integers(len(CLASSES))], side, int(side * rng.uniform(0.6, 1.0)), crowd=True)
    count = int(rng.integers(12, 26) if crowded else rng.integers(1, 7))
    mix = SIZE_MIX["crowded" if crowded else "normal"]
    picks = [CLASSES[i] for i in rng.integers(len(CLASSES), size=count)]
    sizes = [object_size(rng, cls, mix, min(width, height)) for cls in picks]
    # Large objects first, so that smaller ones in front of them stay visible.
    for cls, (w, h) in sorted(zip(picks, sizes), key=lambda p: -p[1][0] * p[1][1]):
        scene.add(cls, w, h)
    return scene.canvas, scene.annotations()
