"""Detect objects in images (`ssdbench predict`): detections as JSON and images with boxes drawn.

Each image is decoded (RGB), preprocessed as SSD-Large input (benchmark.md §5: bilinear resize to SxS,
aspect not kept, mean/std), run through a backend (`backends`) with benchmark.md §4 post-processing, and
its boxes are scaled back to the original image: ``box`` is ltrb in pixels of the original image,
clipped to it. `write_predictions` puts ``detections.json`` and one drawn image per input
(`draw.draw_detections`) into the output folder.

Class names: from ``--data DIR`` (a COCO-format dataset's categories), else COCO's 80 categories
for an 81-class model, the embedded synthetic dataset's for a model of its size, or "class N".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ssdbench.data import synth
from ssdbench.data.coco import CocoDetection, annotation_path
from ssdbench.data.decode import decode_image
from ssdbench.data.transforms import preprocess_for_inference
from ssdbench.infer.draw import draw_detections
from ssdbench.model.postprocess import Detections

# COCO's category ids are 1..90 with these ten unused (benchmark.md §5: sparse ids).
_COCO_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_CAT_IDS = [i for i in range(1, 91) if i not in _COCO_UNUSED_IDS]


def _coco_names() -> list[str]:
    """COCO 2017's 80 category names in the annotation file's order (labels 1..80)."""
    words = (
        "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant "
        "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe "
        "backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat "
        "baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork knife spoon bowl "
        "banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch potted_plant "
        "bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink "
        "refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
    )
    return [w.replace("_", " ") for w in words.split()]


COCO_NAMES = _coco_names()


def categories(num_classes: int, data: str | None = None) -> list[tuple[int, str]]:
    """(category id, name) per label 1..num_classes-1, index 0 = label 1."""
    if data is not None:
        split = "val" if annotation_path(data, "val").is_file() else "train"
        ds = CocoDetection(data, split)
        if ds.num_classes != num_classes:
            raise ValueError(f"{data}: dataset has {ds.num_classes - 1} classes, the model {num_classes - 1}")
        return [(ds.label_to_cat_id[i + 1], ds.cat_names[i]) for i in range(num_classes - 1)]
    if num_classes == len(COCO_NAMES) + 1:
        return list(zip(COCO_CAT_IDS, COCO_NAMES))
    synth_categories = synth.categories()
    if num_classes == len(synth_categories) + 1:
        return [(c["id"], c["name"]) for c in synth_categories]
    return [(i, f"class {i}") for i in range(1, num_classes)]


def read_image(path: str | Path) -> np.ndarray:
    """Decode `path` to uint8 (H, W, 3) RGB; one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return decode_image(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def detect(backend, images: list[np.ndarray], batch_size: int = 8) -> list[Detections]:
    """Run `backend` on uint8 (H, W, 3) RGB images of any size -> one `Detections` (ltrb normalised) each."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = torch.stack([torch.as_tensor(preprocess_for_inference(im, backend.input_size)) for im in chunk])
        pred = backend.predict(batch)
        for i, n in enumerate(pred.counts.tolist()):
            out.append(Detections(pred.boxes[i, :n].cpu(), pred.labels[i, :n].cpu(), pred.scores[i, :n].cpu()))
    return out


def to_records(dets, width: int, height: int, cats: list[tuple[int, str]], score_threshold: float) -> list[dict]:
    """JSON-ready detections: box ltrb in pixels of the original image (clipped to it)."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    records = []
    for box, label, score in zip(dets.boxes, dets.labels.tolist(), dets.scores.tolist()):
        if score < score_threshold:
            continue
        px = (box.clamp(0.0, 1.0) * scale).tolist()
        cat_id, name = cats[label - 1]
        records.append({"box": [round(v, 2) for v in px], "category_id": cat_id, "label": label,
                        "name": name, "score": round(score, 4)})
    return records


def write_predictions(out: Path, paths: list[Path], images: list[np.ndarray], dets: list[Detections],
                      cats: list[tuple[int, str]], score_threshold: float) -> list[dict]:  # fmt: skip
    """Draw each image's detections scoring >= `score_threshold` into `out` and write
    ``out/detections.json``; returns its entries, one per image (``detections``: `to_records`)."""
    out.mkdir(parents=True, exist_ok=True)
    names = {label: name for label, (_cid, name) in enumerate(cats, start=1)}
    results, used = [], set()
    for path, image, det in zip(paths, images, dets):
        h, w = image.shape[:2]
        drawn = _output_name(path, used)
        draw_detections(image, det, names, score_threshold).save(out / drawn)
        results.append({"image": str(path), "width": w, "height": h, "drawn": drawn,
                        "detections": to_records(det, w, h, cats, score_threshold)})  # fmt: skip
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    return results


def _output_name(path: Path, used: set[str]) -> str:
    """`<stem>_det.<png|jpg>` (PNG stays PNG), made unique within one run."""
    ext = ".png" if path.suffix.lower() == ".png" else ".jpg"
    name, i = f"{path.stem}_det{ext}", 1
    while name in used:
        i += 1
        name = f"{path.stem}_det{i}{ext}"
    used.add(name)
    return name
