"""The SSD networks: structure, names, shapes, sizes and costs against benchmark.md §1 by hand."""

import argparse
import dataclasses
import math

import pytest
import torch
from torch import nn

from ssdbench.cli import model as model_cli
from ssdbench.model.specs import get_spec
from ssdbench.model.ssd import SSD, build_model, check_shapes, layer_macs, map_sizes

# benchmark.md §1, written out: extras as (mid, out, stride, pad); feature maps; head grids.
R34_EXTRAS = {
    "ssd300_r34": [(256, 512, 2, 1), (256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0)],
    "ssd1200_r34": [(256, 512, 2, 1), (256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 2, 0), (128, 256, 1, 0)],
}
FEATURES = {"ssd300_r34": [38, 19, 10, 5, 3, 1], "ssd1200_r34": [150, 75, 38, 19, 9, 7]}
GRIDS = {"ssd300_r34": [38, 19, 10, 5, 3, 1], "ssd1200_r34": [50, 25, 13, 7, 3, 3]}
CHANNELS, PER_CELL = [256, 512, 512, 256, 256, 256], [4, 6, 6, 6, 4, 4]


def hand_trunk_convs(size: int) -> list[tuple[int, int, int, int]]:
    """ResNet34 up to layer3, layer3 at stride 1: (cin, cout, k, output side) of every conv."""
    s = math.ceil(size / 2)
    convs = [(3, 64, 7, s)]
    s = math.ceil(s / 2)  # maxpool
    convs += [(64, 64, 3, s)] * 6
    s = math.ceil(s / 2)
    convs += [(64, 128, 3, s), (128, 128, 3, s), (64, 128, 1, s)] + [(128, 128, 3, s)] * 6
    convs += [(128, 256, 3, s), (256, 256, 3, s), (128, 256, 1, s)] + [(256, 256, 3, s)] * 10
    return convs


def hand_ssd_convs(name: str) -> list[tuple[int, int, int, int, bool]]:
    """(cin, cout, k, output side, has bias) of every conv of an R34 model."""
    size = 300 if name == "ssd300_r34" else 1200
    convs = [(*c, False) for c in hand_trunk_convs(size)]
    cin = 256
    feats = FEATURES[name]
    for (mid, out, _st, _p), f_in, f_out in zip(R34_EXTRAS[name], feats[:-1], feats[1:]):
        convs += [(cin, mid, 1, f_in, True), (mid, out, 3, f_out, True)]
        cin = out
    for ch, nd, g in zip(CHANNELS, PER_CELL, GRIDS[name]):
        convs += [(ch, nd * 4, 3, g, True), (ch, nd * 81, 3, g, True)]
    return convs


@pytest.mark.parametrize("name", ["ssd300_r34", "ssd1200_r34"])
def test_parameters_and_macs_by_hand(name):
    convs = hand_ssd_convs(name)
    params = sum(ci * co * k * k + (co if b else 0) for ci, co, k, _, b in convs)
    params += 2 * (64 + 64 * 6 + 128 * 9 + 256 * 13)  # BatchNorm weight + bias per channel
    with torch.device("meta"):
        model = SSD(get_spec(name))
    assert sum(p.numel() for p in model.parameters()) == params == 19_972_534  # ~19.97 M (benchmark.md §1)
    macs = sum(ci * co * k * k * s * s for ci, co, k, s, _ in convs)
    conv_macs = sum(m for _, kind, m in layer_macs(get_spec(name)) if kind == "conv")
    assert conv_macs == macs
    all_macs = sum(m for _, _, m in layer_macs(get_spec(name)))
    spec_gmac = {"ssd300_r34": 15.9, "ssd1200_r34": 216.6}[name]  # benchmark.md §1
    assert abs(all_macs / 1e9 - spec_gmac) < 0.05


@pytest.mark.parametrize("name", ["ssd300_r34", "ssd1200_r34", "ssd128_mini"])
def test_shapes_on_meta_device(name):
    spec = get_spec(name)
    with torch.device("meta"):
        model = SSD(spec)
        x = torch.empty(2, 3, spec.input_size, spec.input_size)
        feats = model.features(x)
        locs, scores = model(x)
    assert [f.shape[-1] for f in feats] == list(spec.feature_sizes)
    assert [f.shape[1] for f in feats] == list(spec.feature_channels)
    assert locs.shape == (2, 4, spec.num_boxes) and scores.shape == (2, 81, spec.num_boxes)
    assert map_sizes(model, spec.input_size) == (list(spec.feature_sizes), list(spec.grid_sizes))
    if name in FEATURES:
        assert list(spec.feature_sizes) == FEATURES[name] and list(spec.grid_sizes) == GRIDS[name]
    assert spec.num_boxes == {"ssd300_r34": 8732, "ssd1200_r34": 15130, "ssd128_mini": 1524}[name]


