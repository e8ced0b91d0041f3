"""SSD loss: a case computed by hand, a slow per-image reference, gradients, empty images."""

import math

import pytest
import torch

from ssdbench.model.loss import SSDLoss, hard_negative_mask, ssd_loss


def _hand_case():
    """N=3 images, B=6 default boxes, C=3 classes."""
    locs = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(0))
    scores = torch.zeros(3, 3, 6)
    targets = torch.zeros(3, 6, 4)
    labels = torch.zeros(3, 6, dtype=torch.int64)
    # image 0: one positive (box 0, class 1); negatives 1..5 have logit a on class 1.
    labels[0, 0] = 1
    locs[0, :, 0] = torch.tensor([0.5, -2.0, 0.0, 0.0])  # SmoothL1: 0.125 + 1.5 + 0 + 0
    scores[0, 1, 1:] = torch.tensor([0.0, 1.0, 2.0, 3.0, -1.0])
    # image 1: two positives (boxes 2 and 4, class 2); 3 x 2 = 6 > 4 negatives, so all 4 count.
    labels[1, 2], labels[1, 4] = 2, 2
    locs[1, :, 2] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # 0.5
    locs[1, :, 4] = torch.tensor([0.0, 0.0, 0.0, 0.0])
    targets[1, 4] = torch.tensor([0.0, 0.0, 0.0, 3.0])  # 2.5
    scores[1, 2, 2] = 1.0
    # image 2: no positives, contributes 0 whatever its outputs.
    scores[2] = 5.0 * torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    return locs, scores, targets, labels


def test_hand_computed_case():
    locs, scores, targets, labels = _hand_case()
    ce_neg0 = lambda a: math.log(2 + math.exp(a))
    image0 = 1.625 + math.log(3) + ce_neg0(3.0) + ce_neg0(2.0) + ce_neg0(1.0)  # 3 hardest of 5 negatives
    ce_pos1 = math.log(2 + math.e) - 1.0  # box 2: logits (0, 0, 1), label 2
    image1 = (0.5 + 2.5 + ce_pos1 + math.log(3) + 4 * math.log(3)) / 2
    expected = (image0 + image1 + 0.0) / 3
    assert ssd_loss(locs, scores, targets, labels).item() == pytest.approx(expected, rel=1e-5)
    assert SSDLoss()(locs, scores, targets, labels).item() == pytest.approx(expected, rel=1e-5)


def _reference_loss(locs, scores, targets, labels):
    """Slow, independent per-image loop: Python lists and sorted() for the hard negatives."""
    total = 0.0
    for i in range(locs.shape[0]):
        logp = scores[i].double().log_softmax(dim=0)  # (C, B)
        ce = [-logp[labels[i, b], b].item() for b in range(labels.shape[1])]
        pos = [b for b in range(labels.shape[1]) if labels[i, b] > 0]
        if not pos:
            continue
        neg = sorted((b for b in range(labels.shape[1]) if labels[i, b] == 0), key=lambda b: -ce[b])
        loss = sum(ce[b] for b in pos) + sum(ce[b] for b in neg[: 3 * len(pos)])
        for b in pos:
            for j in range(4):
                d = abs(locs[i, j, b].item() - targets[i, b, j].item())
                loss += 0.5 * d * d if d < 1 else d - 0.5
        total += loss / len(pos)
    return total / locs.shape[0]


def _random_case(n=4, b=40, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(n, 4, b, generator=g) * 2
    scores = torch.randn(n, c, b, generator=g) * 3
    targets = torch.randn(n, b, 4, generator=g)
    labels = torch.randint(1, c, (n, b), generator=g) * (torch.rand(n, b, generator=g) < 0.15)
    labels[1] = 0  # an image without objects
    labels[2, :30] = 1  # many positives: 3 x num_pos exceeds the negatives
    return locs, scores, targets, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_per_image_reference(seed):
    case = _random_case(seed=seed)
    assert ssd_loss(*case).item() == pytest.approx(_reference_loss(*case), rel=1e-5)


def test_gradients_reach_only_selected_boxes():
    locs, scores, targets, labels = _hand_case()
    locs.requires_grad_(True)
    scores.requires_grad_(True)
    ssd_loss(locs, scores, targets, labels).backward()
    positive = labels > 0
    assert locs.grad.abs().sum(1)[~positive].eq(0).all() and locs.grad[0, :2, 0].abs().gt(0).all()
    used = scores.grad.abs().sum(1) > 0  # (N, B)
    assert used[0].tolist() == [True, False, True, True, True, False]  # box 0 + a = 1, 2, 3
    assert used[1].all() and not used[2].any()


def test_zero_object_batch_is_zero_and_finite():
    locs, scores, targets, _ = _hand_case()
    scores.requires_grad_(True)
    loss = ssd_loss(locs, scores, targets, torch.zeros(3, 6, dtype=torch.int64))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(scores.grad).all()


def test_hard_negative_ties_pick_lower_index():
    ce = torch.tensor([[0.5, 1.0, 1.0, 1.0, 0.2, 1.0]])
    positive = torch.tensor([[True, False, False, False, False, False]])
    # k = 3 of the four tied negatives 1, 2, 3, 5: the lower indices win.
    assert hard_negative_mask(ce, positive).tolist() == [[False, True, True, True, False, False]]


def test_half_precision_under_autocast_computes_in_fp32():
    locs, scores, targets, labels = _random_case(seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ssd_loss(locs.bfloat16(), scores.bfloat16(), targets, labels)
    assert loss.dtype == torch.float32
    expected = ssd_loss(locs.bfloat16().float(), scores.bfloat16().float(), targets, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bad_shapes_name_the_culprit():
    locs, scores, targets, labels = _hand_case()
    with pytest.raises(ValueError, match="locs"):
        ssd_loss(locs.transpose(1, 2), scores, targets, labels)
    with pytest.raises(ValueError, match="loc_targets"):
        ssd_loss(locs, scores, targets.transpose(1, 2), labels)
    with pytest.raises(ValueError, match="labels"):
        ssd_loss(locs, scores, targets, labels[:, :5])


def test_encode_and_loss_have_no_host_sync():
    """Dynamo traces target encoding + loss as one graph: no .item(), nonzero or data-dependent shape."""
    from ssdbench.model.encoder import encode_targets

    locs, scores, _, _ = _hand_case()
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5]], [[0.2, 0.2, 0.9, 0.9]], [[0.0, 0.0, 0.0, 0.0]]])
    dboxes = torch.rand(6, 4) * 0.5 + 0.25

    def step(gt, gt_labels):
        loc_targets, labels = encode_targets(gt, gt_labels, dboxes)
        return ssd_loss(locs, scores, loc_targets, labels)

    explained = torch._dynamo.explain(step)(gt, torch.tensor([[1], [2], [0]]))
    torch._dynamo.reset()  # leave no compiled state to later tests
    assert explained.graph_break_count == 0 and explained.graph_count == 1
