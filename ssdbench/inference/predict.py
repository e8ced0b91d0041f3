"""Detect objects in images (`ssdbench predict`): detections as JSON and images with boxes drawn.

Each image is decoded (RGB), preprocessed as SSD-Large input (SPEC §5: bilinear resize to SxS,
aspect not kept, mean/std), run through a backend (`backends.py`) with SPEC §4 post-processing, and
its boxes are scaled back to the original image: ``box`` is ltrb in pixels of the original image,
clipped to it. ``--out DIR`` receives ``detections.json`` and one drawn image per input.

Class names: from ``--data DIR`` (a COCO-format dataset's categories), else COCO's 80 categories
for an 81-class model, the embedded synthetic dataset's for a model of its size, or "class N".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

EPILOG = """examples:
  ssdbench predict street.jpg --weights resnet34-ssd1200.pt
  ssdbench predict a.jpg b.png --model ssd128_mini --weights runs/demo/checkpoints/last.pt --out preds
  ssdbench predict img.jpg --weights w.pt --data /coco --score-threshold 0.5
"""

# COCO's category ids are 1..90 with these ten unused (SPEC §5: sparse ids).
_COCO_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_CAT_IDS = [i for i in range(1, 91) if i not in _COCO_UNUSED_IDS]
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


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
        from ..data.coco import CocoDetection, annotation_path

        split = "val" if annotation_path(data, "val").is_file() else "train"
        ds = CocoDetection(data, split)
        if ds.num_classes != num_classes:
            raise ValueError(f"{data}: dataset has {ds.num_classes - 1} classes, the model {num_classes - 1}")
        return [(ds.label_to_cat_id[i + 1], ds.cat_names[i]) for i in range(num_classes - 1)]
    if num_classes == len(COCO_NAMES) + 1:
        return list(zip(COCO_CAT_IDS, COCO_NAMES))
    from ..data import shapes

    synth = shapes.categories()
    if num_classes == len(synth) + 1:
        return [(c["id"], c["name"]) for c in synth]
    return [(i, f"class {i}") for i in range(1, num_classes)]


def read_image(path: str | Path) -> np.ndarray:
    """Decode `path` to uint8 (H, W, 3) RGB; one-line errors naming the file."""
    from ..data.decode import decode_image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return decode_image(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _label_name(names, label: int) -> str:
    """`names`: {label: name} or a sequence of class names in label order (index 0 = label 1)."""
    if isinstance(names, dict):
        return str(names.get(label, label))
    return str(names[label - 1]) if names is not None and 0 < label <= len(names) else str(label)


def draw_detections(image, detections, names=None, score_threshold: float = 0.0) -> Image.Image:
    """Draw boxes, class names and scores onto a copy of `image`; returns an RGB PIL image.

    image: PIL image or uint8 (H, W, 3) RGB array. detections: anything with ``boxes`` (K, 4) ltrb
    *normalised* to [0, 1], ``labels`` (K,) and ``scores`` (K,) (tensors or arrays), e.g. a
    `Detections`. names: {label: name} or class names in label order (index 0 = label 1).
    """
    img = Image.fromarray(np.asarray(image, dtype=np.uint8)) if not isinstance(image, Image.Image) else image
    img = img.convert("RGB")  # always a copy, never the caller's image
    w, h = img.size
    draw, font = ImageDraw.Draw(img), ImageFont.load_default()
    width = max(2, round(min(w, h) / 200))
    boxes, labels, scores = (np.asarray(torch.as_tensor(t).detach().cpu()) for t in
                             (detections.boxes, detections.labels, detections.scores))
    for box, label, score in zip(boxes.reshape(-1, 4), labels.reshape(-1), scores.reshape(-1)):
        if score < score_threshold or label <= 0:
            continue
        colour = _PALETTE[int(label) % len(_PALETTE)]
        l, t, r, b = (np.clip(box, 0.0, 1.0) * [w, h, w, h]).tolist()
        draw.rectangle([l, t, r, b], outline=colour, width=width)
        text = f"{_label_name(names, int(label))} {score:.2f}"
        tl, tt, tr, tb = draw.textbbox((l, t), text, font=font)
        y = t - (tb - tt) - 2 if t - (tb - tt) - 2 >= 0 else t  # above the box when there is room
        draw.rectangle([l, y, l + (tr - tl) + 4, y + (tb - tt) + 2], fill=colour)
        draw.text((l + 2, y), text, fill=(0, 0, 0), font=font)
    return img


def detect(backend, images: list[np.ndarray], batch_size: int = 8):
    """Run `backend` on uint8 RGB images of any size -> one `Detections` (normalised ltrb) each."""
    from ..data.transforms import preprocess_for_inference
    from ..model.postprocess import Detections

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--weights", required=True, help="checkpoint or reference weights")
    parser.add_argument("--model", help="model name (default: the one recorded in the checkpoint, else ssd1200_r34)")
    parser.add_argument("--data", help="COCO-format dataset whose categories name the classes")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="minimum score kept (default: 0.3)")
    parser.add_argument("--backend", default="eager", choices=["eager", "compile", "onnxruntime"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward (default: 4)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickled whole-model files (resnet34-ssd1200.pytorch); trusted files only")


def _output_name(path: Path, used: set[str]) -> str:
    """`<stem>_det.<png|jpg>` (PNG stays PNG), made unique within one run."""
    ext = ".png" if path.suffix.lower() == ".png" else ".jpg"
    name, i = f"{path.stem}_det{ext}", 1
    while name in used:
        i += 1
        name = f"{path.stem}_det{i}{ext}"
    used.add(name)
    return name


def run(args: argparse.Namespace) -> int:
    from ..model.ssd import build_model
    from .backends import make_backend

    paths = [Path(p) for p in args.images]
    images = [read_image(p) for p in paths]  # every image is checked before any work starts
    from ..model.weights import checkpoint_model_name

    args.model = args.model or checkpoint_model_name(args.weights) or "ssd1200_r34"
    model = build_model(args.model, weights=args.weights, allow_pickle=args.allow_pickle)
    cats = categories(model.spec.num_classes, args.data)
    backend = make_backend(args.backend, args.model, device=args.device, dtype=args.dtype, model=model)
    dets = detect(backend, images, args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, used = [], set()
    for path, image, det in zip(paths, images, dets):
        h, w = image.shape[:2]
        records = to_records(det, w, h, cats, args.score_threshold)
        drawn = _output_name(path, used)
        names = {label: name for label, (_cid, name) in enumerate(cats, start=1)}
        draw_detections(image, det, names, args.score_threshold).save(out / drawn)
        results.append({"image": str(path), "width": w, "height": h, "drawn": drawn, "detections": records})
        top = ", ".join(f"{r['name']} {r['score']:.2f}" for r in records[:3])
        print(f"{path}: {len(records)} detections" + (f" ({top}{', ...' if len(records) > 3 else ''})" if top else ""))
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out / 'detections.json'} and {len(results)} drawn images to {out}", file=sys.stderr)
    return 0
