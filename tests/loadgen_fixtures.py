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


def concat_detections(parts):
    """One `PaddedDetections` from several along the batch dimension, padded to the widest."""
    from ssdbench.model.postprocess import PaddedDetections

    width = max(p.boxes.shape[1] for p in parts)

    def pad(t):
        extra = width - t.shape[1]
        return t if extra == 0 else torch.cat([t, t.new_zeros((t.shape[0], extra, *t.shape[2:]))], 1)

    return PaddedDetections(boxes=torch.cat([pad(p.boxes) for p in parts]),
                            labels=torch.cat([pad(p.labels) for p in parts]),
                            scores=torch.cat([pad(p.scores) for p in parts]),
                            counts=torch.cat([p.counts for p in parts]))  # fmt: skip


class Pacer:
    """A fixed service rate: work of ``cost`` seconds that starts within 5 ms of the end of the
    previous work (back-to-back, as in Offline) ends exactly ``cost`` after that end, so a late
    wake-up of a sleeping thread on a loaded machine does not add up over the batches of a run."""

    def __init__(self):
        self.last_end = float("-inf")

    def wait(self, cost: float, start: float) -> None:
        """Sleep until the work that began at ``start`` (a perf_counter reading) is due to end."""
        import time

        base = self.last_end if 0 <= start - self.last_end < 0.005 else start
        self.last_end = base + cost
        rest = self.last_end - time.perf_counter()
        if rest > 0:
            time.sleep(rest)


def pace(seconds: float, start: float) -> None:
    """Sleep until ``seconds`` have passed since ``start`` (a perf_counter reading)."""
    import time

    rest = seconds - (time.perf_counter() - start)
    if rest > 0:
        time.sleep(rest)


def paced_per_sample(predict, seconds_per_sample: float, memo: dict | None = None):
    """A SUT network that runs ``predict`` one sample at a time (its answers then do not depend on
    how LoadGen's queries were batched) at a fixed rate of ``seconds_per_sample`` (`Pacer`), so that
    the throughput comparisons of the compliance tests do not hinge on the load of a shared CI
    machine.

    ``memo``: keep each distinct sample's answer there and compute it only once; every sample still
    costs ``seconds_per_sample``, so to LoadGen this is an honest SUT at a fixed speed (unlike a
    caching SUT, which is faster on repeats), and a loaded machine cannot push it off its pace.
    """
    import time

    pacer = Pacer()

    def answer(x):
        if memo is None:
            return predict(x)
        key = x.numpy().tobytes()
        if key not in memo:
            memo[key] = predict(x)
        return memo[key]

    def run(batch):
        start = time.perf_counter()
        out = concat_detections([answer(batch[j:j + 1]) for j in range(len(batch))])
        if batch.any():  # the warm-up's zeros are not paced: they would lend their time to the run
            pacer.wait(seconds_per_sample * len(batch), start)
        return out

    return run
