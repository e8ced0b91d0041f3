"""The augmentation plan: crop rules, draw order, determinism, and its CPU and device executors."""

import numpy as np
import pytest
import torch

from ssdbench.data import augment as A
from ssdbench.data import transforms as T
from ssdbench.data.gpu_pipeline import DevicePipeline, crop_resize, pad_batch
from ssdbench.data.jitter import draw_jitter
from ssdbench.data.loader import InputSettings, Shard

H, W = 60, 80


def boxes_of(rng, n):
    """n random ltrb normalised boxes (float32 (n, 4)) of side 0.1..0.4."""
    lt = rng.random((n, 2)) * 0.6
    return np.concatenate([lt, lt + 0.1 + 0.3 * rng.random((n, 2))], 1).astype(np.float32)


def test_crop_rules():
    rng = np.random.default_rng(0)
    modes = set()
    for it in range(400):
        n = 1 + it % 3  # 1..3 boxes; single large boxes let the 0.7 and 0.9 modes succeed
        centres = rng.uniform(0.3, 0.7, (n, 2))
        sizes = rng.uniform(0.05, 0.5, (n, 2)) if n > 1 else rng.uniform(0.6, 1.0, (1, 2))
        boxes = np.clip(np.concatenate([centres - sizes / 2, centres + sizes / 2], 1), 0, 1)
        choice = A.sample_crop(boxes, 480, 640, rng, max_samples=50)
        if choice is None:
            modes.add(None)
            continue
        min_iou, px, rect, keep = choice
        modes.add(min_iou)
        np.testing.assert_allclose(rect, px / np.array([640, 480, 640, 480]))
        w, h = (px[2] - px[0]) / 640, (px[3] - px[1]) / 480
        assert 0.3 - 2 / 480 <= min(w, h) and max(w, h) <= 1  # U(0.3, 1) up to pixel snapping
        assert (A.box_iou_np(rect[None], boxes) > min_iou).all()  # every box, not just one
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx > rect[0]) & (cx < rect[2]) & (cy > rect[1]) & (cy < rect[3])
        assert keep.any() and (keep == inside).all()
    assert modes == set(A.CROP_MODES)  # all seven modes occur


def test_crop_clips_and_renormalises_by_hand(monkeypatch):
    # Box 0.2..0.6 (x and y) under the crop x 0.4..0.8, y 0..1 of a 10x10 image: clipped to
    # x 0.4..0.6 -> (0.4 - 0.4) / 0.4 = 0 .. (0.6 - 0.4) / 0.4 = 0.5; y unchanged 0.2..0.6.
    boxes = np.array([[0.2, 0.2, 0.6, 0.6], [0.0, 0.0, 0.1, 0.1]])
    choice = (0.1, np.array([4, 0, 8, 10]), np.array([0.4, 0.0, 0.8, 1.0]), np.array([True, False]))
    monkeypatch.setattr(A, "sample_crop", lambda *a, **k: choice)
    image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    out, b, lab = T.random_crop(image, boxes, [3, 4], np.random.default_rng(0))
    assert np.array_equal(out, image[:, 4:8])
    np.testing.assert_allclose(b, [[0.0, 0.2, 0.5, 0.6]], atol=1e-6)
    assert lab.tolist() == [3]
    assert A.box_iou_np(choice[2][None], boxes[:1])[0, 0] == pytest.approx(0.08 / (0.4 + 0.16 - 0.08))
    plan = A.plan_sample(boxes, [3, 4], 10, 10, np.random.default_rng(0), A.AugmentSettings(flip_p=0.0))
    assert plan.crop.tolist() == [4, 0, 8, 10] and np.array_equal(plan.boxes, b)


