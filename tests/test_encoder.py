"""Target encoding: hand-computed matches, forced matches, padding, and a per-image reference loop."""

import math

import pytest
import torch

from ssdbench.model.boxes import decode_offsets
from ssdbench.model.encoder import Encoder, encode_targets

# Four default boxes tiling the unit square, xywh: ltrb (0,0,.5,.5), (.5,0,1,.5), (0,.5,.5,1), (.5,.5,1,1).
QUAD = torch.tensor(
    [[0.25, 0.25, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]]
)


def test_hand_computed_match_forced_match_and_padding():
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.8, 0.8], [0.5, 0.0, 1.0, 0.5]]])
    labels = torch.tensor([[3, 7, 0]])  # the third box is padding although it equals default box 1
    loc, lab = encode_targets(gt, labels, QUAD)
    # box 0: IoU 1 with gt 0; box 3: IoU 0.09 / 0.25 = 0.36 with gt 1, positive only by the forced match.
    assert lab.tolist() == [[3, 0, 0, 7]]
    assert torch.allclose(loc[0, 0], torch.zeros(4))
    # gt 1 xywh = (0.65, 0.65, 0.3, 0.3) against (0.75, 0.75, 0.5, 0.5)
    expected = [(0.65 - 0.75) / 0.5 / 0.1] * 2 + [math.log(0.3 / 0.5) / 0.2] * 2
    assert torch.allclose(loc[0, 3], torch.tensor(expected), atol=1e-5)
    assert torch.equal(loc[0, 1], torch.zeros(4)) and torch.equal(loc[0, 2], torch.zeros(4))


def test_two_ground_truths_claiming_one_box_later_wins():
    # Both have default box 0 as their best box; gt 0 has IoU 1 with it, gt 1 only 0.36, but gt 1
    # claims it last (reference: best_dbox_idx[best_bbox_idx[idx]] = idx in gt order).
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.3, 0.3]]])
    _, lab = encode_targets(gt, torch.tensor([[4, 9]]), QUAD)
    assert lab.tolist() == [[9, 0, 0, 0]]


def test_empty_and_mixed_batch():
    gt = torch.zeros(3, 5, 4)
    labels = torch.zeros(3, 5, dtype=torch.int64)
    gt[1, 2] = torch.tensor([0.5, 0.5, 1.0, 1.0])
    labels[1, 2] = 2  # a real box after padding entries
    loc, lab = encode_targets(gt, labels, QUAD)
    assert loc.shape == (3, 4, 4) and lab.shape == (3, 4) and lab.dtype == torch.int64
    assert torch.isfinite(loc).all()
    assert lab[0].eq(0).all() and lab[2].eq(0).all()
    assert lab[1].tolist() == [0, 0, 0, 2]
    loc, lab = encode_targets(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64), QUAD)  # M = 0
    assert loc.shape == (2, 4, 4) and lab.eq(0).all() and loc.eq(0).all()


def _iou(a, b):
    """Independent pairwise IoU (ltrb), written per coordinate."""
    iw = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(
        min=0
    )
    ih = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp(
        min=0
    )
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _reference_one_image(gt, labels, dboxes_xywh):
    """MLPerf-style per-image matching with an explicit Python loop over ground truths."""
    d_ltrb = torch.cat(
        [dboxes_xywh[:, :2] - dboxes_xywh[:, 2:] / 2, dboxes_xywh[:, :2] + dboxes_xywh[:, 2:] / 2], 1
    )
    real = labels > 0
    boxes, labs = gt[real], labels[real]
    nb = dboxes_xywh.shape[0]
    if len(boxes) == 0:
        return torch.zeros(nb, dtype=torch.int64), torch.full((nb,), -1)
    ious = _iou(boxes, d_ltrb)  # (M, B)
    best_iou, best_gt = ious.max(dim=0)
    for j in range(len(boxes)):  # later ground truths overwrite earlier ones
        b = int(ious[j].argmax())
        best_iou[b], best_gt[b] = 2.0, j
    out = torch.where(best_iou > 0.5, labs[best_gt], torch.zeros_like(best_gt))
    matched_index = torch.nonzero(real).squeeze(1)[best_gt]
    return out, torch.where(best_iou > 0.5, matched_index, torch.full_like(best_gt, -1))


def _random_batch(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    lt = torch.rand(n, m, 2, generator=g) * 0.7
    wh = torch.rand(n, m, 2, generator=g) * 0.4 + 0.02
    labels = torch.randint(1, 81, (n, m), generator=g)
    labels[torch.rand(n, m, generator=g) < 0.4] = 0  # padding anywhere, not only at the end
    labels[0] = 0  # one image without objects
    return torch.cat([lt, lt + wh], -1), labels


def test_matches_per_image_reference_and_round_trip():
    encoder = Encoder("ssd128_mini")
    gt, labels = _random_batch(4, 12, seed=0)
    loc, lab = encoder(gt, labels)
    assert loc.shape == (4, encoder.num_boxes, 4)
    for i in range(4):
        ref_labels, matched = _reference_one_image(gt[i], labels[i], encoder.dboxes_xywh)
        assert torch.equal(lab[i], ref_labels), f"image {i}"
        pos = matched >= 0
        # encode -> decode recovers the matched ground-truth boxes (ltrb)
        decoded = decode_offsets(loc[i][pos], encoder.dboxes_xywh[pos])
        assert torch.allclose(decoded, gt[i][matched[pos]], atol=1e-5)
    assert lab[0].eq(0).all() and torch.isfinite(loc).all()


def test_bad_inputs_name_the_culprit():
    with pytest.raises(ValueError, match="gt_boxes"):
        encode_targets(torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64), QUAD)
    with pytest.raises(ValueError, match="gt_labels"):
        encode_targets(torch.zeros(1, 2, 4), torch.zeros(1, 3, dtype=torch.int64), QUAD)
    with pytest.raises(ValueError, match="dboxes_xywh"):
        encode_targets(torch.zeros(1, 2, 4), torch.zeros(1, 2, dtype=torch.int64), QUAD[:, :3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    gt, labels = _random_batch(3, 10, seed=1)
    encoder = Encoder("ssd300_r34")
    loc, lab = encoder(gt, labels)
    loc_c, lab_c = encoder(gt.cuda(), labels.cuda())
    assert torch.equal(lab, lab_c.cpu()) and torch.allclose(loc, loc_c.cpu(), atol=1e-4)


def test_iou_matches_box_iou():
    from ssdbench.model.boxes import box_iou, default_boxes
    from ssdbench.model.encoder import _iou_with_dboxes

    gt, _ = _random_batch(2, 7, seed=3)
    gt[0, 0] = torch.tensor([0.4, 0.4, 0.4, 0.6])  # degenerate box
    d = default_boxes("ssd128_mini", "ltrb")
    assert torch.equal(_iou_with_dboxes(gt, d), box_iou(gt, d.unsqueeze(0)))
