"""The embedded synthetic COCO-format dataset: shapes on cluttered backgrounds.

``make_synthetic_coco(out)`` writes the COCO 2017 layout (``annotations/instances_*2017.json``,
``train2017/``, ``val2017/``) with JPEGs of COCO-like sizes. Nine classes with sparse category
ids (like COCO's 1..90), told apart by shape and by colour/texture; each varies in scale
(COCO small, medium and large), aspect, rotation and colour. Backgrounds carry gradients, noise
and distractor strokes; objects occlude each other. Some images are crowded and contain
``iscrowd`` regions (a tight cluster of tiny objects annotated by one box, as COCO does); some
are empty (no annotation; the reader drops them, as it drops COCO's).

The module holds, in this order, the classes and the drawing of backgrounds and objects, the
composition of one scene (`Scene`, `draw_scene`), and the writing of the dataset. A scene is
drawn onto a PIL RGB canvas; each object is a binary mask (its shape) filled with a textured
colour patch, and an ``owner`` map (H, W) records which object each pixel shows last, so that
every box is the visible extent of its object (COCO boxes enclose visible parts), ``area`` its
visible pixel count. Boxes are COCO ``[x, y, w, h]`` in pixels, pixel i covering [i, i + 1).
Scene kinds: "empty" (clutter only, no annotation), "crowded" (12-25 mostly small objects and
1-2 crowd clusters) and "normal" (1-6 objects); ``scene_kind`` gives 4% and 8% of the first two
on a fixed schedule, so that even a tiny dataset contains every kind. Object sizes follow COCO's
area classes: small (< 32^2 px), medium (32^2..96^2) and large.

Output is deterministic: every image draws from its own generator seeded by (seed, split,
index), so files and JSON are byte-identical for a seed at any worker count.
``default_dataset()`` generates the dataset once into ``$SSDBENCH_CACHE/synth-v1``.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from ssdbench.data.pool import pool_map, process_pool
from ssdbench.io import cache_dir
from ssdbench.progress import Progress

VERSION = "synth-v1"  # bump when the generator's output changes (cache folder name)
DEFAULT_TRAIN, DEFAULT_VAL = 2000, 250
SPLIT_CODE = {"train": 0, "val": 1}
VAL_ID_OFFSET = 500_000  # image ids are unique across splits, as in COCO
# (width, height) of common COCO images
SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (640, 360), (427, 640), (612, 612), (640, 512)]
JPEG_QUALITY = 90


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


def image_id_of(split: str, index: int) -> int:
    """Image id of sample ``index`` of ``split`` (train 1.., val 500001..)."""
    return index + 1 + (VAL_ID_OFFSET if split == "val" else 0)


def _render_one(job: tuple[str, Path, int, int]) -> tuple[dict, list[dict]]:
    """Draw, encode and write one image; returns (image dict, annotation dicts without ids)."""
    split, folder, index, seed = job
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
    width, height = SIZES[rng.integers(len(SIZES))]
    canvas, anns = draw_scene(rng, width, height, scene_kind(index))
    image_id = image_id_of(split, index)
    file_name = f"{image_id:012d}.jpg"  # COCO's naming
    canvas.save(folder / file_name, format="JPEG", quality=JPEG_QUALITY)
    for ann in anns:
        ann["image_id"] = image_id
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}, anns


def _coco_json(split: str, images: list[dict], anns: list[dict]) -> dict:
    """The annotation file's content; annotation ids numbered 1.. in image order."""
    annotations = []
    for ann_id, ann in enumerate(anns, start=1):
        x, y, w, h = ann["bbox"]
        annotations.append({
            "id": ann_id, "image_id": ann["image_id"], "category_id": ann["category_id"],
            "bbox": [x, y, w, h], "area": ann["area"], "iscrowd": ann["iscrowd"],
            # Rectangle polygon: tools that insist on a segmentation field get one.
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        })
    return {
        "info": {"description": f"ssdbench synthetic COCO ({VERSION}, {split})", "version": VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }


def _render_split(split, folder, count, seed, pool, progress) -> dict:
    jobs = [(split, folder, i, seed) for i in range(count)]
    images, anns = [], []
    with Progress(count, f"synth {split}", unit="img", enabled=progress, stream=sys.stderr) as bar:
        for image, image_anns in bar.iterate(pool_map(pool, _render_one, jobs, chunksize=8)):
            images.append(image)
            anns.extend(image_anns)
    return _coco_json(split, images, anns)


def _write_dataset(tmp: Path, splits: dict[str, int], seed: int, workers: int, progress: bool):
    (tmp / "annotations").mkdir(parents=True)
    with process_pool(workers) as pool:
        for split, count in splits.items():
            folder = tmp / f"{split}2017"
            folder.mkdir()
            data = _render_split(split, folder, count, seed, pool, progress)
            with open(tmp / "annotations" / f"instances_{split}2017.json", "w") as f:
                json.dump(data, f, separators=(",", ":"))
    meta = {"version": VERSION, "seed": seed, **{f"{s}_images": n for s, n in splits.items()}}
    (tmp / "ssdbench_synth.json").write_text(json.dumps(meta, indent=1) + "\n")


def make_synthetic_coco(out: str | Path, train_images: int = DEFAULT_TRAIN,
                        val_images: int = DEFAULT_VAL, seed: int = 0, workers: int | None = None,
                        progress: bool = True) -> Path:
    """Generate the synthetic dataset into ``out`` (must not exist or be empty); return its path.

    Built in a temporary sibling folder and renamed into place, so ``out`` is either absent or
    complete. Raises FileExistsError when ``out`` already holds files (a racing process that
    finished first, or a user's folder).
    """
    out = Path(out)
    if train_images < 0 or val_images < 0:
        raise ValueError(f"image counts must be >= 0, got train={train_images} val={val_images}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output folder {out} exists and is not empty")
    workers = workers or min(os.cpu_count() or 1, 8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private (0700); the dataset is shared like any folder
    try:
        _write_dataset(tmp, {"train": train_images, "val": val_images}, seed, workers, progress)
        if out.exists():
            out.rmdir()  # empty (checked above); rename cannot replace a folder otherwise
        os.rename(tmp, out)  # atomic on one filesystem
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"output folder {out} was created meanwhile") from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def default_dataset(progress: bool = True) -> Path:
    """Path of the embedded dataset, generated on first use into ``io.cache_dir("synth-v1")``.

    Safe when several processes race: each builds in its own temporary folder and the first
    rename wins; the others discard their copy and use the winner's.
    """
    path = cache_dir(VERSION)
    if (path / "ssdbench_synth.json").is_file():
        return path
    try:
        make_synthetic_coco(path, DEFAULT_TRAIN, DEFAULT_VAL, progress=progress)
    except FileExistsError:
        if not (path / "ssdbench_synth.json").is_file():
            raise FileExistsError(f"{path} exists but is not a complete synthetic dataset; "
                                  "remove it to regenerate") from None
    return path