def test_crop_decisions_equal_the_cpu_transform():
    rng = np.random.default_rng(1)
    for trial in range(30):
        boxes = boxes_of(rng, 4)
        labels = np.arange(1, 5)
        image = np.zeros((H, W, 3), np.uint8)
        crop, b1, l1 = A.crop_targets(boxes, labels, H, W, np.random.default_rng(trial), 50)
        view, b2, l2 = T.random_crop(image, boxes, labels, np.random.default_rng(trial), 50)
        assert np.array_equal(b1, b2) and np.array_equal(l1, l2), trial
        assert view.shape[:2] == (crop[3] - crop[1], crop[2] - crop[0])


@pytest.mark.parametrize("jitter", [True, False])
def test_draw_order_is_crop_flip_jitter(jitter):
    settings = A.AugmentSettings(max_samples=50, flip_p=0.5, jitter=jitter)
    for seed in range(20):
        boxes, labels = boxes_of(np.random.default_rng(100 + seed), 3), np.array([1, 2, 3])
        rng, by_hand = np.random.default_rng(seed), np.random.default_rng(seed)
        plan = A.plan_sample(boxes, labels, H, W, rng, settings)
        crop, b, lab = A.crop_targets(boxes, labels, H, W, by_hand, 50)
        flip = by_hand.random() < 0.5
        assert np.array_equal(plan.crop, crop) and plan.flip == flip and np.array_equal(plan.labels, lab)
        assert np.array_equal(plan.boxes, A.flip_boxes(b) if flip else b)
        if jitter:
            factors, order = draw_jitter(1, by_hand)
            assert np.array_equal(plan.factors, factors[0]) and np.array_equal(plan.order, order[0])
        else:
            assert plan.factors is None and plan.order is None
        assert rng.bit_generator.state == by_hand.bit_generator.state  # nothing else was drawn


def test_same_generator_state_same_plan():
    boxes, labels = boxes_of(np.random.default_rng(0), 4), np.arange(1, 5)
    plans = {}
    for seed in range(30):
        a = A.plan_sample(boxes, labels, H, W, A.sample_rng(7, 2, seed))
        b = A.plan_sample(boxes, labels, H, W, A.sample_rng(7, 2, seed))
        for field in ("crop", "flip", "boxes", "labels", "factors", "order"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (seed, field)
        plans[seed] = (tuple(a.crop), a.flip, tuple(a.factors))
    assert len(set(plans.values())) == 30  # other states give other plans
    assert A.sample_rng(7, 2, 5).random() != A.sample_rng(7, 3, 5).random()  # the epoch counts
    assert A.sample_rng(7, 2, 5).random() == np.random.default_rng([7, 2, 5]).random()  # the seeding rule


@pytest.mark.parametrize("max_samples", [1, 50])
def test_a_crop_keeps_at_least_one_box_and_clips(max_samples):
    rng = np.random.default_rng(3)
    cropped, dropped, clipped = 0, 0, 0
    settings = A.AugmentSettings(max_samples, flip_p=0.0, jitter=False)
    for seed in range(200):
        boxes, labels = boxes_of(rng, 3), np.array([4, 5, 6])
        plan = A.plan_sample(boxes, labels, H, W, seed, settings)
        if plan.crop.tolist() == [0, 0, W, H]:
            continue
        cropped += 1
        l, t, r, b = plan.crop
        assert 0 <= l < r <= W and 0 <= t < b <= H
        rect = plan.crop / np.array([W, H, W, H])
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx > rect[0]) & (cx < rect[2]) & (cy > rect[1]) & (cy < rect[3])
        assert 1 <= len(plan.labels) and plan.labels.tolist() == labels[inside].tolist()
        lt, size = np.tile(rect[:2], 2), np.tile(rect[2:] - rect[:2], 2)
        by_hand = (np.clip(boxes[inside], lt, np.tile(rect[2:], 2)) - lt) / size
        np.testing.assert_allclose(plan.boxes, by_hand, atol=1e-6)
        assert plan.boxes.min() >= 0 and plan.boxes.max() <= 1
        dropped += len(plan.labels) < len(labels)
        clipped += not np.allclose(plan.boxes, (boxes[inside] - lt) / size, atol=1e-6)
    assert cropped >= 50 and dropped and clipped  # every rule was exercised


