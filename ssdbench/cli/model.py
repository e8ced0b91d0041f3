"""Model facts: input, feature maps, head grids, default boxes, parameters and GFLOPs.

`ssdbench model list` names the models; `ssdbench model info NAME` describes one, computed from the
network itself (parameters from the built module, MACs from the conv shapes on the meta device).
"""

from __future__ import annotations

import argparse

import torch

from ssdbench.checks import Range
from ssdbench.model.specs import MODEL_NAMES, SPECS, ModelSpec, get_spec

EPILOG = """examples:
  ssdbench model list
  ssdbench model info ssd300_r34
  ssdbench model info ssd1200_r34
  ssdbench model info ssd128_mini --num-classes 5
  ssdbench model info --model-file resnet34_tf.22.1.pb     # the interface recognised in a model file
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="the models and one line about each")
    info = sub.add_parser("info", help="sizes, default boxes, parameters, GFLOPs of one model")
    info.add_argument("name", metavar="NAME", nargs="?", help=f"one of {', '.join(MODEL_NAMES)}")
    info.add_argument("--model-file", help="an .onnx, OpenVINO .xml, TensorFlow .pb or quantize folder: print "
                                           "the interface recognised (inputs, outputs, layout, box order, labels)")
    info.add_argument("--num-classes", type=Range(int, ge=2), default=None,
                      help="classes including background (default 81: COCO)")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        print(format_list())
    elif args.model_file is not None or args.name is None:
        from ssdbench.errors import CliError
        from ssdbench.infer.file_info import describe

        if args.name is not None or args.model_file is None:
            raise CliError("model info takes a NAME or --model-file FILE (one of them)")
        print(describe(args.model_file))
    else:
        print(format_info(get_spec(args.name, args.num_classes)))
    return 0


def format_list() -> str:
    width = max(map(len, MODEL_NAMES))
    return "\n".join(f"{name:<{width}}  {spec.input_size:>4}px  {spec.num_boxes:>5} boxes  {spec.description}"
                     for name, spec in SPECS.items())


def count_parameters(spec: ModelSpec) -> int:
    """Number of parameters (BatchNorm running statistics excluded), from the meta-device module."""
    from ssdbench.model.ssd import SSD

    with torch.device("meta"):
        return sum(p.numel() for p in SSD(spec).parameters())


def level_table(spec: ModelSpec) -> list[str]:
    """One row per level: feature map, channels, head grid, boxes per cell, boxes."""
    header = f"  {'level':>5}  {'feature map':>11}  {'channels':>8}  {'head grid':>9}  {'boxes/cell':>10}"
    rows = [f"{header}  {'boxes':>6}"]
    for k, (f, ch, g, nd) in enumerate(zip(spec.feature_sizes, spec.feature_channels,
                                           spec.grid_sizes, spec.boxes_per_cell)):
        rows.append(f"  {k:>5}  {f'{f}x{f}':>11}  {ch:>8}  {f'{g}x{g}':>9}  {nd:>10}  {g * g * nd:>6}")
    return rows


def format_info(spec: ModelSpec) -> str:
    from ssdbench.model.ssd import SSD, check_shapes, layer_macs

    with torch.device("meta"):
        check_shapes(SSD(spec))  # the table below is the spec's; make sure the network agrees
    macs = layer_macs(spec)
    conv = sum(m for _, kind, m in macs if kind == "conv")
    total = sum(m for _, _, m in macs)
    params = count_parameters(spec)
    widths, blocks = spec.trunk_widths, spec.trunk_blocks
    lines = [
        f"{spec.name}: {spec.description}",
        f"  input              3 x {spec.input_size} x {spec.input_size} (RGB, normalised, NCHW)",
        f"  trunk              ResNet basic blocks, widths {widths}, blocks {blocks}, layer3 at stride 1",
        (f"  head convs         3x3, stride {spec.head_stride}, pad 1; "
         f"classes {spec.num_classes} (0 = background)"),
        *level_table(spec),
        f"  default boxes      {spec.num_boxes}",
        f"  parameters         {params:,} ({params / 1e6:.2f} M)",
        (f"  forward, 1 image   {_giga(conv)} GMAC in convolutions; {_giga(total)} GMAC with biases and "
         f"BatchNorm = {_giga(2 * total)} GFLOP"),
    ]
    return "\n".join(lines)


def _giga(n: int) -> str:
    return f"{n / 1e9:.2f}" if n >= 1e9 else f"{n / 1e9:.3f}"
