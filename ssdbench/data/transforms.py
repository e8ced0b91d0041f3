"""SSD augmentation and preprocessing on pixels (benchmark.md §5).

Inputs are uint8 (H, W, 3) RGB numpy images; boxes are ltrb normalised to [0, 1] of the image,
float32 (n, 4), with int64 labels (n,), throughout.

Training follows the MLPerf reference (crop, flip, resize, colour jitter, /255, normalise). Every
random decision comes from `augment.plan_sample`; this module is its CPU executor, split in two
so that the photometric half can run on the GPU:

- geometric, per sample on CPU workers: `apply_geometry` (crop slice, `resize_uint8`, mirror)
  -> uint8 (S, S, 3); `random_crop` and `hflip` are its two halves on their own;
- photometric, on (N, 3, S, S) uint8 or float tensors on any device: `color_jitter`,
  `normalize`, or both at once with `jitter_and_normalize(batch, generator)`.

Randomness always comes from an explicit ``numpy.random.Generator`` (or a CPU
``torch.Generator`` for the batched jitter), never from global state.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from ssdbench.data.augment import AugmentSettings, SamplePlan, as_rng, crop_targets, flip_boxes, plan_sample
from ssdbench.data.jitter import (  # noqa: F401  (re-exported)
    JITTER,
    color_jitter,
    draw_jitter,
    jitter_and_normalize,
    jitter_normalize,
    normalize,
)


def check_image(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a uint8 (H, W, 3) array with H, W >= 1."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {desc}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has no pixels: shape {image.shape}")


def random_crop(image: np.ndarray, boxes, labels, rng, max_samples: int = 1):
    """SSD random crop (`augment.crop_targets`) -> (image view (h', w', 3), boxes (k, 4), labels (k,)).

    Kept boxes are clipped to the crop and re-normalised to it. Images without boxes are never
    cropped (deliberate: the reference would loop forever on them).
    """
    crop, boxes, labels = crop_targets(boxes, labels, image.shape[0], image.shape[1], as_rng(rng), max_samples)
    return _crop_pixels(image, crop), boxes, labels


def _crop_pixels(image: np.ndarray, crop) -> np.ndarray:
    """View of the ltrb pixel rectangle ``crop`` (4,) of an (H, W, 3) image."""
    left, top, right, bottom = (int(v) for v in crop)
    return image[top:bottom, left:right]


def _mirror(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def hflip(image: np.ndarray, boxes):
    """Mirror left-right: image (H, W, 3) -> contiguous copy; ltrb boxes l' = 1 - r, r' = 1 - l."""
    return _mirror(image), flip_boxes(boxes)


def resize_uint8(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 (H, W, 3) to (S, S, 3) (or (h, w) for a tuple), aspect not kept.

    Pillow's bilinear filter, as torchvision's ``Resize`` on the reference's PIL images (it
    antialiases when shrinking). Normalised boxes are unchanged by this resize.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if image.shape[0] == out_h and image.shape[1] == out_w:
        return np.ascontiguousarray(image)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((out_w, out_h), Image.BILINEAR)
    return np.asarray(resized)


def to_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) numpy -> contiguous uint8 (3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # copy: writable


def apply_geometry(image: np.ndarray, plan: SamplePlan, size: int | tuple[int, int]) -> np.ndarray:
    """Carry out a plan's crop, resize and flip on a uint8 (H, W, 3) image -> uint8 (S, S, 3).

    The reference flips before resizing; flipping after is the same image (Pillow's filter is
    mirror-symmetric, up to rounding) on 300x300 instead of the full crop.
    """
    resized = resize_uint8(_crop_pixels(image, plan.crop), size)
    return _mirror(resized) if plan.flip else resized


class TrainTransform:
    """SSD training augmentation (benchmark.md §5) for one sample: `augment.plan_sample`, executed.

    ``__call__(image, target, rng)`` takes a uint8 (H, W, 3) image, a target with ``boxes``
    (n, 4) ltrb normalised and ``labels`` (n,), and a numpy Generator (or int seed); returns
    ``(image, target)`` with image (3, S, S) float32 jittered and normalised, or uint8 when
    ``defer_jitter`` (no jitter drawn; run `jitter_and_normalize` on the batch, e.g. on the GPU).
    Other target keys pass through; boxes/labels come back as float32 / int64 numpy arrays.
    """

    def __init__(self, size: int = 300, max_samples: int = 1, defer_jitter: bool = False,
                 flip_p: float = 0.5):
        self.settings = AugmentSettings(int(max_samples), flip_p, jitter=not defer_jitter)
        self.size, self.max_samples = int(size), int(max_samples)
        self.defer_jitter, self.flip_p = defer_jitter, flip_p

    def plan(self, image: np.ndarray, boxes, labels, rng, jitter: bool | None = None) -> SamplePlan:
        """The sample's `augment.SamplePlan` (jitter drawn unless ``defer_jitter``, or as ``jitter`` says)."""
        check_image(image)
        settings = self.settings if jitter is None else replace(self.settings, jitter=jitter)
        return plan_sample(boxes, labels, image.shape[0], image.shape[1], rng, settings)

    def geometric(self, image: np.ndarray, boxes, labels, rng):
        """Crop, resize to SxS, flip (draws those two only) -> (uint8 (S, S, 3), boxes (k, 4), labels (k,))."""
        plan = self.plan(image, boxes, labels, rng, jitter=False)
        return apply_geometry(image, plan, self.size), plan.boxes, plan.labels

    def __call__(self, image: np.ndarray, target: dict, rng):
        plan = self.plan(image, target["boxes"], target["labels"], rng)
        chw = to_chw(apply_geometry(image, plan, self.size))
        if not self.defer_jitter:
            chw = jitter_normalize(chw[None], plan.factors[None], plan.order[None])[0]
        return chw, {**target, "boxes": plan.boxes, "labels": plan.labels}


class EvalTransform:
    """Eval preprocessing (benchmark.md §5 eval-300): bilinear resize to SxS, /255, normalise.

    ``__call__(image, target=None)`` -> (float32 (3, S, S), target unchanged: normalised boxes
    do not move under a resize). With ``defer_normalize`` the image stays uint8 (3, S, S); run
    `normalize` on the batch.
    """

    def __init__(self, size: int = 300, defer_normalize: bool = False):
        self.size, self.defer_normalize = int(size), defer_normalize

    def __call__(self, image: np.ndarray, target: dict | None = None):
        check_image(image)
        chw = to_chw(resize_uint8(image, self.size))
        if not self.defer_normalize:
            chw = normalize(chw[None])[0]
        return chw, target


def preprocess_for_inference(image, size: int = 1200) -> np.ndarray:
    """SSD-Large input (benchmark.md §5): RGB, bilinear resize to SxS (aspect not kept), /255, mean/std.

    ``image``: uint8 (H, W, 3) RGB array or a PIL image (any mode; converted to RGB).
    Returns float32 (3, S, S) numpy. The reference uses OpenCV INTER_LINEAR; Pillow's bilinear
    filter is the same when enlarging (COCO images are ~640x480) and antialiases when shrinking.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    check_image(image)
    chw = to_chw(resize_uint8(image, size))
    return normalize(chw[None])[0].numpy()