def test_trunk_names_are_torchvision_resnet34():
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    want = {"conv1.weight"} | {f"bn1.{p}" for p in bn}
    for layer, blocks in ((1, 3), (2, 4), (3, 6)):
        for b in range(blocks):
            want |= {f"layer{layer}.{b}.conv1.weight", f"layer{layer}.{b}.conv2.weight"}
            want |= {f"layer{layer}.{b}.bn{i}.{p}" for i in (1, 2) for p in bn}
        if layer > 1:
            want |= {f"layer{layer}.0.downsample.0.weight"} | {f"layer{layer}.0.downsample.1.{p}" for p in bn}
    with torch.device("meta"):
        model = SSD(get_spec("ssd300_r34"))
    assert set(model.backbone.state_dict()) == want
    trunk = model.backbone
    assert trunk.layer2[0].conv1.stride == (2, 2) and trunk.layer2[0].downsample[0].stride == (2, 2)
    assert trunk.layer3[0].conv1.stride == (1, 1) and trunk.layer3[0].downsample[0].stride == (1, 1)
    assert trunk.layer3[0].conv1.weight.shape == (256, 128, 3, 3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in (*model.additional_blocks.modules(),
                                                          *model.loc.modules(), *model.conf.modules()))


def test_extras_and_heads_layout():
    with torch.device("meta"):
        model = SSD(get_spec("ssd1200_r34"))
    for block, (mid, out, st, pad) in zip(model.additional_blocks, R34_EXTRAS["ssd1200_r34"]):
        assert [type(m) for m in block] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
        assert block[0].kernel_size == (1, 1) and block[0].out_channels == mid and block[0].bias is not None
        assert block[2].out_channels == out and block[2].stride == (st, st) and block[2].padding == (pad, pad)
    for loc, conf in zip(model.loc, model.conf):
        assert loc.stride == conf.stride == (3, 3) and loc.padding == (1, 1) and loc.kernel_size == (3, 3)


def test_xavier_init_of_extras_and_heads():
    model = SSD(get_spec("ssd128_mini"))
    for conv in (*[b[i] for b in model.additional_blocks for i in (0, 2)], *model.loc, *model.conf):
        w = conv.weight
        fan_in, fan_out = w.shape[1] * w[0, 0].numel(), w.shape[0] * w[0, 0].numel()
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def test_forward_mini_and_channels_last():
    torch.manual_seed(0)
    model = build_model("ssd128_mini", num_classes=7).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        locs, scores = model(x)
        cl = model.to(memory_format=torch.channels_last)
        locs2, scores2 = cl(x.to(memory_format=torch.channels_last))
    assert locs.shape == (2, 4, 1524) and scores.shape == (2, 7, 1524)
    assert locs2.is_contiguous() and scores2.is_contiguous()
    torch.testing.assert_close(locs2, locs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores2, scores, rtol=1e-4, atol=1e-4)
    # the batch dimension is independent
    with torch.no_grad():
        torch.testing.assert_close(model(x[1:])[1], scores[1:], rtol=1e-4, atol=1e-4)


def test_shape_check_names_the_bad_level():
    spec = dataclasses.replace(get_spec("ssd300_r34"), grid_sizes=(38, 19, 10, 5, 3, 2))
    with torch.device("meta"):
        model = SSD(spec)
    with pytest.raises(ValueError, match="level 5 head grid is 1x1, spec says 2x2"):
        check_shapes(model)
    with pytest.raises(ValueError, match="unknown model 'ssd512'"):
        build_model("ssd512")


def run_cli(capsys, **kw) -> str:
    model_cli.run(argparse.Namespace(**{"num_classes": None, "model_file": None, **kw}))
    return capsys.readouterr().out


def test_cli_info_and_list(capsys):
    out = run_cli(capsys, action="info", name="ssd300_r34")
    for text in ("3 x 300 x 300", "38x38", "8732", "19,972,534 (19.97 M)", "15.86 GMAC", "31.7"):
        assert text in out, text
    out = run_cli(capsys, action="info", name="ssd1200_r34")
    for text in ("150x150", "50x50", "stride 3", "15130", "216.42 GMAC", "216.59 GMAC"):
        assert text in out, text
    out = run_cli(capsys, action="list")
    assert all(n in out for n in ("ssd300_r34", "ssd1200_r34", "ssd128_mini"))


def test_cli_dispatch_and_error(capsys):
    from ssdbench.cli import main

    assert main(["model", "info", "ssd128_mini", "--num-classes", "5"]) == 0
    assert "classes 5" in capsys.readouterr().out
    assert main(["model", "info", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
