"""Post-processing against a plain per-image, per-class greedy NMS written here.

Tie order used by both sides: per class score descending then lower default-box index; per
image score descending, then lower class, then the per-class rank.
"""

import pytest
import torch

from ssdbench.model import nms as nms_module
from ssdbench.model.boxes import default_boxes
from ssdbench.model.postprocess import Detections, NmsSettings, postprocess, postprocess_padded


def _decode(locs, dboxes):
    """Independent decode (benchmark.md §4): locs (4, B), dboxes (B, 4) xywh -> (B, 4) ltrb."""
    t = locs.t()
    xy = 0.1 * t[:, :2] * dboxes[:, 2:] + dboxes[:, :2]
    wh = torch.exp(0.2 * t[:, 2:]) * dboxes[:, 2:]
    return torch.cat([xy - wh / 2, xy + wh / 2], dim=1)


def _iou_one(box, others):
    """IoU of one ltrb box (4,) against (K, 4), clamped, float32."""
    iw = (torch.minimum(box[2], others[:, 2]) - torch.maximum(box[0], others[:, 0])).clamp(min=0)
    ih = (torch.minimum(box[3], others[:, 3]) - torch.maximum(box[1], others[:, 1])).clamp(min=0)
    inter = iw * ih
    area = lambda b: (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    return inter / (area(box) + area(others) - inter).clamp(min=torch.finfo(torch.float32).tiny)


def _reference(locs, scores, dboxes, thr=0.05, iou_thr=0.5, per_class=200, per_image=200):
    """Plain loops: per image, per class, greedy NMS one candidate at a time."""
    out = []
    for i in range(locs.shape[0]):
        boxes = _decode(locs[i].float(), dboxes)
        probs = scores[i].float().softmax(dim=0)
        found = []  # (score, class, rank, box)
        for c in range(1, scores.shape[1]):
            cand = [(probs[c, b].item(), b) for b in range(boxes.shape[0]) if probs[c, b] > thr]
            cand = sorted(cand, key=lambda sb: (-sb[0], sb[1]))[:per_class]
            kept = []
            for rank, (s, b) in enumerate(cand):
                if not kept or _iou_one(boxes[b], boxes[[k for _, k in kept]]).max() < iou_thr:
                    kept.append((rank, b))
                    found.append((s, c, rank, boxes[b]))
        found = sorted(found, key=lambda f: (-f[0], f[1], f[2]))[:per_image]
        out.append(
            Detections(
                torch.stack([f[3] for f in found]) if found else torch.zeros(0, 4),
                torch.tensor([f[1] for f in found], dtype=torch.int64),
                torch.tensor([f[0] for f in found], dtype=torch.float32),
            )
        )
    return out


def _tied_inputs(n=3, b=300, c=6, seed=0):
    """Logits and offsets drawn from small palettes: many exact score ties and identical boxes."""
    g = torch.Generator().manual_seed(seed)
    dboxes = torch.cat(
        [torch.rand(b, 2, generator=g) * 0.8 + 0.1, torch.rand(b, 2, generator=g) * 0.3 + 0.05], 1
    )
    dboxes[b // 2 :] = dboxes[: b - b // 2]  # duplicated default boxes: identical candidates
    logit_palette = torch.randn(7, c, generator=g) * 2.0
    logit_palette[:, 3] = -30.0  # class 3 is always empty
    scores = logit_palette[torch.randint(0, 7, (n, b), generator=g)].transpose(1, 2).contiguous()
    loc_palette = torch.randn(5, 4, generator=g)
    locs = loc_palette[torch.randint(0, 5, (n, b), generator=g)].transpose(1, 2).contiguous()
    scores[-1, 0] = 30.0  # last image: background everywhere, nothing above 0.05
    return locs, scores, dboxes


def _random_inputs(n, b, c, seed):
    g = torch.Generator().manual_seed(seed)
    dboxes = torch.cat([torch.rand(b, 2, generator=g), torch.rand(b, 2, generator=g) * 0.4 + 0.02], 1)
    return torch.randn(n, 4, b, generator=g), torch.randn(n, c, b, generator=g) * 2.5, dboxes


def _assert_same(got, ref):
    assert len(got) == len(ref)
    for i, (a, r) in enumerate(zip(got, ref)):
        assert torch.equal(a.labels, r.labels), f"image {i}: labels differ"
        assert torch.equal(a.scores, r.scores), f"image {i}: scores differ"
        assert torch.allclose(a.boxes, r.boxes, atol=1e-6), f"image {i}: boxes differ"


CASES = {
    "ties": lambda: (_tied_inputs(), {"max_per_class": 25, "max_per_image": 40}),
    "ties_defaults": lambda: (_tied_inputs(seed=1), {}),
    "random": lambda: (_random_inputs(2, 400, 5, seed=2), {"max_per_class": 60, "max_per_image": 90}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_kernel_matches_reference(case):
    (locs, scores, dboxes), kw = CASES[case]()
    got = postprocess(locs, scores, dboxes, nms_kernel="greedy", **kw)
    _assert_same(got, _reference(locs, scores, dboxes, **{k.replace("max_", ""): v for k, v in kw.items()}))


def _fake_torchvision_nms(boxes, scores, iou_threshold):
    """Stand-in with torchvision.ops.nms semantics: score order, drop IoU > threshold."""
    order = scores.argsort(descending=True).tolist()
    keep, dropped = [], set()
    for pos, i in enumerate(order):
        if i in dropped:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        if rest:
            over = _iou_one(boxes[i], boxes[rest]) > iou_threshold
            dropped.update(j for j, o in zip(rest, over.tolist()) if o)
    return torch.tensor(keep, dtype=torch.int64)


@pytest.mark.parametrize("case", ["ties", "random"])
def test_torchvision_kernel_glue_matches_reference(case, monkeypatch):
    if not nms_module.HAVE_TORCHVISION:
        monkeypatch.setattr(nms_module, "_tv_nms", _fake_torchvision_nms)
    (locs, scores, dboxes), kw = CASES[case]()
    got = postprocess(locs, scores, dboxes, nms_kernel="torchvision", **kw)
    _assert_same(got, _reference(locs, scores, dboxes, **{k.replace("max_", ""): v for k, v in kw.items()}))


def test_model_name_and_81_classes():
    g = torch.Generator().manual_seed(5)
    b = default_boxes("ssd128_mini").shape[0]
    locs, scores = torch.randn(1, 4, b, generator=g), torch.randn(1, 81, b, generator=g) * 2.5
    got = postprocess(locs, scores, "ssd128_mini")
    assert len(got[0].scores) == 200  # enough candidates to fill the image
    _assert_same(got, _reference(locs, scores, default_boxes("ssd128_mini")))


def test_padded_form_and_ordering():
    (locs, scores, dboxes), _ = CASES["ties"]()
    dets = postprocess_padded(locs, scores, dboxes, NmsSettings(max_per_class=10, max_per_image=300))
    assert dets.boxes.shape == (3, 300, 4) and dets.scores.shape == (3, 300) and dets.labels.shape == (3, 300)
    counts = dets.counts.tolist()
    assert counts[-1] == 0 and all(0 < c <= 4 * 10 for c in counts[:-1])  # 4 non-empty classes x 10
    for i, c in enumerate(counts):
        assert dets.scores[i, :c].gt(0.05).all() and (dets.scores[i, :-1] >= dets.scores[i, 1:]).all()
        assert (
            dets.labels[i, :c].ge(1).all()
            and dets.labels[i, :c].lt(6).all()
            and dets.labels[i, :c].ne(3).all()
        )
        assert dets.labels[i, c:].eq(0).all() and dets.boxes[i, c:].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_upcast(dtype):
    locs, scores, dboxes = _random_inputs(2, 200, 4, seed=7)
    locs, scores = locs.to(dtype), scores.to(dtype)
    got = postprocess(locs, scores, dboxes)
    assert got[0].scores.dtype == torch.float32 and got[0].boxes.dtype == torch.float32
    _assert_same(got, postprocess(locs.float(), scores.float(), dboxes))


def test_bad_inputs_name_the_culprit():
    locs, scores, dboxes = _random_inputs(1, 50, 4, seed=0)
    with pytest.raises(ValueError, match="locs"):
        postprocess(locs.transpose(1, 2), scores, dboxes)
    with pytest.raises(ValueError, match="scores"):
        postprocess(locs, scores[:, :, :40], dboxes)
    with pytest.raises(ValueError, match="default boxes"):
        postprocess(locs, scores, dboxes[:40])
    with pytest.raises(ValueError, match="unknown model"):
        postprocess(locs, scores, "ssd9000")
    with pytest.raises(ValueError, match="NMS kernel"):
        postprocess(locs, scores, dboxes, nms_kernel="fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    (locs, scores, dboxes), kw = CASES["ties"]()
    cpu = postprocess_padded(locs, scores, dboxes, NmsSettings(**kw))
    gpu = postprocess_padded(locs.cuda(), scores.cuda(), dboxes.cuda(), NmsSettings(**kw))
    assert torch.equal(cpu.labels, gpu.labels.cpu()) and torch.equal(cpu.counts, gpu.counts.cpu())
    assert torch.allclose(cpu.scores, gpu.scores.cpu()) and torch.allclose(
        cpu.boxes, gpu.boxes.cpu(), atol=1e-6
    )


# Hand cases for the kernels, boxes sorted by priority. IoU(A, B) = 0.125 / 0.25 = 0.5 exactly
# (dropped: benchmark.md §4 drops IoU >= 0.5); C is disjoint; D equals A but is invalid.
# Chain: IoU(E, F) = 0.6 drops F; IoU(E, G) = 1/3 and G's overlap with F does not count (F dropped).
HAND_BOXES = torch.tensor(
    [
        [[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.25], [0.6, 0.6, 0.9, 0.9], [0, 0, 0.5, 0.5]],
        [[0, 0, 0.4, 1], [0.1, 0, 0.5, 1], [0.2, 0, 0.6, 1], [0.9, 0.9, 0.9, 0.9]],
    ]
)
HAND_VALID = torch.tensor([[True, True, True, False], [True, True, True, True]])
HAND_KEEP = [[True, False, True, False], [True, False, True, True]]


@pytest.mark.parametrize("kernel", ["greedy", "torchvision"])
def test_kernels_on_hand_cases(kernel, monkeypatch):
    if not nms_module.HAVE_TORCHVISION:
        monkeypatch.setattr(nms_module, "_tv_nms", _fake_torchvision_nms)
    keep = nms_module.nms_mask(HAND_BOXES, HAND_VALID, 0.5, kernel)
    assert keep.tolist() == HAND_KEEP
    # the same groups batched under extra leading dimensions give the same answer
    keep = nms_module.nms_mask(HAND_BOXES.expand(3, 2, 4, 4), HAND_VALID.expand(3, 2, 4), 0.5, kernel)
    assert keep.tolist() == [HAND_KEEP] * 3
    if kernel == "torchvision":  # groups split over several nms calls
        keep = nms_module.torchvision_nms_mask(
            HAND_BOXES.expand(3, 2, 4, 4), HAND_VALID.expand(3, 2, 4), 0.5, 8
        )
        assert keep.tolist() == [HAND_KEEP] * 3


def test_padded_path_has_no_host_sync():
    """Dynamo traces the whole greedy path as one graph: no .item(), nonzero or data-dependent shape."""
    locs, scores, dboxes = _random_inputs(2, 120, 4, seed=9)
    explained = torch._dynamo.explain(postprocess_padded)(locs, scores, dboxes, NmsSettings(max_per_class=20))
    torch._dynamo.reset()  # leave no compiled state to later tests
    assert explained.graph_break_count == 0 and explained.graph_count == 1
