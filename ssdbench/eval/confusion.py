"""Confusion matrix of detections against ground truth, with a background row and column.

Rows are the true class (the K categories, then "background": a detection that matches no
ground truth, a false positive); columns the predicted class (then "background": a ground-truth
box no detection matched, a miss). Per image, the detections scoring at least
``score_threshold`` are taken highest score first; each takes the unmatched non-crowd
ground-truth box it overlaps most with IoU >= ``iou_threshold``, whatever its class (a match of
another class is a confusion). A detection left unmatched that lies inside a crowd region
(intersection over the detection's own area >= ``iou_threshold``, COCO's crowd rule) counts
nowhere, as COCO ignores it. Boxes are COCO xywh pixels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

SCORE_THRESHOLD = 0.3  # the score the demo draws detections above
IOU_THRESHOLD = 0.5


def _ltrb(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _overlaps(dets: np.ndarray, gts: np.ndarray, crowd: bool = False) -> np.ndarray:
    """(D, G) IoU of ltrb boxes; ``crowd``: intersection over the detection's area instead."""
    lt = np.maximum(dets[:, None, :2], gts[None, :, :2])
    rb = np.minimum(dets[:, None, 2:], gts[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_d = (dets[:, 2:] - dets[:, :2]).clip(0).prod(axis=1)[:, None]
    area_g = (gts[:, 2:] - gts[:, :2]).clip(0).prod(axis=1)[None, :]
    union = area_d if crowd else area_d + area_g - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def confusion_matrix(gt: dict, results: Iterable[dict], cat_ids: list[int], image_ids=None,
                     score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """(K+1, K+1) int64 counts [true class, predicted class]; index K is background.

    gt: the COCO dataset dict; results: COCO result dicts; cat_ids: the K categories in order;
    image_ids: the evaluated images (default: every image of ``gt``).
    """
    index = {int(c): k for k, c in enumerate(cat_ids)}
    background = len(cat_ids)
    images = {int(i) for i in (image_ids if image_ids is not None else (im["id"] for im in gt["images"]))}
    gts, dets = defaultdict(list), defaultdict(list)
    for ann in gt.get("annotations", []):
        if int(ann["image_id"]) in images and int(ann["category_id"]) in index:
            gts[int(ann["image_id"])].append(ann)
    for r in results:
        if int(r["image_id"]) in images and r["score"] >= score_threshold and int(r["category_id"]) in index:
            dets[int(r["image_id"])].append(r)
    matrix = np.zeros((background + 1, background + 1), np.int64)
    for image_id in images:
        _count_image(matrix, gts[image_id], dets[image_id], index, iou_threshold)
    return matrix


def _count_image(matrix: np.ndarray, anns: list[dict], dets: list[dict], index: dict, iou_threshold: float) -> None:
    background = matrix.shape[0] - 1
    boxes = [a for a in anns if not a.get("iscrowd", 0)]
    crowds = [a for a in anns if a.get("iscrowd", 0)]
    dets = sorted(dets, key=lambda r: -r["score"])
    gt_ltrb = _ltrb([a["bbox"] for a in boxes]) if boxes else np.zeros((0, 4))
    det_ltrb = _ltrb([r["bbox"] for r in dets]) if dets else np.zeros((0, 4))
    iou = _overlaps(det_ltrb, gt_ltrb) if boxes and dets else np.zeros((len(dets), len(boxes)))
    in_crowd = (_overlaps(det_ltrb, _ltrb([a["bbox"] for a in crowds]), crowd=True).max(axis=1) >= iou_threshold
                if crowds and dets else np.zeros(len(dets), bool))
    taken = np.zeros(len(boxes), bool)
    for d, det in enumerate(dets):
        predicted = index[int(det["category_id"])]
        candidates = np.where(taken, -1.0, iou[d]) if len(boxes) else np.zeros(0)
        g = int(np.argmax(candidates)) if candidates.size else -1
        if g >= 0 and candidates[g] >= iou_threshold:
            taken[g] = True
            matrix[index[int(boxes[g]["category_id"])], predicted] += 1
        elif not in_crowd[d]:
            matrix[background, predicted] += 1
    for g in np.flatnonzero(~taken):
        matrix[index[int(boxes[g]["category_id"])], background] += 1
