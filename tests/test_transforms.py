"""SSD augmentation and preprocessing on pixels: boxes vs pixels, flip, jitter, eval/inference inputs.

The crop rules and the plan's draws are tested in test_augment.py."""

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from ssdbench.data import jitter as J
from ssdbench.data import transforms as T

MEAN, STD = np.array(J.MEAN), np.array(J.STD)
RED, GREEN = (255, 0, 0), (0, 255, 0)


def painted(h=240, w=320):
    """Black image with a red and a green solid box; returns image, ltrb normalised boxes, labels."""
    image = np.zeros((h, w, 3), np.uint8)
    px = [(40, 30, 150, 120), (170, 100, 300, 220)]  # l, t, r, b pixels (exclusive r, b)
    for (l, t, r, b), colour in zip(px, (RED, GREEN)):
        image[t:b, l:r] = colour
    boxes = np.array(px, np.float32) / np.array([w, h, w, h], np.float32)
    return image, boxes, np.array([1, 2])


def found_box(image, channel):
    """ltrb pixel extent of the pixels whose ``channel`` is above half intensity."""
    ys, xs = np.nonzero(image[:, :, channel] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


@pytest.mark.parametrize("max_samples", [1, 50])
def test_boxes_follow_pixels(max_samples):
    image, boxes, labels = painted()
    tr = T.TrainTransform(size=300, max_samples=max_samples)
    for seed in range(40):
        out, b, lab = tr.geometric(image, boxes, labels, np.random.default_rng(seed))
        assert out.shape == (300, 300, 3) and out.dtype == np.uint8
        assert 1 <= len(lab) <= 2 and set(lab) <= {1, 2}
        for box, label in zip(b, lab):
            channel = 0 if label == 1 else 1
            np.testing.assert_allclose(found_box(out, channel), box * 300, atol=1.5, err_msg=f"seed {seed}")


def test_empty_and_tiny_images():
    tr = T.TrainTransform(size=64)
    for shape in [(1, 1, 3), (2, 3, 3), (480, 640, 3)]:
        image = np.full(shape, 100, np.uint8)
        out, target = tr(image, {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                                 "image_id": 5}, np.random.default_rng(1))
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32
        assert target["boxes"].shape == (0, 4) and target["image_id"] == 5
    with pytest.raises(ValueError, match="uint8"):
        tr(np.zeros((5, 5), np.uint8), {"boxes": [], "labels": []}, 0)


def test_determinism_under_seed():
    image, boxes, labels = painted()
    target = {"boxes": boxes, "labels": labels}
    tr = T.TrainTransform(size=96)
    a = tr(image, target, np.random.default_rng(7))
    b = tr(image, target, np.random.default_rng(7))
    c = tr(image, target, np.random.default_rng(8))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1]["boxes"], b[1]["boxes"])
    assert not torch.equal(a[0], c[0])


def test_hflip_by_hand():
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    out, boxes = T.hflip(image, np.array([[0.1, 0.2, 0.3, 0.4]]))
    assert np.array_equal(out[:, 0], image[:, 3]) and np.array_equal(out[:, 3], image[:, 0])
    np.testing.assert_allclose(boxes, [[0.7, 0.2, 0.9, 0.4]], atol=1e-7)


def test_flip_rate():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = 255  # left half white
    tr = T.TrainTransform(size=8)
    flips = sum(tr.geometric(image, [], [], np.random.default_rng(s))[0][0, 0, 0] == 0 for s in range(200))
    assert 70 < flips < 130


def test_jitter_parameters_in_range():
    factors, order = J.draw_jitter(2000, np.random.default_rng(0))
    lo, hi = factors.min(0), factors.max(0)
    np.testing.assert_allclose(lo, [0.875, 0.5, 0.5, -0.05], atol=0.01)
    np.testing.assert_allclose(hi, [1.125, 1.5, 1.5, 0.05], atol=0.01)
    assert (np.sort(order, 1) == np.arange(4)).all()
    assert len({tuple(o) for o in order}) == 24  # every order occurs
    tf, to = J.draw_jitter(5, torch.Generator().manual_seed(0))
    assert tf.shape == (5, 4) and (np.sort(to, 1) == np.arange(4)).all()