def test_no_crop_returns_the_whole_image(monkeypatch):
    boxes, labels = boxes_of(np.random.default_rng(0), 2), np.array([1, 2])
    monkeypatch.setattr(A, "sample_crop", lambda *a, **k: None)  # the "no crop" mode
    plan = A.plan_sample(boxes, labels, H, W, 0, A.AugmentSettings(flip_p=0.0))
    assert plan.crop.tolist() == [0, 0, W, H] and not plan.flip
    assert np.array_equal(plan.boxes, boxes) and np.array_equal(plan.labels, labels)
    image = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert np.array_equal(T.apply_geometry(image, plan, (H, W)), image)
    flipped = A.plan_sample(boxes, labels, H, W, 0, A.AugmentSettings(flip_p=1.0))
    assert np.array_equal(T.apply_geometry(image, flipped, (H, W)), image[:, ::-1])
    np.testing.assert_allclose(flipped.boxes[:, [2, 0]], 1 - boxes[:, [0, 2]], atol=1e-7)


def test_an_image_without_boxes_is_never_cropped():
    for seed in range(50):
        rng, by_hand = np.random.default_rng(seed), np.random.default_rng(seed)
        plan = A.plan_sample(np.zeros((0, 4)), [], H, W, rng)
        assert plan.crop.tolist() == [0, 0, W, H] and plan.boxes.shape == (0, 4) and plan.labels.shape == (0,)
        assert plan.flip == (by_hand.random() < 0.5)  # the flip is the first draw
        assert np.array_equal(plan.factors, draw_jitter(1, by_hand)[0][0])
        assert rng.bit_generator.state == by_hand.bit_generator.state


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_samples must be >= 1, got 0"):
        A.AugmentSettings(max_samples=0)
    with pytest.raises(ValueError, match="max_samples must be >= 1"):
        A.crop_targets(np.zeros((1, 4)), [1], H, W, np.random.default_rng(0), 0)
    with pytest.raises(ValueError, match="numpy Generator or an int seed"):
        A.plan_sample(np.zeros((0, 4)), [], H, W, 1.5)


def test_cpu_and_device_executors_agree():
    """One plan, two executors: same boxes, labels, crops, flips and jitter; pixels within 1 level."""
    rng = np.random.default_rng(4)
    shapes = [(H, W), (48, 40), (33, 70), (64, 64)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    samples = [{"boxes": boxes_of(rng, 1 + k), "labels": np.arange(1, 2 + k), "orig_size": shape,
                "key": (3, k)} for k, shape in enumerate(shapes)]
    pipe = DevicePipeline(InputSettings(32, max_objects=6, max_samples=50, shard=Shard(seed=9)))
    plan = pipe.plan(samples)
    cpu = T.TrainTransform(32, max_samples=50)
    canvas = pad_batch([torch.from_numpy(im).permute(2, 0, 1) for im in images], torch.float32)
    pixels = crop_resize(canvas, torch.tensor(plan.crops, dtype=torch.float32), torch.tensor(plan.flips), 32)
    for k, (image, s) in enumerate(zip(images, samples)):
        p = cpu.plan(image, s["boxes"], s["labels"], A.sample_rng(9, 3, k))
        n = len(p.labels)
        assert np.array_equal(plan.crops[k], p.crop) and plan.flips[k] == p.flip
        assert np.array_equal(plan.boxes[k, :n], p.boxes) and not plan.boxes[k, n:].any()
        assert np.array_equal(plan.labels[k, :n], p.labels) and not plan.labels[k, n:].any()
        assert np.array_equal(plan.factors[k], p.factors) and np.array_equal(plan.order[k], p.order)
        on_cpu = T.apply_geometry(image, p, 32).astype(np.float32)
        assert np.abs(pixels[k].permute(1, 2, 0).numpy() - on_cpu).max() <= 1
    eval_plan = DevicePipeline(InputSettings(32), train=False).plan(samples)
    assert eval_plan.crops.tolist() == [[0, 0, w, h] for h, w in shapes]
