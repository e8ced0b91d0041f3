"""Helpers that build small COCO-format datasets on disk (importable by any test).

``tiny_coco(root)`` writes a hand-written dataset whose every number is known (see its doc);
``write_coco`` / ``write_image`` build custom ones; ``synthetic_coco(root)`` a small synthetic one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# Sparse ids in a non-sorted file order: label 1 -> 5, 2 -> 2, 3 -> 90.
TINY_CATEGORIES = [{"id": 5, "name": "five"}, {"id": 2, "name": "two"}, {"id": 90, "name": "ninety"}]
TINY_IMAGES = [
    {"id": 10, "file_name": "a.jpg", "width": 64, "height": 48},
    {"id": 20, "file_name": "b.jpg", "width": 40, "height": 40},
    {"id": 30, "file_name": "c.jpg", "width": 32, "height": 32},
    {"id": 40, "file_name": "d.jpg", "width": 32, "height": 32},  # no annotation: dropped
    {"id": 50, "file_name": "e.jpg", "width": 32, "height": 32},  # crowd only: kept, empty target
]
TINY_ANNOTATIONS = [
    {"id": 1, "image_id": 10, "category_id": 90, "bbox": [4, 8, 20, 10], "area": 200, "iscrowd": 0},
    {"id": 2, "image_id": 10, "category_id": 5, "bbox": [50, 30, 30, 30], "area": 900, "iscrowd": 0},
    {"id": 3, "image_id": 20, "category_id": 2, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 1},
    {"id": 4, "image_id": 20, "category_id": 2, "bbox": [10, 10, 5, 6], "area": 30, "iscrowd": 0},
    {"id": 5, "image_id": 30, "category_id": 5, "bbox": [3, 3, 0, 7], "area": 0, "iscrowd": 0},
    {"id": 6, "image_id": 30, "category_id": 90, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
    {"id": 7, "image_id": 50, "category_id": 5, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 1},
]


def write_image(path: Path, width: int, height: int, mode: str = "RGB", fmt: str = "JPEG",
                seed: int = 0) -> Path:
    """Write a smooth random image of ``mode`` (RGB, L, CMYK, RGBA, P) to ``path``."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 8, 1), max(width // 8, 1), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    img = img.convert(mode) if mode != "P" else img.quantize(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def write_coco(root: Path, split: str, images: list[dict], annotations: list[dict],
               categories: list[dict], write_images: bool = True) -> Path:
    """Write ``root/annotations/instances_{split}2017.json`` (+ one JPEG per image dict)."""
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}2017.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                    "categories": categories}))
    for k, img in enumerate(images if write_images else []):
        write_image(root / f"{split}2017" / img["file_name"], img["width"], img["height"], seed=k)
    return root


def tiny_coco(root: Path, split: str = "val") -> Path:
    """The hand-written dataset above: sparse ids, crowd, a degenerate box, an empty image."""
    return write_coco(root, split, TINY_IMAGES, TINY_ANNOTATIONS, TINY_CATEGORIES)


def synthetic_coco(root: Path, train: int = 12, val: int = 6, seed: int = 0, workers: int = 1) -> Path:
    """A small synthetic dataset (ssdbench.data.synth) at ``root``."""
    from ssdbench.data.synth import make_synthetic_coco

    return make_synthetic_coco(root, train, val, seed=seed, workers=workers, progress=False)
