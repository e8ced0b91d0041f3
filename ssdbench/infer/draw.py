"""Pictures of detections: boxes with class names and scores, ground truth, contact sheets.

Boxes are ltrb normalised to [0, 1] of the image throughout. Predictions are thick boxes in a
class colour with "name score"; ground truth is a thin white box on a dark edge tagged "gt".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ssdbench.data.coco import CocoDetection
from ssdbench.data.transforms import EvalTransform
from ssdbench.model.postprocess import postprocess
from ssdbench.model.ssd import build_model

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


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


def draw_predictions(weights: Path, data_root: Path, out: Path, count: int, score_threshold: float,
                     device: torch.device) -> list[Path]:
    """Run the trained model on the first `count` val images; write <out>/predictions/*.png
    with the predictions above `score_threshold` and the ground truth (`draw_ground_truth`)."""
    val = CocoDetection(data_root, "val")
    model = build_model("ssd128_mini", weights=str(weights)).to(device).eval()
    transform, names = EvalTransform(model.spec.input_size), dict(zip(range(1, val.num_classes), val.cat_names))
    folder = out / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(min(count, len(val))):
        image, target = val.load(i)
        with torch.no_grad():
            locs, scores = model(transform(image)[0][None].to(device))
        det = postprocess(locs.float(), scores.float(), "ssd128_mini")[0]
        path = folder / f"{val.ids[i]:012d}.png"
        picture = draw_detections(image, det, names, score_threshold)
        draw_ground_truth(picture, target["boxes"], target["labels"], names, score_threshold).save(path)
        written.append(path)
    return written


GT_COLOUR, GT_EDGE = (255, 255, 255), (0, 0, 0)  # white line on a dark edge: visible on any fill


def contact_sheet(pictures: list[Path], out: Path, columns: int = 3, width: int = 400) -> Path | None:
    """Tile the drawn predictions into one PNG (`width` px per tile), so a run is judged at a glance."""
    if not pictures:
        return None
    rows = -(-len(pictures) // columns)
    sheet = Image.new("RGB", (columns * width, rows * width), "white")
    for k, path in enumerate(pictures):
        with Image.open(path) as im:
            tile = im.convert("RGB")
        tile.thumbnail((width, width))  # square cells: landscape and portrait images alike
        x, y = (k % columns) * width, (k // columns) * width
        sheet.paste(tile, (x + (width - tile.width) // 2, y + (width - tile.height) // 2))
    sheet.save(out)
    return out


def draw_ground_truth(img, boxes, labels, names: dict, score_threshold: float):
    """Draw ground truth on PIL image ``img`` in place (and return it): a thin white box with a
    1-px dark edge per object, "gt <class>" inside its bottom-left corner, and a legend line.

    ``boxes`` (n, 4) ltrb normalised, ``labels`` (n,) (label 1 = first category; 0 = padding).
    The predictions (drawn before) are the thick, class-coloured boxes with a score.
    """
    draw, font, (w, h) = ImageDraw.Draw(img), ImageFont.load_default(), img.size
    for box, label in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1)):
        if label <= 0:
            continue
        l, t, r, b = (np.clip(box, 0.0, 1.0) * [w, h, w, h]).tolist()
        draw.rectangle([l - 1, t - 1, r + 1, b + 1], outline=GT_EDGE, width=1)
        draw.rectangle([l, t, r, b], outline=GT_COLOUR, width=1)
        text = f"gt: {names.get(int(label), int(label))}"
        tl, tt, tr, tb = draw.textbbox((0, 0), text, font=font)
        y = max(t, b - (tb - tt) - 3)
        draw.rectangle([l + 1, y, l + (tr - tl) + 4, y + (tb - tt) + 2], fill=GT_EDGE)
        draw.text((l + 2, y), text, fill=GT_COLOUR, font=font)
    _legend(draw, font, h, f"thin white: gt   thick: predicted, score >= {score_threshold:.2f}")
    return img


def _legend(draw, font, height: int, text: str) -> None:
    """One line of text on a dark band along the bottom edge."""
    tl, tt, tr, tb = draw.textbbox((0, 0), text, font=font)
    y = height - (tb - tt) - 4
    draw.rectangle([0, y, tr - tl + 6, height], fill=GT_EDGE)
    draw.text((3, y + 1), text, fill=GT_COLOUR, font=font)
