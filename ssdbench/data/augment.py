"""The SSD training augmentation plan: every random decision of one sample, drawn in one place.

benchmark.md §5; MLPerf reference ``mlcommons/training``
``retired_benchmarks/ssd-v1/ssd/utils.py`` (``SSDCropping``, ``RandomHorizontalFlip``,
``SSDTransformer``). `plan_sample` draws, from the sample's own numpy Generator, in this order:

1. the random crop (`sample_crop`): a mode, then up to ``max_samples`` candidate crops, again
   until a mode succeeds; no draw at all for an image without boxes (never cropped);
2. the horizontal flip: one uniform number, flip when it is below ``flip_p``;
3. the colour jitter (`jitter.draw_jitter` for one image), when jitter is on.

It returns a `SamplePlan`: the crop rectangle in source pixels, the flip flag, the boxes and labels
after crop and flip, and the jitter factors and order. Two executors carry out the same plan on
the pixels: `transforms.TrainTransform` per sample on the CPU (slice, Pillow resize, mirror,
jitter on the tensor) and `gpu_pipeline.DevicePipeline` batched on the device. The boxes they
return are the plan's, so the two paths cannot drift apart.

Boxes are float32 (n, 4) ltrb normalised to [0, 1] of their image, labels int64 (n,), throughout.
Sample ``i`` of epoch ``e`` draws from `sample_rng` ``(seed, e, i)`` on both paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ssdbench.data.jitter import draw_jitter

# benchmark.md §5 (SSDCropping): crop modes drawn uniformly: None = keep the whole image, else the
# minimum IoU every ground-truth box must have with the crop (-inf = unconstrained).
CROP_MODES: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -math.inf)
CROP_MIN_SIDE = 0.3  # crop w, h ~ U(0.3, 1) of the image
CROP_ASPECT = (0.5, 2.0)  # allowed crop w / h (in fractions of the image, as the reference)


def _check_max_samples(max_samples: int) -> None:
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")


@dataclass(frozen=True)
class AugmentSettings:
    """``max_samples`` crop tries per mode (MLPerf: 1 or 50), flip probability, jitter on/off."""

    max_samples: int = 1
    flip_p: float = 0.5
    jitter: bool = True

    def __post_init__(self):
        _check_max_samples(self.max_samples)


@dataclass(frozen=True)
class SamplePlan:
    """The augmentation decisions of one sample (module docstring).

    ``crop`` int64 (4,) ltrb pixels of the source image, ``[l, r) x [t, b)`` (the whole image when
    not cropped); ``flip`` mirror left-right after the resize; ``boxes`` float32 (k, 4) ltrb
    normalised to the output image (crop and flip applied) with ``labels`` int64 (k,);
    ``factors`` float32 (4,) brightness, contrast, saturation, hue shift and ``order`` int64 (4,)
    the jitter operations in the order applied, both None when jitter is off.
    """

    crop: np.ndarray
    flip: bool
    boxes: np.ndarray
    labels: np.ndarray
    factors: np.ndarray | None = None
    order: np.ndarray | None = None


def as_rng(rng) -> np.random.Generator:
    """A numpy Generator as is, or a new one from an int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise ValueError(f"expected a numpy Generator or an int seed, got {type(rng).__name__}")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``epoch``: independent of workers, ranks and resumes."""
    return np.random.default_rng([seed, epoch, index])


def as_targets(boxes, labels) -> tuple[np.ndarray, np.ndarray]:
    """Boxes as float32 (n, 4), labels as int64 (n,)."""
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64).reshape(-1)


# ---------------------------------------------------------------- the crop (SSDCropping)
def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ltrb boxes a (A, 4) and b (B, 4) -> (A, B); empty boxes give 0."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _candidate_crops(h: int, w: int, n: int, rng: np.random.Generator):
    """Draw n crops; returns (ok (n,) aspect test, px (n, 4) int ltrb, rect (n, 4) normalised).

    Deliberate deviation: the reference tests IoU on the float crop but cuts the pixels at
    int(left * W) etc.; we snap the crop to the pixel grid first, so that boxes and pixels agree.
    """
    u = rng.random((n, 4))
    cw = CROP_MIN_SIDE + (1 - CROP_MIN_SIDE) * u[:, 0]
    ch = CROP_MIN_SIDE + (1 - CROP_MIN_SIDE) * u[:, 1]
    left, top = u[:, 2] * (1 - cw), u[:, 3] * (1 - ch)
    ok = (cw / ch >= CROP_ASPECT[0]) & (cw / ch <= CROP_ASPECT[1])
    l_px = np.floor(left * w).astype(np.int64)
    t_px = np.floor(top * h).astype(np.int64)
    r_px = np.clip(np.floor((left + cw) * w).astype(np.int64), l_px + 1, w)
    b_px = np.clip(np.floor((top + ch) * h).astype(np.int64), t_px + 1, h)
    px = np.stack([l_px, t_px, r_px, b_px], axis=1)
    rect = px / np.array([w, h, w, h], dtype=np.float64)
    return ok, px, rect


def _centres_inside(boxes: np.ndarray, rect: np.ndarray) -> np.ndarray:
    """(C, n) bool: centre of each box strictly inside each crop rect (C, 4) (reference rule)."""
    cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
    cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
    in_x = (cx[None] > rect[:, 0:1]) & (cx[None] < rect[:, 2:3])
    return in_x & (cy[None] > rect[:, 1:2]) & (cy[None] < rect[:, 3:4])


def _find_crop(boxes: np.ndarray, h: int, w: int, min_iou: float, max_samples: int, rng):
    """First of ``max_samples`` drawn crops meeting the rules -> (px (4,), rect (4,), keep (n,)) or None."""
    ok, px, rect = _candidate_crops(h, w, max_samples, rng)
    # MLPerf: every ground-truth box must have IoU > min_iou with the crop (not just one box).
    ok &= (box_iou_np(rect, boxes.astype(np.float64)) > min_iou).all(axis=1)
    inside = _centres_inside(boxes.astype(np.float64), rect)
    ok &= inside.any(axis=1)  # keep at least one box
    if not ok.any():
        return None
    i = int(np.argmax(ok))
    return px[i], rect[i], inside[i]


def sample_crop(boxes: np.ndarray, h: int, w: int, rng, max_samples: int = 1):
    """Draw the SSD crop for ltrb boxes (n >= 1, 4) of an h x w image (benchmark.md §5).

    A mode is drawn uniformly from `CROP_MODES`; "no crop" returns None. Otherwise up to
    ``max_samples`` crops are tried (MLPerf allows 1 or 50); if none qualifies a new mode is
    drawn, as the reference does. Returns (min_iou, px int (4,) ltrb pixels, rect (4,) ltrb
    normalised, keep bool (n,): boxes whose centres are inside).
    """
    while True:
        min_iou = CROP_MODES[int(rng.integers(len(CROP_MODES)))]
        if min_iou is None:
            return None
        found = _find_crop(boxes, h, w, min_iou, max_samples, rng)
        if found is not None:
            return (min_iou, *found)


def _boxes_in_crop(boxes: np.ndarray, rect: np.ndarray) -> np.ndarray:
    """ltrb normalised boxes (k, 4) clipped to the crop ``rect`` (4,) and re-normalised to it."""
    kept = boxes.astype(np.float64)
    kept[:, 0::2] = (np.clip(kept[:, 0::2], rect[0], rect[2]) - rect[0]) / (rect[2] - rect[0])
    kept[:, 1::2] = (np.clip(kept[:, 1::2], rect[1], rect[3]) - rect[1]) / (rect[3] - rect[1])
    return np.clip(kept, 0.0, 1.0).astype(np.float32)


def crop_targets(boxes, labels, h: int, w: int, rng, max_samples: int = 1):
    """Step 1 of the plan: the SSD random crop of an h x w image's targets (no pixels).

    Returns (crop px int64 (4,) ltrb, boxes float32 (k, 4) ltrb normalised to the crop, labels
    int64 (k,)): the boxes whose centres are inside, clipped. Images without boxes are never
    cropped and draw nothing (deliberate: the reference would loop forever on them).
    """
    _check_max_samples(max_samples)
    boxes, labels = as_targets(boxes, labels)
    whole = np.array([0, 0, w, h], dtype=np.int64)
    if len(boxes) == 0:
        return whole, boxes, labels
    choice = sample_crop(boxes, h, w, rng, max_samples)
    if choice is None:
        return whole, boxes, labels
    _, px, rect, keep = choice
    return np.asarray(px, dtype=np.int64), _boxes_in_crop(boxes[keep], rect), labels[keep]


# ---------------------------------------------------------------- the plan
def flip_boxes(boxes: np.ndarray) -> np.ndarray:
    """Mirror ltrb normalised boxes (k, 4) left-right: l' = 1 - r, r' = 1 - l; float32."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], axis=1).astype(np.float32)


