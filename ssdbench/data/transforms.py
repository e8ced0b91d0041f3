"""SSD augmentation and preprocessing (benchmark.md §5).

Inputs are uint8 (H, W, 3) RGB numpy images; boxes are ltrb normalised to [0, 1] of the image,
float32 (n, 4), with int64 labels (n,), throughout.

Training follows the MLPerf reference (crop, flip, resize, colour jitter, /255, normalise), split
in two so that the photometric half can run on the GPU:

- geometric, per sample on CPU workers: `random_crop`, `resize_uint8`, `hflip` -> uint8 (S, S, 3);
- photometric, on (N, 3, S, S) uint8 or float tensors on any device: `color_jitter`,
  `normalize`, or both at once with `jitter_and_normalize(batch, generator)`.

Randomness always comes from an explicit ``numpy.random.Generator`` (or a CPU
``torch.Generator`` for the batched jitter), never from global state.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ssdbench.data.jitter import JITTER, color_jitter, draw_jitter, normalize  # noqa: F401  (re-exported)

# benchmark.md §5: crop modes drawn uniformly: None = keep the whole image, else the minimum IoU every
# ground-truth box must have with the crop (-inf = unconstrained).
CROP_MODES: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -math.inf)
CROP_MIN_SIDE = 0.3  # crop w, h ~ U(0.3, 1) of the image
CROP_ASPECT = (0.5, 2.0)  # allowed crop w / h (in fractions of the image, as the reference)


def check_image(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a uint8 (H, W, 3) array with H, W >= 1."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {desc}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has no pixels: shape {image.shape}")


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise ValueError(f"expected a numpy Generator or an int seed, got {type(rng).__name__}")


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


def random_crop(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng, max_samples: int = 1):
    """SSD random crop (`sample_crop`) -> (image view (h', w', 3), boxes (k, 4), labels (k,)).

    Kept boxes are clipped to the crop and re-normalised to it. Images without boxes are never
    cropped (deliberate: the reference would loop forever on them).
    """
    rng = _as_rng(rng)
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(boxes) == 0:
        return image, boxes, labels
    choice = sample_crop(boxes, image.shape[0], image.shape[1], rng, max_samples)
    if choice is None:
        return image, boxes, labels
    _, (l_px, t_px, r_px, b_px), rect, keep = choice
    kept = boxes[keep].astype(np.float64)
    kept[:, 0::2] = (np.clip(kept[:, 0::2], rect[0], rect[2]) - rect[0]) / (rect[2] - rect[0])
    kept[:, 1::2] = (np.clip(kept[:, 1::2], rect[1], rect[3]) - rect[1]) / (rect[3] - rect[1])
    return image[t_px:b_px, l_px:r_px], np.clip(kept, 0.0, 1.0).astype(np.float32), labels[keep]


def hflip(image: np.ndarray, boxes: np.ndarray):
    """Mirror left-right: image (H, W, 3) -> contiguous copy; ltrb boxes l' = 1 - r, r' = 1 - l."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    flipped = np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], axis=1)
    return np.ascontiguousarray(image[:, ::-1]), flipped.astype(np.float32)


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


class TrainTransform:
    """SSD training augmentation (benchmark.md §5) for one sample.

    ``__call__(image, target, rng)`` takes a uint8 (H, W, 3) image, a target with ``boxes``
    (n, 4) ltrb normalised and ``labels`` (n,), and a numpy Generator (or int seed); returns
    ``(image, target)`` with image (3, S, S) float32 jittered and normalised, or uint8 when
    ``defer_jitter`` (then run `jitter_and_normalize` on the batch, e.g. on the GPU). Other
    target keys pass through; boxes/labels come back as float32 / int64 numpy arrays.
    """

    def __init__(self, size: int = 300, max_samples: int = 1, defer_jitter: bool = False,
                 flip_p: float = 0.5):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.size, self.max_samples = int(size), int(max_samples)
        self.defer_jitter, self.flip_p = defer_jitter, flip_p

    def geometric(self, image: np.ndarray, boxes, labels, rng):
        """Crop, resize to SxS, flip -> (uint8 (S, S, 3), boxes (k, 4), labels (k,)).

        The reference flips before resizing; flipping after is the same image (Pillow's filter
        is mirror-symmetric, up to rounding) on 300x300 instead of the full crop.
        """
        check_image(image)
        rng = _as_rng(rng)
        image, boxes, labels = random_crop(image, boxes, labels, rng, self.max_samples)
        image = resize_uint8(image, self.size)
        if rng.random() < self.flip_p:
            image, boxes = hflip(image, boxes)
        return image, boxes, labels

    def __call__(self, image: np.ndarray, target: dict, rng):
        rng = _as_rng(rng)
        pixels, boxes, labels = self.geometric(image, target["boxes"], target["labels"], rng)
        chw = to_chw(pixels)
        if not self.defer_jitter:
            chw = jitter_and_normalize(chw[None], rng)[0]
        return chw, {**target, "boxes": boxes, "labels": labels}


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


def jitter_and_normalize(batch: torch.Tensor, generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Colour jitter (benchmark.md §5 strengths) + /255 + mean/std on a (N, 3, S, S) batch, any device.

    ``batch``: uint8 (0..255) or float (0..1); ``generator``: numpy Generator or CPU
    torch.Generator (parameters are drawn on the host, so there is no device sync).
    Returns ``dtype`` (N, 3, S, S), normalised.
    """
    factors, order = draw_jitter(batch.shape[0], generator)
    x = batch.to(torch.float32).div_(255.0) if batch.dtype == torch.uint8 else batch.to(torch.float32)
    return normalize(color_jitter(x, factors, order)).to(dtype)
