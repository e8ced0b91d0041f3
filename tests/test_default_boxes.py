"""Default boxes against hand-computed values (benchmark.md §2) and against the head's output order."""

import math

import pytest
import torch

from ssdbench.model.boxes import default_boxes
from ssdbench.model.specs import get_spec
from ssdbench.model.ssd import SSD

# Written out from benchmark.md §2 (not read from specs.py): input, f_k per level, grid per level,
# scales in pixels, and aspect ratios per level.
HAND = {
    "ssd300_r34": {"size": 300, "fk": [300 / 8, 300 / 16, 300 / 32, 300 / 64, 300 / 100, 300 / 300],
                   "grid": [38, 19, 10, 5, 3, 1], "scales": [21, 45, 99, 153, 207, 261, 315]},
    # f_k = 1200 // (24, 48, 92, 171, 400, 400)
    "ssd1200_r34": {"size": 1200, "fk": [50, 25, 13, 7, 3, 3],
                    "grid": [50, 25, 13, 7, 3, 3], "scales": [84, 180, 396, 612, 828, 1044, 1260]},
}
RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]


def hand_shapes(name: str, level: int) -> list[tuple[float, float]]:
    """(w, h) of each box shape of a level, in SPEC order, before clamping."""
    h = HAND[name]
    s_k, s_next = h["scales"][level] / h["size"], h["scales"][level + 1] / h["size"]
    shapes = [(s_k, s_k), (math.sqrt(s_k * s_next),) * 2]
    for a in RATIOS[level]:
        shapes += [(s_k * math.sqrt(a), s_k / math.sqrt(a)), (s_k / math.sqrt(a), s_k * math.sqrt(a))]
    return shapes


def clamp(v: float) -> float:
    return min(max(v, 0.0), 1.0)


def level_offsets(name: str) -> list[int]:
    h, out, total = HAND[name], [], 0
    for k, g in enumerate(h["grid"]):
        out.append(total)
        total += g * g * len(hand_shapes(name, k))
    return out


def test_counts():
    assert default_boxes("ssd300_r34").shape == (8732, 4)
    assert default_boxes("ssd1200_r34").shape == (15130, 4)
    assert default_boxes("ssd128_mini").shape == (get_spec("ssd128_mini").num_boxes, 4) == (1524, 4)


def test_literal_values():
    """A few numbers worked out on paper, independent of any formula in this file."""
    d300, d1200 = default_boxes("ssd300_r34").double(), default_boxes("ssd1200_r34").double()
    # SSD300 first box: centre 0.5 / 37.5, size 21 / 300.
    torch.testing.assert_close(d300[0], torch.tensor([1 / 75, 1 / 75, 0.07, 0.07], dtype=torch.float64))
    # SSD300 level 0, second shape: sqrt(21 * 45) / 300 = 0.1024695.
    torch.testing.assert_close(d300[38 * 38, 2:], torch.tensor([0.1024695, 0.1024695], dtype=torch.float64))
    # Last box of SSD300: 1x1 level, tall box (261/300)/sqrt(2) x (261/300)*sqrt(2) -> h clamped to 1.
    torch.testing.assert_close(d300[-1], torch.tensor([0.5, 0.5, 0.6151829, 1.0], dtype=torch.float64))
    # SSD1200 first box: centre 0.5 / 50, size 84 / 1200.
    torch.testing.assert_close(d1200[0], torch.tensor([0.01, 0.01, 0.07, 0.07], dtype=torch.float64))
    # SSD1200 level 2 uses f_k = 1200 // 92 = 13 (not 13.04): last centre of its first shape 12.5/13.
    last = 10000 + 3750 + 13 * 13 - 1
    torch.testing.assert_close(d1200[last, :2], torch.tensor([12.5 / 13] * 2, dtype=torch.float64))


