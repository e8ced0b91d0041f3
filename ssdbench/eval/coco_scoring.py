"""COCO box mAP: detections to COCO results, and the 12 COCO stats with either backend.

The MLPerf quality targets (0.23 training, 0.198 inference; benchmark.md §6-7) are defined with
pycocotools' `COCOeval` for `bbox`. faster-coco-eval (`faster_coco_eval`) computes the same numbers
with a C++ core several times faster, so it is the default; `backend="pycocotools"` selects the
reference implementation. tests/test_coco_eval.py checks that both agree to 1e-9.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

BACKENDS = ("faster", "pycocotools")

# Short names of the 12 numbers of `COCOeval.summarize()` for iouType "bbox", in its order
# (AP = AP@[.50:.95], the MLPerf quality metric).
STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large")
# The same table as pycocotools prints it (metric, IoU, area, maxDets).
_AREAS = ("all", "all", "all", "small", "medium", "large")
_TABLE = tuple(("Average Precision", iou, area, 100)
               for iou, area in zip(("0.50:0.95", "0.50", "0.75", "0.50:0.95", "0.50:0.95", "0.50:0.95"), _AREAS))
_TABLE += tuple(("Average Recall", "0.50:0.95", area, max_dets)
                for area, max_dets in zip(_AREAS, (1, 10, 100, 100, 100, 100)))


def _as_numpy(x: Any) -> np.ndarray:
    """Tensor (any device) or array-like -> numpy, without importing torch here."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def detections_to_coco(
    detections: Sequence[Any],
    image_ids: Sequence[int],
    orig_sizes: Sequence[Sequence[int]],
    label_to_cat_id: Sequence[int] | dict[int, int],
) -> list[dict]:
    """Convert per-image detections to COCO result dicts.

    detections: one entry per image with ``boxes`` (K, 4) ltrb normalised to [0, 1], ``labels`` (K,)
      in 1..C-1 and ``scores`` (K,) (a `Detections` tuple or anything with those attributes).
    image_ids: the COCO image id of each entry; orig_sizes: its original (height, width) in pixels.
    label_to_cat_id: label -> COCO category id (list indexed by label, or dict).
    Returns: [{"image_id", "category_id", "bbox": [x, y, w, h] in original-image pixels, "score"}].
    """
    if not (len(detections) == len(image_ids) == len(orig_sizes)):
        raise ValueError(
            f"detections_to_coco: {len(detections)} detections, {len(image_ids)} image ids and "
            f"{len(orig_sizes)} sizes; they must match"
        )
    results: list[dict] = []
    for det, image_id, size in zip(detections, image_ids, orig_sizes):
        results.extend(_image_to_coco(det, int(image_id), size, label_to_cat_id))
    return results


def _image_to_coco(det: Any, image_id: int, size: Sequence[int], label_to_cat_id) -> list[dict]:
    boxes = _as_numpy(det.boxes).astype(np.float64).reshape(-1, 4)
    labels = _as_numpy(det.labels).astype(np.int64).reshape(-1)
    scores = _as_numpy(det.scores).astype(np.float64).reshape(-1)
    if len(labels) == 0:
        return []
    h, w = (float(v) for v in _as_numpy(size).reshape(-1)[:2])
    # ltrb normalised -> xywh pixels (COCO results use the top-left corner, not the centre).
    xywh = np.stack(
        [boxes[:, 0] * w, boxes[:, 1] * h, (boxes[:, 2] - boxes[:, 0]) * w, (boxes[:, 3] - boxes[:, 1]) * h],
        axis=1,
    )
    cats = [_category(label_to_cat_id, int(lab), image_id) for lab in labels]
    return [
        {"image_id": image_id, "category_id": c, "bbox": [float(v) for v in b], "score": float(s)}
        for c, b, s in zip(cats, xywh.tolist(), scores.tolist())
    ]


def _category(label_to_cat_id, label: int, image_id: int) -> int:
    """COCO category id of a contiguous label; label 0 (background) has none."""
    try:
        if label <= 0:
            raise IndexError
        return int(label_to_cat_id[label])
    except (IndexError, KeyError):
        raise ValueError(f"image {image_id}: label {label} has no COCO category id") from None