def _gray(x):
    return 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]


def test_jitter_ops_against_hand_formulas():
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xn = x[0].numpy()
    f = torch.tensor([1.4], dtype=torch.float64)
    np.testing.assert_allclose(J.adjust_brightness(x, f)[0], np.clip(1.4 * xn, 0, 1))
    np.testing.assert_allclose(J.adjust_contrast(x, f)[0], np.clip(1.4 * xn - 0.4 * _gray(xn).mean(), 0, 1))
    np.testing.assert_allclose(J.adjust_saturation(x, f)[0], np.clip(1.4 * xn - 0.4 * _gray(xn)[None], 0, 1))
    x[0, :, 0, 0] = 0.5  # a grey pixel
    x[0, :, 1, 1] = torch.tensor([0.3, 0.3, 0.1])  # a tie between red and green
    for shift in (-0.05, 0.03, 0.45):
        out = J.adjust_hue(x, torch.tensor([shift], dtype=torch.float64))[0].numpy()
        for i in range(6):
            for j in range(5):
                h, s, v = colorsys.rgb_to_hsv(*x[0, :, i, j].tolist())
                expected = colorsys.hsv_to_rgb((h + shift) % 1, s, v)
                np.testing.assert_allclose(out[:, i, j], expected, atol=1e-9)


def test_batched_jitter_equals_per_image():
    x = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    factors, order = J.draw_jitter(10, np.random.default_rng(3))
    batched = J.color_jitter(x, factors, order)
    for i in range(10):
        single = J.color_jitter(x[i : i + 1], factors[i : i + 1], order[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single)
    assert batched.min() >= 0 and batched.max() <= 1
    ident = J.color_jitter(x, np.tile([1, 1, 1, 0], (10, 1)), order)
    torch.testing.assert_close(ident, x, atol=1e-5, rtol=0)


def test_jitter_and_normalize_uint8_matches_float():
    u8 = torch.randint(0, 256, (3, 3, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    a = T.jitter_and_normalize(u8, np.random.default_rng(5))
    b = T.jitter_and_normalize(u8.float() / 255, np.random.default_rng(5))
    torch.testing.assert_close(a, b)
    assert a.dtype == torch.float32 and a.shape == (3, 3, 10, 10)


def bilinear_np(image, out_h, out_w):
    """Independent bilinear resize (pixel centres at +0.5, edges clamped) for enlargement."""
    h, w = image.shape[:2]
    ys = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def expected_input(image, size):
    return ((bilinear_np(image, size, size) / 255 - MEAN) / STD).transpose(2, 0, 1)


def test_inference_preprocessing_against_numpy():
    image = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    out = T.preprocess_for_inference(image, size=30)
    assert out.shape == (3, 30, 30) and out.dtype == np.float32
    # one 8-bit step after Pillow's uint8 rounding: 1 / 255 / 0.224
    np.testing.assert_allclose(out, expected_input(image, 30), atol=0.018)
    gray = Image.fromarray(image[:, :, 0])  # any PIL mode is converted to RGB
    np.testing.assert_allclose(T.preprocess_for_inference(gray, size=30)[1],
                               expected_input(np.repeat(image[:, :, :1], 3, 2), 30)[1], atol=0.018)


def test_eval_transform_against_numpy():
    image = np.random.default_rng(1).integers(0, 256, (9, 6, 3), dtype=np.uint8)
    target = {"boxes": np.array([[0.1, 0.2, 0.5, 0.9]], np.float32), "labels": np.array([4])}
    out, t = T.EvalTransform(size=24)(image, target)
    assert out.shape == (3, 24, 24) and t is target
    np.testing.assert_allclose(out.numpy(), expected_input(image, 24), atol=0.018)
    raw, _ = T.EvalTransform(size=24, defer_normalize=True)(image)
    assert raw.dtype == torch.uint8
    torch.testing.assert_close(J.normalize(raw[None])[0], out)