@pytest.mark.parametrize("name", ["ssd300_r34", "ssd1200_r34"])
def test_every_level_first_and_last_box_of_each_shape(name):
    boxes = default_boxes(name).double()
    h = HAND[name]
    for k, (off, g, fk) in enumerate(zip(level_offsets(name), h["grid"], h["fk"])):
        for s, (w, hh) in enumerate(hand_shapes(name, k)):
            first = off + s * g * g  # cell (row 0, col 0)
            last = first + g * g - 1  # cell (row g-1, col g-1)
            c0, c1 = 0.5 / fk, (g - 0.5) / fk
            want_first = [clamp(c0), clamp(c0), clamp(w), clamp(hh)]
            want_last = [clamp(c1), clamp(c1), clamp(w), clamp(hh)]
            msg = f"{name} level {k} shape {s}"
            torch.testing.assert_close(boxes[first].tolist(), want_first, msg=msg)
            torch.testing.assert_close(boxes[last].tolist(), want_last, msg=msg)
            if g > 1:  # x runs fastest: the second box of a shape is one column to the right
                torch.testing.assert_close(boxes[first + 1, 0].item(), clamp(1.5 / fk), msg=msg)
                torch.testing.assert_close(boxes[first + g, 1].item(), clamp(1.5 / fk), msg=msg)


@pytest.mark.parametrize("name", ["ssd300_r34", "ssd1200_r34", "ssd128_mini"])
def test_clamped_and_ltrb_from_clamped(name):
    xywh, ltrb = default_boxes(name), default_boxes(name, "ltrb")
    assert xywh.min() >= 0 and xywh.max() <= 1
    assert (xywh[:, 2:] == 1).any()  # the large aspect-ratio boxes are clamped
    half = xywh[:, 2:] / 2
    torch.testing.assert_close(ltrb, torch.cat([xywh[:, :2] - half, xywh[:, :2] + half], 1))


def _position_encoding_head(model: SSD) -> None:
    """Make every head output channel c at grid cell (i, j) equal 65536*c + 256*y + x, where (y, x)
    is the feature-map pixel under the kernel centre (features carry x in channel 0, y in 1)."""
    with torch.no_grad():
        for conv in (*model.loc, *model.conf):
            conv.weight.zero_()
            conv.weight[:, 0, 1, 1] = 1.0
            conv.weight[:, 1, 1, 1] = 256.0
            conv.bias.copy_(65536.0 * torch.arange(conv.out_channels))


@pytest.mark.parametrize("name", ["ssd300_r34", "ssd1200_r34", "ssd128_mini"])
def test_head_order_matches_default_boxes(name):
    """Each output lands on the box whose cell and shape produced it (benchmark.md §2 order)."""
    spec = get_spec(name, num_classes=3)
    model = SSD(spec).eval()
    _position_encoding_head(model)
    feats = []
    for f, ch in zip(spec.feature_sizes, spec.feature_channels):
        x = torch.zeros(1, ch, f, f)
        x[0, 0] = torch.arange(f).float()[None, :]  # column index
        x[0, 1] = torch.arange(f).float()[:, None]  # row index
        feats.append(x)
    with torch.no_grad():
        locs, scores = model.head(feats)
    boxes = default_boxes(name).double()
    steps, fk_int = spec.steps, spec.fk_integer_division
    off = 0
    for k, (g, nd) in enumerate(zip(spec.grid_sizes, spec.boxes_per_cell)):
        fk = spec.input_size // steps[k] if fk_int else spec.input_size / steps[k]
        shapes = hand_shapes(name, k) if name in HAND else None
        for out, per in ((locs, 4), (scores, 3)):
            v = out[0, :, off:off + g * g * nd].round().long()  # (per, nd*g*g)
            chan, y, x = v // 65536, (v % 65536) // 256, v % 256
            b = torch.arange(g * g * nd)
            shape_idx, cell = b // (g * g), b % (g * g)
            # channel c = coordinate/class * nd + shape (the references' view order)
            assert torch.equal(chan % nd, shape_idx.expand(per, -1)), f"{name} level {k}"
            assert torch.equal(chan // nd, torch.arange(per)[:, None].expand(-1, g * g * nd))
            assert torch.equal(y // spec.head_stride, (cell // g).expand(per, -1))
            assert torch.equal(x // spec.head_stride, (cell % g).expand(per, -1))
        # and the default box at that index is centred on that cell, with that shape
        lvl = boxes[off:off + g * g * nd]
        torch.testing.assert_close(lvl[:, 0], ((cell % g + 0.5) / fk).double().clamp(0, 1))
        torch.testing.assert_close(lvl[:, 1], ((cell // g + 0.5) / fk).double().clamp(0, 1))
        if shapes is not None:
            wh = torch.tensor(shapes, dtype=torch.float64)[shape_idx].clamp(0, 1)
            torch.testing.assert_close(lvl[:, 2:], wh)
        off += g * g * nd
    assert off == locs.shape[-1] == boxes.shape[0]
