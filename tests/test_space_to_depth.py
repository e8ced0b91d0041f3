"""Space-to-depth (benchmark.md §7): the 4x4/s1 conv on 2x2 blocks equals the 7x7/s2/p3 conv."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssdbench.infer.space_to_depth import (
    SpaceToDepthConv,
    apply_space_to_depth,
    space_to_depth,
    space_to_depth_weight,
)
from ssdbench.model.ssd import build_model


def test_space_to_depth_channel_order_by_hand():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    s = space_to_depth(x)
    assert s.shape == (2, 12, 2, 3)
    for c in range(3):
        for dy in range(2):
            for dx in range(2):
                for y in range(2):
                    for xx in range(3):
                        assert s[1, c * 4 + dy * 2 + dx, y, xx] == x[1, c, 2 * y + dy, 2 * xx + dx]


def test_weight_rearrangement_places_each_tap():
    # One non-zero tap at (ky, kx) of the 7x7 kernel lands at 4x4 position (a, b) and channel
    # c*4 + dy*2 + dx with ky + 1 = 2a + dy, kx + 1 = 2b + dx (module docstring).
    for ky, kx in [(0, 0), (3, 5), (6, 6), (1, 4)]:
        w = torch.zeros(1, 3, 7, 7)
        w[0, 2, ky, kx] = 1.0
        w4 = space_to_depth_weight(w)
        a, dy = divmod(ky + 1, 2)
        b, dx = divmod(kx + 1, 2)
        assert w4.shape == (1, 12, 4, 4)
        assert w4[0, 2 * 4 + dy * 2 + dx, a, b] == 1.0 and w4.abs().sum() == 1.0


@pytest.mark.parametrize("size", [6, 10, 34])
def test_small_sizes_equal_reference_conv(size):
    g = torch.Generator().manual_seed(size)
    conv = nn.Conv2d(3, 5, 7, stride=2, padding=3, bias=True)
    x = torch.randn(2, 3, size, size, generator=g)
    ref = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=3)
    got = SpaceToDepthConv(conv)(space_to_depth(x))
    assert got.shape == ref.shape == (2, 5, size // 2, size // 2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_ssd1200_first_layer_equivalence():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)  # SSD1200's conv1 (benchmark.md §1)
    x = torch.randn(1, 3, 1200, 1200)
    with torch.no_grad():
        ref = conv(x)
        got = SpaceToDepthConv(conv)(space_to_depth(x))
    assert got.shape == (1, 64, 600, 600)
    assert (got - ref).abs().max().item() < 1e-5


def test_end_to_end_ssd128_mini():
    torch.manual_seed(0)
    model = build_model("ssd128_mini").eval()
    s2d = apply_space_to_depth(model)
    assert isinstance(s2d.backbone.conv1, SpaceToDepthConv)
    assert isinstance(model.backbone.conv1, nn.Conv2d)  # the original is left untouched
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref_locs, ref_scores = model(x)
        locs, scores = s2d(space_to_depth(x))
    torch.testing.assert_close(locs, ref_locs, atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, ref_scores, atol=1e-4, rtol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="7x7"):
        SpaceToDepthConv(nn.Conv2d(3, 8, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="multiple"):
        space_to_depth(torch.zeros(1, 3, 7, 8))
    with pytest.raises(ValueError, match="backbone.conv1"):
        apply_space_to_depth(nn.Linear(2, 2))
    model = apply_space_to_depth(build_model("ssd128_mini"))
    with pytest.raises(ValueError, match="already"):
        apply_space_to_depth(model)
