"""Default boxes and box arithmetic.

Box formats used across the project:
- ``xywh``: (cx, cy, w, h), normalised to [0, 1] of the input image.
- ``ltrb``: (left, top, right, bottom), normalised.
"""

from __future__ import annotations

import functools
import math

import torch

from ssdbench.model.specs import ModelSpec, get_spec


def _level_sizes(spec: ModelSpec, level: int) -> list[tuple[float, float]]:
    """Box (w, h) shapes of one level, in the order the heads emit them (benchmark.md §2)."""
    size = spec.input_size
    s_k = spec.scales[level] / size
    s_next = spec.scales[level + 1] / size
    sizes = [(s_k, s_k)]  # square box at the level's scale
    s_prime = math.sqrt(s_k * s_next)
    sizes.append((s_prime, s_prime))  # square box between this scale and the next
    for a in spec.aspect_ratios[level]:  # a wide and a tall box per aspect ratio
        w, h = s_k * math.sqrt(a), s_k / math.sqrt(a)
        sizes.extend([(w, h), (h, w)])
    return sizes


def _default_boxes_xywh(spec: ModelSpec) -> torch.Tensor:
    boxes = []
    for level, grid in enumerate(spec.grid_sizes):
        step = spec.steps[level]
        f_k = spec.input_size // step if spec.fk_integer_division else spec.input_size / step
        sizes = torch.tensor(_level_sizes(spec, level), dtype=torch.float64)  # (S, 2)
        if sizes.shape[0] != spec.boxes_per_cell[level]:
            raise AssertionError(f"{spec.name}: level {level} has {sizes.shape[0]} box shapes")
        idx = (torch.arange(grid, dtype=torch.float64) + 0.5) / f_k
        cy, cx = torch.meshgrid(idx, idx, indexing="ij")  # rows outer, x fastest
        centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # (G*G, 2)
        level_boxes = torch.cat(
            [centres.unsqueeze(0).expand(len(sizes), -1, -1), sizes[:, None, :].expand(-1, grid * grid, -1)],
            dim=2,
        )  # (S, G*G, 4): box shape outermost, then rows, then columns
        boxes.append(level_boxes.reshape(-1, 4))
    # MLPerf clamps the xywh boxes to [0, 1]; ltrb is derived from the clamped boxes.
    return torch.cat(boxes).clamp_(0.0, 1.0).float()


@functools.cache
def _cached(name: str) -> torch.Tensor:
    return _default_boxes_xywh(get_spec(name))


def default_boxes(name: str | ModelSpec, fmt: str = "xywh") -> torch.Tensor:
    """Default boxes of a model as a (B, 4) float32 tensor, normalised, clamped, in head order.

    `fmt` is ``"xywh"`` (cx, cy, w, h) or ``"ltrb"``.
    """
    boxes = _cached(name.name if isinstance(name, ModelSpec) else name).clone()
    if fmt == "xywh":
        return boxes
    if fmt == "ltrb":
        return xywh_to_ltrb(boxes)
    raise ValueError(f"unknown box format {fmt!r}; use 'xywh' or 'ltrb'")


def xywh_to_ltrb(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) (cx, cy, w, h) -> (..., 4) (l, t, r, b)."""
    c, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([c - 0.5 * wh, c + 0.5 * wh], dim=-1)


def ltrb_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) (l, t, r, b) -> (..., 4) (cx, cy, w, h)."""
    lt, rb = boxes[..., :2], boxes[..., 2:]
    return torch.cat([0.5 * (lt + rb), rb - lt], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of (..., 4) ltrb boxes; degenerate boxes have area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ltrb boxes: a (..., N, 4), b (..., M, 4) -> (..., N, M).

    Overlaps are clamped at zero, so disjoint boxes have IoU 0 (the inference reference does not
    clamp them; benchmark.md §4).
    """
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return inter / union.clamp(min=torch.finfo(inter.dtype).tiny)


def encode_offsets(gt_xywh: torch.Tensor, dboxes_xywh: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """SSD box coding (benchmark.md §3): (..., B, 4) matched ground truth -> (..., B, 4) regression targets.

    t_xy = (g_xy - d_xy) / d_wh / 0.1;  t_wh = log(g_wh / d_wh) / 0.2.
    """
    d_xy, d_wh = dboxes_xywh[..., :2], dboxes_xywh[..., 2:]
    t_xy = (gt_xywh[..., :2] - d_xy) / d_wh / variances[0]
    t_wh = torch.log(gt_xywh[..., 2:].clamp(min=1e-12) / d_wh) / variances[1]
    return torch.cat([t_xy, t_wh], dim=-1)


def decode_offsets(offsets: torch.Tensor, dboxes_xywh: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """Inverse of `encode_offsets`: (..., B, 4) offsets -> (..., B, 4) ltrb boxes (benchmark.md §4).

    The network's (N, 4, B) `locs` are passed as ``locs.transpose(1, 2)``.
    """
    d_xy, d_wh = dboxes_xywh[..., :2], dboxes_xywh[..., 2:]
    xy = variances[0] * offsets[..., :2] * d_wh + d_xy
    wh = torch.exp(variances[1] * offsets[..., 2:]) * d_wh
    return torch.cat([xy - 0.5 * wh, xy + 0.5 * wh], dim=-1)