def plan_sample(boxes, labels, h: int, w: int, rng, settings: AugmentSettings = AugmentSettings()) -> SamplePlan:
    """Draw crop, flip and jitter for one h x w image, in that order (module docstring).

    ``boxes`` (n, 4) ltrb normalised, ``labels`` (n,), ``rng`` the sample's numpy Generator (or an
    int seed). The same generator state always gives the same plan.
    """
    rng = as_rng(rng)
    crop, boxes, labels = crop_targets(boxes, labels, h, w, rng, settings.max_samples)
    # The reference flips before resizing; the executors flip after (the same picture, see
    # transforms.TrainTransform.geometric); the boxes do not depend on it.
    flip = bool(rng.random() < settings.flip_p)
    if flip:
        boxes = flip_boxes(boxes)
    factors = order = None
    if settings.jitter:
        factors, order = (a[0] for a in draw_jitter(1, rng))
    return SamplePlan(crop, flip, boxes, labels, factors, order)


def identity_plan(boxes, labels, h: int, w: int) -> SamplePlan:
    """No augmentation (evaluation): the whole image, no flip, no jitter, the boxes unchanged."""
    boxes, labels = as_targets(boxes, labels)
    return SamplePlan(np.array([0, 0, w, h], dtype=np.int64), False, boxes, labels)
