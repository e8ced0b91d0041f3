"""Shared set-up of the LoadGen tests: a synthetic val set and random ssd128_mini weights.

``loadgen_env(tmp_path_factory, ...)`` is the body of a module-scoped fixture: it points the
sample cache (SSDBENCH_CACHE) at a temporary folder for that module only, and yields
(dataset root, weights file). ``one_detection(n)`` is what stand-in networks answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def loadgen_env(tmp_path_factory, name: str, val_images: int, seed: int,
                background_bias: float) -> Iterator[tuple[Path, Path]]:
    """Yield (dataset root, weights) for ``val_images`` synthetic images (9 classes).

    The weights are a seeded random ssd128_mini with 10 classes whose background logits are raised
    by ``background_bias``: fewer candidates survive the score threshold, so post-processing is
    fast and the detections vary from image to image.
    """
    from ssdbench.data.synth import make_synthetic_coco
    from ssdbench.model.ssd import build_model

    root = tmp_path_factory.mktemp(name)
    patch = pytest.MonkeyPatch()
    patch.setenv("SSDBENCH_CACHE", str(root / "cache"))  # the calling module only
    data = make_synthetic_coco(root / "data", train_images=0, val_images=val_images, workers=1, progress=False)
    torch.manual_seed(seed)
    model = build_model("ssd128_mini", num_classes=10)  # the synthetic set has 9 classes
    with torch.no_grad():
        for conv, nd in zip(model.conf, model.spec.boxes_per_cell):
            conv.bias[:nd] += background_bias
    weights = root / "mini.pt"
    torch.save(model.state_dict(), weights)
    try:
        yield data, weights
    finally:
        patch.undo()


def one_detection(n: int):
    """`PaddedDetections` with the same single detection (ltrb 0.1 0.2 0.3 0.4, label 1, score 0.9)
    for each of n images: the answer of the stand-in networks."""
    from ssdbench.model.postprocess import PaddedDetections

    boxes = torch.tensor([0.1, 0.2, 0.3, 0.4]).expand(n, 1, 4)
    return PaddedDetections(boxes=boxes, labels=torch.ones(n, 1, dtype=torch.long), scores=torch.full((n, 1), 0.9),
                            counts=torch.ones(n, dtype=torch.long))
