"""SSD training loss: SmoothL1 on positives + cross-entropy with 3:1 hard-negative mining (benchmark.md §3).

Per image: SmoothL1 (beta=1) summed over the 4 offsets of the positive default boxes, plus the
cross-entropy of the positives and of the 3 x num_pos negatives with the highest cross-entropy;
the sum is divided by the image's number of positives, images without positives contribute 0,
and the batch loss is the mean over images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEG_POS_RATIO = 3  # benchmark.md §3: 3 hard negatives per positive


def _check_shapes(locs, scores, loc_targets, labels) -> None:
    if locs.dim() != 3 or locs.shape[1] != 4:
        raise ValueError(f"locs must be (N, 4, B), got shape {tuple(locs.shape)}")
    n, _, b = locs.shape
    if scores.dim() != 3 or scores.shape[0] != n or scores.shape[2] != b:
        raise ValueError(f"scores must be (N, C, B) = ({n}, C, {b}), got shape {tuple(scores.shape)}")
    if loc_targets.shape != (n, b, 4):
        raise ValueError(f"loc_targets must be (N, B, 4) = ({n}, {b}, 4), got {tuple(loc_targets.shape)}")
    if labels.shape != (n, b):
        raise ValueError(f"labels must be (N, B) = ({n}, {b}), got {tuple(labels.shape)}")


def hard_negative_mask(ce: torch.Tensor, positive: torch.Tensor, ratio: int = NEG_POS_RATIO) -> torch.Tensor:
    """Select the hard negatives of each image with one sort: (N, B) ce, (N, B) bool -> (N, B) bool.

    Per image the k = min(ratio x num_pos, num_neg) negatives with the highest cross-entropy are
    selected; positives are never selected. Ties are broken by the lower default-box index (stable
    sort), so the selection is deterministic. One sort plus a scatter replaces the references'
    sort-then-argsort (two full sorts). Deviation: the training reference zeroes the positives'
    CE and ranks them with the negatives, so when 3 x num_pos exceeds the number of negatives with
    CE > 0 it can count positives twice; here positives rank last and k is capped by num_neg.
    """
    num_pos = positive.sum(dim=1, keepdim=True)
    num_neg = positive.shape[1] - num_pos
    k = torch.minimum(ratio * num_pos, num_neg)  # (N, 1)
    # CE >= 0, so -1 puts every positive behind every negative.
    ranked = torch.where(positive, torch.full_like(ce, -1.0), ce.detach())
    order = ranked.sort(dim=1, descending=True, stable=True).indices  # (N, B)
    rank_ok = torch.arange(ce.shape[1], device=ce.device).unsqueeze(0) < k  # (N, B) by rank
    return torch.zeros_like(positive).scatter_(1, order, rank_ok)


def ssd_loss(
    locs: torch.Tensor, scores: torch.Tensor, loc_targets: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """SSD loss (benchmark.md §3) -> scalar, mean over the N images.

    locs (N, 4, B) predicted offsets; scores (N, C, B) logits; loc_targets (N, B, 4) and labels
    (N, B) int64 (0 = background) from `encode_targets`. Computed in float32 even under autocast.
    """
    _check_shapes(locs, scores, loc_targets, labels)
    with torch.autocast(device_type=locs.device.type, enabled=False):
        locs, scores, loc_targets = locs.float(), scores.float(), loc_targets.float()
        positive = labels > 0
        num_pos = positive.sum(dim=1)  # (N,)
        sl1 = F.smooth_l1_loss(locs.transpose(1, 2), loc_targets, reduction="none", beta=1.0).sum(dim=2)
        loc_loss = torch.where(positive, sl1, torch.zeros_like(sl1)).sum(dim=1)  # (N,)
        ce = F.cross_entropy(scores, labels.long(), reduction="none")  # (N, B)
        selected = positive | hard_negative_mask(ce, positive)
        conf_loss = torch.where(selected, ce, torch.zeros_like(ce)).sum(dim=1)  # (N,)
        per_image = (loc_loss + conf_loss) / num_pos.clamp(min=1).float()
        per_image = torch.where(num_pos > 0, per_image, torch.zeros_like(per_image))
        return per_image.mean()


class SSDLoss(nn.Module):
    """`ssd_loss` as a module: ``SSDLoss()(locs, scores, loc_targets, labels)`` -> scalar."""

    def forward(
        self, locs: torch.Tensor, scores: torch.Tensor, loc_targets: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return ssd_loss(locs, scores, loc_targets, labels)
