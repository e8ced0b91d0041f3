"""Colour jitter and normalisation on image batches, on any device (benchmark.md §5).

Semantics follow torchvision's ``ColorJitter`` on float tensors: brightness, contrast,
saturation and hue factors drawn uniformly, the four operations applied in a random order per
image, each result clamped to [0, 1]. Batches are (N, 3, H, W) float in [0, 1] (uint8 is scaled
by 1/255 first). Factors and orders are drawn on the host, so a GPU batch needs no device sync.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

# benchmark.md §5 (MLPerf reference ColorJitter strengths).
JITTER = {"brightness": 0.125, "contrast": 0.5, "saturation": 0.5, "hue": 0.05}
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, benchmark.md §5
STD = (0.229, 0.224, 0.225)
# torchvision / ITU-R 601 luma weights used for grayscale.
_LUMA = (0.2989, 0.587, 0.114)


def jitter_ranges(strength: dict = JITTER) -> np.ndarray:
    """(4, 2) [low, high] of the brightness, contrast, saturation and hue factors."""
    b, c, s, h = (strength[k] for k in ("brightness", "contrast", "saturation", "hue"))
    return np.array([[max(0.0, 1 - b), 1 + b], [max(0.0, 1 - c), 1 + c], [max(0.0, 1 - s), 1 + s], [-h, h]])


def draw_jitter(n: int, generator, strength: dict = JITTER) -> tuple[np.ndarray, np.ndarray]:
    """Draw jitter parameters for n images.

    ``generator``: numpy Generator or CPU torch.Generator. Returns factors float32 (n, 4)
    (brightness, contrast, saturation, hue shift) and order int64 (n, 4) (a permutation of
    0..3 per image: the operations in the order they are applied).
    """
    if isinstance(generator, np.random.Generator):
        u, keys = generator.random((n, 4)), generator.random((n, 4))
    elif isinstance(generator, torch.Generator):
        if generator.device.type != "cpu":
            raise ValueError(f"jitter needs a CPU torch.Generator (host-side draws), got {generator.device}")
        u = torch.rand((n, 4), generator=generator, dtype=torch.float64).numpy()
        keys = torch.rand((n, 4), generator=generator, dtype=torch.float64).numpy()
    else:
        raise TypeError(f"expected a numpy Generator or torch.Generator, got {type(generator).__name__}")
    lo_hi = jitter_ranges(strength)
    factors = lo_hi[:, 0] + u * (lo_hi[:, 1] - lo_hi[:, 0])
    return factors.astype(np.float32), np.argsort(keys, axis=1).astype(np.int64)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor -> ``device`` without blocking the host (pinned + non_blocking on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    return (x * _luma(x.dtype, x.device)).sum(dim=1, keepdim=True)


@functools.lru_cache(maxsize=16)
def _luma(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return to_device(torch.tensor(_LUMA, dtype=dtype).view(1, 3, 1, 1), device)


def _blend(x: torch.Tensor, ref: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """f * x + (1 - f) * ref, clamped to [0, 1] (torchvision's _blend)."""
    return torch.lerp(ref, x, f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Scale towards black: clamp(f * x)."""
    return (x * f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma (one scalar per image)."""
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the per-pixel luma."""
    return _blend(x, _gray(x), f)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``shift`` turns (in [-0.5, 0.5]); saturation and value are kept.

    Works in sextants (h6 = 6 h): RGB -> h6 as usual, then each channel is
    v - chroma * clamp(min(k, 4 - k), 0, 1) with k = (n + h6) mod 6 and n = 5, 3, 1 for R, G, B
    (HSV -> RGB with v * s = chroma, so s is never formed). Grey pixels (chroma 0) stay grey.
    Branches are written as 0/1 masks: on CPU that is ~2x faster than torch.where.
    """
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    chroma = v - torch.minimum(torch.minimum(r, g), b)
    is_r = (v == r).to(x.dtype)  # red is the maximum: h6 = (g - b) / chroma
    is_g = (v == g).to(x.dtype) * (1 - is_r)  # green: h6 = 2 + (b - r) / chroma
    is_b = 1 - is_r - is_g  # blue: h6 = 4 + (r - g) / chroma
    num = is_r * (g - b) + is_g * (b - r) + is_b * (r - g)
    h6 = num.div_(chroma.clamp_min(1e-12)).add_(2 * is_g + 4 * is_b).add_(6.0 * shift.view(-1, 1, 1))
    k = h6.unsqueeze(1) + _sextant_offsets(x.dtype, x.device)
    k = k - 6.0 * torch.floor(k * (1 / 6.0))  # mod 6
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (v.unsqueeze(1) - chroma.unsqueeze(1) * ramp).clamp_(0.0, 1.0)


@functools.lru_cache(maxsize=16)
def _sextant_offsets(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return to_device(torch.tensor([5.0, 3.0, 1.0], dtype=dtype).view(1, 3, 1, 1), device)


OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _apply_ops(x: torch.Tensor, factors: torch.Tensor, order) -> torch.Tensor:
    for op in order:
        x = OPS[int(op)](x, factors[:, int(op)])
    return x


def color_jitter(x: torch.Tensor, factors, order) -> torch.Tensor:
    """Jitter float (N, 3, H, W) in [0, 1] with factors (N, 4) and per-image op orders (N, 4).

    Images sharing an order (at most 24 groups) are processed together: one gather, the four
    ops per group on contiguous slices, one scatter back. Returns a new tensor; x is untouched.
    """
    order = np.asarray(order, dtype=np.int64).reshape(-1, 4)
    if order.shape[0] != x.shape[0]:
        raise ValueError(f"jitter order has {order.shape[0]} rows for a batch of {x.shape[0]}")
    f = to_device(torch.as_tensor(np.asarray(factors, dtype=np.float32)), x.device)
    keys = order @ np.array([64, 16, 4, 1])
    if (keys == keys[0]).all():
        return _apply_ops(x, f, order[0])
    perm = np.argsort(keys, kind="stable")
    starts = np.flatnonzero(np.diff(keys[perm])) + 1
    perm_t = to_device(torch.from_numpy(perm), x.device)
    xs, fs = x[perm_t], f[perm_t]
    for s, e in zip([0, *starts], [*starts, len(perm)]):
        xs[s:e] = _apply_ops(xs[s:e], fs[s:e], order[perm[s]])
    out = torch.empty_like(xs)
    out[perm_t] = xs
    return out


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (0..255) -> float32 / 255 (a new tensor); float (0..1) -> float32 (as is when float32)."""
    return batch.to(torch.float32) / 255.0 if batch.dtype == torch.uint8 else batch.to(torch.float32)


def normalize(batch: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """(N, 3, H, W) uint8 (0..255) or float (0..1) -> float32 (x - mean) / std; new tensor."""
    x = to_unit(batch)
    m, s = _stats(tuple(mean), tuple(std), x.device)
    return (x - m) / s


def jitter_normalize(batch: torch.Tensor, factors, order, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Colour jitter with given parameters (none when ``factors`` is None), then `normalize`.

    ``batch`` (N, 3, S, S) uint8 (0..255) or float (0..1), any device; ``factors`` (N, 4) and
    ``order`` (N, 4) as `draw_jitter` returns them. Returns ``dtype`` (N, 3, S, S), normalised.
    """
    x = to_unit(batch)
    if factors is not None:
        x = color_jitter(x, factors, order)
    return normalize(x).to(dtype)


def jitter_and_normalize(batch: torch.Tensor, generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Colour jitter (benchmark.md §5 strengths) + /255 + mean/std on a (N, 3, S, S) batch, any device.

    ``batch``: uint8 (0..255) or float (0..1); ``generator``: numpy Generator or CPU
    torch.Generator (parameters are drawn on the host, so there is no device sync).
    Returns ``dtype`` (N, 3, S, S), normalised.
    """
    factors, order = draw_jitter(batch.shape[0], generator)
    return jitter_normalize(batch, factors, order, dtype)


@functools.lru_cache(maxsize=16)
def _stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, 1, 1) mean and std on a device, made once (a host-to-device copy blocks)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    return to_device(m, device), to_device(torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), device)
