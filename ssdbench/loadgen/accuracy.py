"""COCO mAP of a LoadGen accuracy log (`ssdbench accuracy`), scored by MLPerf's rule.

``mlperf_log_accuracy.json`` is an array of ``{"seq_id", "qsl_idx", "data"}`` where ``data`` is
the uppercase hex of the SUT's response bytes: float32 7-tuples
``[qsl_idx, ymin, xmin, ymax, xmax, score, label]``, normalised coordinates (benchmark.md §7).

The rule is the official ``tools/accuracy-coco.py --use-inv-map`` (mlcommons/inference r2.0,
vision/classification_and_detection): ``qsl_idx`` indexes the annotation file's ``images`` list in
file order, every image included (5,000 on COCO val 2017; `open_val_dataset` opens the dataset
that way, as the QSL does); label k is the k-th category id of the file's ``categories``
(``[0] + category ids``); boxes scale by that image's width and height to xywh pixels; the first
entry of a repeated ``qsl_idx`` counts; COCO eval runs over the logged images, those without
detections included. Target: 99% of the fp32 reference, 0.198 on COCO.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ssdbench.data.coco import CocoDetection, name_ids
from ssdbench.data.synth import default_dataset
from ssdbench.eval.coco_scoring import coco_stats, detections_to_coco
from ssdbench.io import read_json
from ssdbench.model.postprocess import Detections

REFERENCE_MAP = 0.20  # fp32 reference mAP on COCO val 2017 (benchmark.md §7)
TARGET_MAP = 0.198  # 99% of the reference
COCO_VAL_IMAGES = 5000  # every val image, empty ones included (benchmark.md §7)

def decode_log(path: str | Path) -> dict[int, np.ndarray]:
    """QSL index -> float32 (K, 7) detections; later entries of the same index are ignored.

    Raises ValueError naming the entry whose payload is not whole float32 7-tuples or whose
    tuples name another sample.
    """
    path = Path(path)
    entries = read_json(path, "accuracy log", bad_hint="; was the LoadGen run interrupted?")
    kind = type(entries).__name__  # a ValueError, the CLI's one-line error, also for a JSON object
    if kind != "list":
        raise ValueError(f"{path}: not a LoadGen accuracy log (a JSON {kind}, not a list of "
                         "{seq_id, qsl_idx, data} entries)")  # fmt: skip
    samples: dict[int, np.ndarray] = {}
    for n, entry in enumerate(entries):
        idx, raw = _entry(path, n, entry)
        if len(raw) % 28:
            raise ValueError(f"{path}: entry {n} (qsl_idx {idx}) has {len(raw)} bytes, not float32 7-tuples")
        dets = np.frombuffer(raw, np.float32).reshape(-1, 7)
        if len(dets) and not np.all(dets[:, 0] == idx):
            raise ValueError(f"{path}: entry {n} carries detections of another sample than qsl_idx {idx}")
        samples.setdefault(idx, dets)
    return samples


def _entry(path: Path, n: int, entry) -> tuple[int, bytes]:
    """(qsl_idx, response bytes) of entry ``n``; ValueError naming the file and the entry."""
    if not isinstance(entry, dict) or "qsl_idx" not in entry or "data" not in entry:
        raise ValueError(f"{path}: entry {n} is not an object with qsl_idx and data: {str(entry)[:80]}")
    idx = entry["qsl_idx"]
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        raise ValueError(f"{path}: entry {n} has qsl_idx {idx!r}, not a sample index (an integer >= 0)")
    try:
        return idx, bytes.fromhex(entry["data"])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: entry {n} (qsl_idx {idx}) has data that is not hexadecimal bytes: "
                         f"{str(entry['data'])[:40]!r}") from None


def missing_samples(samples: dict[int, np.ndarray], dataset_size: int) -> str | None:
    """A warning line when the log lacks some of the dataset's samples (an accuracy run logs every
    QSL sample: a missing one would silently leave its image out of the score); None otherwise."""
    missing = [i for i in range(dataset_size) if i not in samples]
    if not missing:
        return None
    return (f"warning: {len(missing)} of the dataset's {dataset_size} samples are not in the log "
            f"(qsl_idx {name_ids(missing)}); the mAP covers only the logged ones")


def tuples_to_detections(dets: np.ndarray) -> Detections:
    """(K, 7) [idx, ymin, xmin, ymax, xmax, score, label] -> `Detections` (ltrb normalised)."""
    boxes = torch.from_numpy(np.ascontiguousarray(dets[:, [2, 1, 4, 3]]))
    labels = torch.from_numpy(dets[:, 6].astype(np.int64))
    return Detections(boxes, labels, torch.from_numpy(dets[:, 5].copy()))


def coco_results(samples: dict[int, np.ndarray], dataset) -> tuple[list[dict], list[int]]:
    """COCO results (xywh pixels) and the evaluated image ids of decoded log samples."""
    bad = [i for i in samples if not 0 <= i < len(dataset)]
    if bad:
        raise ValueError(f"accuracy log names qsl_idx {bad[0]}, but the dataset has {len(dataset)} images; "
                         "is --data the dataset of the run?")  # fmt: skip
    order = sorted(samples)
    infos = [dataset.image_info(i) for i in order]
    sizes = [(int(info["height"]), int(info["width"])) for info in infos]
    ids = [int(info["id"]) for info in infos]
    dets = [tuples_to_detections(samples[i]) for i in order]
    return detections_to_coco(dets, ids, sizes, dataset.label_to_cat_id), ids


def evaluate_log(log: str | Path, dataset, backend: str = "faster") -> tuple[np.ndarray, int]:
    """(12 COCO stats, number of images evaluated) of an accuracy log against ``dataset``."""
    samples = decode_log(log)
    if not samples:
        raise ValueError(f"{log} holds no samples; run LoadGen with --mode accuracy")
    results, ids = coco_results(samples, dataset)
    if warning := missing_samples(samples, len(dataset)):
        print(warning, file=sys.stderr)
    return coco_stats(dataset.ann_file, results, image_ids=ids, backend=backend), len(ids)


def verdict(map_value: float, dataset_is_coco: bool) -> str:
    """The line stating the target check (only COCO val has a target)."""
    if not dataset_is_coco:
        return "no MLPerf target for this dataset (the 0.198 target is for COCO val 2017)"
    ok = map_value >= TARGET_MAP
    return f"{'meets' if ok else 'misses'} the target {TARGET_MAP} (99% of {REFERENCE_MAP})"


def _is_coco_val(dataset, num_images: int) -> bool:
    return len(dataset.cat_ids) == 80 and num_images == COCO_VAL_IMAGES


def accuracy_text(log: str | Path, dataset, backend: str = "faster") -> tuple[float, str]:
    """(mAP, report) of an accuracy log: ``mAP=xx.xxx%  (n images, ...)`` and the verdict line."""
    stats, n = evaluate_log(log, dataset, backend)
    lines = [f"mAP={100 * stats[0]:.3f}%  ({n} images, {backend} COCO eval)",
             verdict(float(stats[0]), _is_coco_val(dataset, n))]  # fmt: skip
    return float(stats[0]), "\n".join(lines) + "\n"


def report_accuracy(log: str | Path, data: str | Path | None = None, backend: str = "faster") -> float:
    """Evaluate the log against ``data`` (default: the embedded dataset), print `accuracy_text`'s
    report and return the mAP."""
    value, text = accuracy_text(log, open_val_dataset(data), backend)
    print(text, end="")
    return value


def open_val_dataset(data: str | Path | None):
    """`CocoDetection(data, "val", all_images=True)`: every image in file order, the QSL and
    accuracy order of MLPerf inference; the embedded synthetic dataset when ``data`` is None."""
    if data is None:
        data = default_dataset()
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    ann = root / "annotations" / "instances_val2017.json"
    if not ann.is_file():
        raise FileNotFoundError(f"{root} has no annotations/instances_val2017.json "
                                "(COCO 2017 layout expected)")
    return CocoDetection(root, "val", all_images=True)
