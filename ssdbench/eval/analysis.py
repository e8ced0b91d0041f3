"""One call for everything practitioners look at after a COCO evaluation.

`analyze` returns the 12 stats, the per-class precision array and the confusion matrix
(`eval.per_class`, `eval.confusion`); `details_json` is its JSON form (per-class rows and the
confusion matrix) for the JSON outputs and metrics.jsonl; `eval.plots.write_eval_pictures`
draws it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ssdbench.eval.confusion import IOU_THRESHOLD, SCORE_THRESHOLD, confusion_matrix
from ssdbench.eval.per_class import CocoDetails, per_class_rows, run_cocoeval


def analyze(gt: Any, results: Iterable[dict], image_ids: Iterable[int] | None = None,
            backend: str = "faster") -> CocoDetails:
    """COCO evaluation of ``results`` (see `eval.coco_scoring.coco_stats`) with its per-class details and
    the confusion matrix at the default thresholds."""
    from ssdbench.eval.coco_scoring import ground_truth_dict

    results = list(results)
    image_ids = None if image_ids is None else [int(i) for i in image_ids]
    data = ground_truth_dict(gt)
    details = run_cocoeval(data, results, image_ids, backend)
    details.confusion = confusion_matrix(data, results, details.cat_ids, image_ids)
    return details


def details_json(details: CocoDetails) -> dict:
    """{"per_class": rows, "confusion": {...}}: what the JSON outputs and metrics.jsonl hold."""
    out: dict = {"per_class": per_class_rows(details)}
    if details.confusion is not None:
        out["confusion"] = {"labels": [*details.names, "background"], "rows": "true class",
                            "columns": "predicted class", "score_threshold": SCORE_THRESHOLD,
                            "iou_threshold": IOU_THRESHOLD, "counts": details.confusion.tolist()}
    return out
