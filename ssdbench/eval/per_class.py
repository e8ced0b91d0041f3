"""Per-class AP and precision-recall curves from the COCO evaluation's precision array.

`COCOeval.accumulate()` (pycocotools and faster-coco-eval alike) fills ``eval["precision"]``
of shape [T, R, K, A, M]: T IoU thresholds (.50:.05:.95), R = 101 recall thresholds
(0:.01:1), K categories (``params.catIds``, sorted ids), A area ranges (all, small, medium,
large), M max-detection limits (1, 10, 100); -1 where a category has no ground truth. COCO's AP
is the mean of the entries > -1 at area "all" and 100 detections (pycocotools
`COCOeval.summarize`, ``_summarize(1)``). A category with ground truth has all T x R entries
(>= 0), so the mean of the per-class APs over those categories is exactly COCO's AP
(tests/test_per_class.py checks it to 1e-9 on both backends).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

AREA_ALL, MAX_DETS_100 = 0, -1  # indices into the A and M axes of eval["precision"]


@dataclass
class CocoDetails:
    """What one COCO evaluation leaves besides the 12 stats (all numpy, picklable)."""

    stats: np.ndarray  # (12,) as `eval.coco_scoring.coco_stats`
    cat_ids: list[int]  # the K axis: category ids, sorted
    names: list[str]  # category names, same order
    gt_counts: np.ndarray  # (K,) non-crowd ground-truth boxes on the evaluated images
    iou_thrs: np.ndarray  # (T,)
    rec_thrs: np.ndarray  # (R,)
    precision: np.ndarray  # (T, R, K) at area "all", 100 detections; -1: no ground truth
    confusion: np.ndarray | None = field(default=None)  # (K+1, K+1), `eval.confusion`


def run_cocoeval(gt: Any, results: Iterable[dict], image_ids: Iterable[int] | None = None,
                 backend: str = "faster") -> CocoDetails:
    """Evaluate like `eval.coco_scoring.coco_stats` and keep the precision array and category facts."""
    from ssdbench.eval.coco_scoring import evaluated

    evaluator, data = evaluated(gt, results, image_ids, backend)
    cat_ids = [int(c) for c in evaluator.params.catIds]
    names_by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}
    precision = np.asarray(evaluator.eval["precision"], np.float64)[:, :, :, AREA_ALL, MAX_DETS_100]
    return CocoDetails(
        stats=np.asarray(evaluator.stats[:12], np.float64), cat_ids=cat_ids,
        names=[names_by_id.get(c, str(c)) for c in cat_ids],
        gt_counts=gt_box_counts(data, cat_ids, evaluator.params.imgIds),
        iou_thrs=np.asarray(evaluator.params.iouThrs, np.float64),
        rec_thrs=np.asarray(evaluator.params.recThrs, np.float64), precision=precision)


def gt_box_counts(data: dict, cat_ids: list[int], image_ids) -> np.ndarray:
    """(K,) non-crowd ground-truth boxes per category on ``image_ids`` (crowd boxes are ignored
    by COCO's matching, so they are no ground truth to find)."""
    index = {c: k for k, c in enumerate(cat_ids)}
    images = {int(i) for i in image_ids}
    counts = np.zeros(len(cat_ids), np.int64)
    for ann in data.get("annotations", []):
        if ann.get("iscrowd", 0) or int(ann["image_id"]) not in images:
            continue
        k = index.get(int(ann["category_id"]))
        if k is not None:
            counts[k] += 1
    return counts


def _iou_index(details: CocoDetails, iou: float) -> int:
    hits = np.flatnonzero(np.isclose(details.iou_thrs, iou))
    if hits.size == 0:
        raise ValueError(f"IoU {iou} is not one of the evaluated thresholds {details.iou_thrs.tolist()}")
    return int(hits[0])


def class_ap(details: CocoDetails, k: int, iou: float | None = None) -> float | None:
    """AP of category index ``k`` (over all IoUs, or at ``iou``); None without ground truth."""
    block = details.precision[:, :, k] if iou is None else details.precision[_iou_index(details, iou), :, k]
    valid = block[block > -1]
    return float(valid.mean()) if valid.size else None


def per_class_rows(details: CocoDetails) -> list[dict]:
    """One row per category: id, name, AP@[.5:.95], AP50, AP75 (None without ground truth), gt boxes."""
    return [{"category_id": c, "name": name, "ap": class_ap(details, k), "ap50": class_ap(details, k, 0.5),
             "ap75": class_ap(details, k, 0.75), "gt": int(details.gt_counts[k])}
            for k, (c, name) in enumerate(zip(details.cat_ids, details.names))]


def mean_ap(rows: list[dict], key: str = "ap") -> float:
    """Mean of the per-class values over the categories with ground truth (COCO's AP for "ap")."""
    values = [r[key] for r in rows if r[key] is not None]
    return float(np.mean(values)) if values else -1.0


def pr_curve(details: CocoDetails, iou: float, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(recall (R,), precision (R,)) at IoU ``iou``: of category index ``k``, or the mean over the
    categories with ground truth (whose mean over recall is COCO's AP at that IoU). NaN where the
    category has no ground truth."""
    block = details.precision[_iou_index(details, iou)]  # (R, K)
    if k is not None:
        curve = block[:, k]
        return details.rec_thrs, np.where(curve > -1, curve, np.nan)
    with_gt = (block > -1).all(axis=0)
    if not with_gt.any():
        return details.rec_thrs, np.full(len(details.rec_thrs), np.nan)
    return details.rec_thrs, block[:, with_gt].mean(axis=1)


def format_table(rows: list[dict]) -> str:
    """The per-class table as printed by `eval`, `train` and `demo`."""
    width = max([len("class")] + [len(r["name"]) for r in rows])
    lines = [f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}  {'gt boxes':>8}"]
    for r in rows:
        cells = [f"{r[key]:6.3f}" if r[key] is not None else f"{'-':>6}" for key in ("ap", "ap50", "ap75")]
        lines.append(f"{r['name']:<{width}}  {'  '.join(cells)}  {r['gt']:>8d}")
    n = sum(r["ap"] is not None for r in rows)
    lines.append(f"{'mean':<{width}}  {mean_ap(rows):6.3f}  {mean_ap(rows, 'ap50'):6.3f}  "
                 f"{mean_ap(rows, 'ap75'):6.3f}  ({n} classes with ground truth)")
    return "\n".join(lines)
