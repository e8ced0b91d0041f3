"""One evaluation pass: model (`evaluate`) or inference backend (`evaluate_backend`) ->
post-processing -> COCO results -> the 12 COCO stats.

Distributed runs: every rank runs the model on its shard of the loader; the COCO results are
gathered to rank 0, which computes the stats and broadcasts them, so every rank returns the same
stats (the training loop's stop decision must agree across ranks). Nothing is written here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ssdbench import dist as D
from ssdbench.eval.coco_scoring import coco_stats, detections_to_coco
from ssdbench.precision import autocast
from ssdbench.progress import Progress


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside DDP / torch.compile wrappers (for `.spec`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def _as_list(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def _progress(loader, enabled: bool):
    """The loader's batches, with a progress bar (terminal) or plain lines (logs) when enabled."""
    return _with_progress(loader) if enabled else loader


def _with_progress(loader):
    try:
        total = len(loader)
    except TypeError:
        total = None
    with Progress(total, "eval", unit="batch", rate_unit="img") as bar:
        yield from bar.iterate(loader, items=lambda b: len(b["image_ids"]))


def _prepare(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """To the device; a uint8 batch (loader with deferred normalisation) is normalised there."""
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        from ssdbench.data.transforms import normalize

        images = normalize(images)
    return images


@torch.no_grad()
def predict_shard(
    model: torch.nn.Module,
    loader,
    label_to_cat_id,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> dict[int, list[dict]]:
    """COCO results of every image the loader yields, keyed by image id.

    Each batch is a dict with "images" (N, 3, S, S) float normalised (or uint8, normalised here),
    "image_ids" (N,) and "orig_sizes" (N, 2) as (height, width) pixels. The network's (N, 4, B) locations and (N, C, B) logits go
    through the shared post-processor (benchmark.md §4) in one batched call.
    """
    from ssdbench.model.postprocess import postprocess

    device = torch.device(device)
    net = _unwrap(model)
    boxes_source = net.spec.name if hasattr(net, "spec") else net.dboxes
    by_image: dict[int, list[dict]] = {}
    for batch in _progress(loader, progress):
        if len(batch["image_ids"]) == 0:  # every sample of the batch was unreadable (skipped)
            continue
        images = _prepare(batch["images"], device)
        with autocast(device, autocast_dtype):
            locs, scores = model(images)
        detections = postprocess(locs.float(), scores.float(), boxes_source)
        ids = [int(i) for i in _as_list(batch["image_ids"])]
        sizes = [tuple(int(v) for v in s) for s in _as_list(batch["orig_sizes"])]
        for image_id, size, det in zip(ids, sizes, detections):
            # An image seen twice (a padded shard) keeps its first result: no double counting.
            by_image.setdefault(image_id, detections_to_coco([det], [image_id], [size], label_to_cat_id))
    return by_image


def merge_shards(shards: list[dict[int, list[dict]]]) -> list[dict]:
    """Results of all ranks as one list, each image once (first shard wins), sorted by image id."""
    merged: dict[int, list[dict]] = {}
    for shard in shards:
        for image_id, results in shard.items():
            merged.setdefault(image_id, results)
    return [r for image_id in sorted(merged) for r in merged[image_id]]


def evaluate(
    model: torch.nn.Module,
    loader,
    dataset,
    device: torch.device | str,
    backend: str = "faster",
    distributed: bool = False,
    progress: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Evaluate ``model`` on ``loader`` (a shard of ``dataset`` per rank when distributed).

    dataset: provides ``ann_file`` (ground truth), ``ids`` (the evaluated image ids: every image
      the dataset holds counts, with or without detections) and ``label_to_cat_id``.
    Returns (stats float64 (12,), COCO results). Every rank gets the same stats; the results are
    the whole gathered list on rank 0 and the rank's own shard elsewhere.
    The model is left in eval mode; the caller switches back to train mode.
    """
    model.eval()
    shard = predict_shard(model, loader, dataset.label_to_cat_id, device, autocast_dtype,
                          progress and (not distributed or D.is_main()))
    if not distributed:
        results = merge_shards([shard])
        return coco_stats(dataset.ann_file, results, image_ids=dataset.ids, backend=backend), results
    shards = D.gather_object(shard, dst=0)
    stats, results = None, merge_shards([shard])
    if D.get_rank() == 0:
        results = merge_shards(shards)
        stats = coco_stats(dataset.ann_file, results, image_ids=dataset.ids, backend=backend)
    stats = D.broadcast_object(None if stats is None else stats.tolist(), src=0)
    return np.asarray(stats, dtype=np.float64), results


def evaluate_backend(backend, loader, dataset, eval_backend: str = "faster",
                     progress: bool = True) -> tuple[np.ndarray, list[dict]]:
    """(stats (12,), COCO results) of ``backend.predict`` over ``loader`` in one process
    (`predict_backend`, then the COCO evaluation with ``eval_backend``)."""
    results = predict_backend(backend, loader, dataset, progress)
    return coco_stats(dataset.ann_file, results, image_ids=dataset.ids, backend=eval_backend), results


def predict_backend(backend, loader, dataset, progress: bool = True) -> list[dict]:
    """The COCO results of ``backend.predict`` over ``loader`` in one process, sorted by image id.

    backend: any object with ``predict(images) -> PaddedDetections`` (`ssdbench.infer.backends`);
    the images go to it float32 normalised on the CPU (the backend moves them to its device).
    dataset as for `evaluate`.
    """
    from ssdbench.model.postprocess import Detections

    by_image: dict[int, list[dict]] = {}
    for batch in _progress(loader, progress):
        if len(batch["image_ids"]) == 0:
            continue
        with torch.inference_mode():
            pred = backend.predict(_prepare(batch["images"], torch.device("cpu")).float())
        for j, image_id in enumerate(int(i) for i in batch["image_ids"]):
            n = int(pred.counts[j])
            det = Detections(pred.boxes[j, :n].cpu(), pred.labels[j, :n].cpu(), pred.scores[j, :n].float().cpu())
            size = tuple(int(v) for v in batch["orig_sizes"][j])
            by_image.setdefault(image_id, detections_to_coco([det], [image_id], [size], dataset.label_to_cat_id))
    return merge_shards([by_image])