def ground_truth_dict(gt: Any) -> dict:
    """Annotation json path, dict, or a loaded COCO object (either backend) -> the dataset dict,
    without boxes that have a NaN or infinite coordinate (dropped with a warning naming them).
    A path is read by `ssdbench.data.coco.read_annotations` (its errors name the file)."""
    if isinstance(gt, (str, os.PathLike)):
        from ssdbench.data.coco import read_annotations

        return _finite_boxes_only(read_annotations(gt), str(gt))
    if isinstance(gt, dict):
        return _finite_boxes_only(gt, "ground truth")
    if hasattr(gt, "dataset") and isinstance(gt.dataset, dict):
        return _finite_boxes_only(gt.dataset, "ground truth")
    raise ValueError(f"gt must be an annotation json path, a dict or a COCO object, not {type(gt).__name__}")


def _finite_boxes_only(data: dict, origin: str) -> dict:
    """``data`` without the annotations whose bbox is not finite: the training reader skips the
    same ones (`data.coco`), so a NaN box is no target there and no ground truth here."""
    from ssdbench.data.coco import finite_bbox, name_ids

    anns = data.get("annotations") or []
    bad = [a for a in anns if not finite_bbox(a)]
    if not bad:
        return data
    warnings.warn(f"{os.path.basename(origin)}: skipped {len(bad)} ground-truth box(es) with a NaN or infinite "
                  f"coordinate: annotation ids {name_ids([a.get('id') for a in bad])}", stacklevel=3)
    return {**data, "annotations": [a for a in anns if finite_bbox(a)]}


def _coco_api(backend: str):
    """(COCO class, COCOeval class) of the chosen backend."""
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise ValueError(f"unknown COCO eval backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _build_gt(COCO, data: dict):
    """A COCO index over an in-memory dataset dict (both backends accept this route)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _build_dt(COCO, coco_gt, results: list[dict]):
    """COCO index of the results; an empty list becomes an empty detection set instead of the
    IndexError pycocotools' `loadRes([])` raises."""
    if results:
        # loadRes mutates the dicts (adds area, id, iscrowd): hand it copies.
        return coco_gt.loadRes([dict(r, bbox=list(r["bbox"])) for r in results])
    empty = {
        "images": copy.copy(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    return _build_gt(COCO, empty)


def coco_stats(
    gt: Any,
    results: Iterable[dict],
    image_ids: Iterable[int] | None = None,
    backend: str = "faster",
    verbose: bool = False,
) -> np.ndarray:
    """The 12 COCO bbox stats (see `STAT_NAMES`) of ``results`` against ``gt``.

    gt: annotation json path, dataset dict, or loaded COCO object of either backend.
    results: COCO result dicts (xywh pixels), e.g. from `detections_to_coco`.
    image_ids: evaluate on these images only (e.g. the non-empty ones, benchmark.md §5); an image without
      detections still counts (its ground truths are misses). Default: every image of ``gt``.
    Returns float64 (12,). A stat with no ground truth in its range is -1, as pycocotools reports it.
    """
    return np.asarray(evaluated(gt, results, image_ids, backend, verbose)[0].stats[:12], dtype=np.float64)


def evaluated(gt: Any, results: Iterable[dict], image_ids: Iterable[int] | None = None, backend: str = "faster",
              verbose: bool = False) -> tuple[Any, dict]:
    """(the COCOeval object after evaluate/accumulate/summarize, the dataset dict of ``gt``): the one
    COCO bbox evaluation behind `coco_stats` and the per-class analysis (`eval.per_class`)."""
    COCO, COCOeval = _coco_api(backend)
    results = list(results)
    data = ground_truth_dict(gt)
    _check_results(results, data)
    coco_gt = _build_gt(COCO, data)
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        evaluator = COCOeval(coco_gt, _build_dt(COCO, coco_gt, results), "bbox")
        if backend == "faster" and not verbose:
            evaluator.print_function = lambda *a, **k: None
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator, data


def _check_results(results: list[dict], data: dict) -> None:
    """Reject results naming images or categories the annotation file does not have."""
    if not results:
        return
    known_images = {img["id"] for img in data.get("images", [])}
    known_cats = {cat["id"] for cat in data.get("categories", [])}
    for i, r in enumerate(results):
        if r.get("image_id") not in known_images:
            raise ValueError(f"result {i}: image_id {r.get('image_id')!r} is not in the annotation file")
        if r.get("category_id") not in known_cats:
            raise ValueError(f"result {i}: category_id {r.get('category_id')!r} is not in the annotation file")


def format_stats(stats: Sequence[float]) -> str:
    """The 12 stats as the familiar pycocotools table."""
    line = " {:<18} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
    return "\n".join(line.format(m, iou, area, md, float(v)) for (m, iou, area, md), v in zip(_TABLE, stats))
