"""The committed TensorFlow test model (tools/make_tf_artifacts.py) and a COCO-80 dataset it sees.

``ASSETS`` holds ``tiny_ssd_tf.pb`` (a frozen graph with the interface of MLPerf's
``resnet34_tf.22.1.pb``, input 128x128), ``tiny_ssd_tf.onnx`` (its tf2onnx conversion),
``unreadable_tf.pb`` and ``tf_detections.npz`` (fixed images and TensorFlow's own detections).
The graph's colour detector fires contiguous label 3 on red, 12 on green, 50 on blue regions.
``colour_coco(root)`` writes a COCO-format set with COCO's 80 categories whose objects are such
rectangles, so that the graph's detections score a real mAP (the embedded synthetic set has 9
classes, not COCO's 80).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

ASSETS = Path(__file__).parent / "assets" / "tf_ssd"
PB, ONNX = ASSETS / "tiny_ssd_tf.pb", ASSETS / "tiny_ssd_tf.onnx"
UNREADABLE = ASSETS / "unreadable_tf.pb"
SIZE = 128
# COCO 2017 ids 1..90 less the ten unused ones (annotations/instances_val2017.json)
COCO_UNUSED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_IDS = [i for i in range(1, 91) if i not in COCO_UNUSED]  # contiguous label k -> COCO_IDS[k - 1]
COLOUR_LABELS = {(255, 0, 0): 3, (0, 255, 0): 12, (0, 0, 255): 50}  # the generator's COLOUR_LABELS
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def saved() -> dict[str, np.ndarray]:
    """The generator's fixed images (uint8 NHWC) and TensorFlow's detections of them."""
    with np.load(ASSETS / "tf_detections.npz") as f:
        return {k: f[k] for k in f.files}


def normalised(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S) as MLPerf's pre_process_coco_resnet34 (no resize)."""
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).copy()


# the generator's anchors (LEVELS): (stride, [(width, height)]) in pixels of the 128x128 input
ANCHORS = ((8, ((16, 16), (32, 16), (16, 32))), (16, ((32, 32), (48, 48), (32, 64))))


def colour_coco(root: Path, images: int = 12, seed: int = 0, size: int = 256, split: str = "val") -> Path:
    """``images`` images of ``split`` (size x size), grey with 1-3 red/green/blue rectangles, each the
    size and place of one of the graph's anchors once resized to 128 (so the graph can find them),
    not overlapping, annotated with COCO's 80 categories (label k -> the k-th category id)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    scale = size // SIZE
    entries, anns = [], []
    for i in range(images):
        img = np.full((size, size, 3), int(rng.integers(90, 170)), np.uint8)
        taken = np.zeros((size, size), bool)
        wanted, placed = int(rng.integers(1, 4)), 0
        for _ in range(50):  # tries
            if placed == wanted:
                break
            stride, shapes = ANCHORS[int(rng.integers(0, 2))]
            w, h = shapes[int(rng.integers(0, 3))]
            cx, cy = (int(rng.integers(0, SIZE // stride)) * stride + stride // 2 for _ in range(2))
            x0, y0, x1, y1 = (v * scale for v in (cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2))
            if x0 < 0 or y0 < 0 or x1 > size or y1 > size or taken[max(y0 - 8, 0):y1 + 8, max(x0 - 8, 0):x1 + 8].any():
                continue  # off the image or touching an earlier rectangle: left out
            colour, label = list(COLOUR_LABELS.items())[int(rng.integers(0, 3))]
            img[y0:y1, x0:x1], taken[y0:y1, x0:x1] = colour, True
            placed += 1
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": COCO_IDS[label - 1],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        name = f"{i + 1:012d}.png"
        Image.fromarray(img).save(root / f"{split}2017" / name)
        entries.append({"id": i + 1, "file_name": name, "width": size, "height": size})
    categories = [{"id": c, "name": f"category {c}"} for c in COCO_IDS]
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"images": entries, "annotations": anns, "categories": categories}))
    return root
