"""`ssdbench export onnx`: write a model as an ONNX file (layouts in `ssdbench.infer.export`)."""

from __future__ import annotations

import argparse

from ssdbench.checks import Range, output_file
from ssdbench.infer.backends import check_export
from ssdbench.infer.export import POSTPROCESS_MODES, export_model

EPILOG = """examples:
  ssdbench export onnx --model ssd1200_r34 --weights resnet34-ssd1200.pt --out ssd1200.onnx
  ssdbench export onnx --model ssd128_mini --weights last.pt --out mini.onnx --postprocess inside
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["onnx"], help="export format")
    parser.add_argument("--model", help="model name (default: the one recorded in the checkpoint, else ssd1200_r34)")
    parser.add_argument("--weights", help="checkpoint or reference weights (omitted: random init)")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--postprocess", choices=POSTPROCESS_MODES, default="outside",
                        help="decode + NMS inside the graph or in PyTorch after it (default: outside)")
    # 11: the first opset with NonMaxSuppression; 20: the newest the TorchScript exporter writes
    parser.add_argument("--opset", type=Range(int, ge=11, le=20), default=17, help="ONNX opset, 11-20 (default: 17)")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch size to 2")
    parser.add_argument("--num-classes", type=Range(int, ge=2), help="classes including background (default 81)")
    parser.add_argument("--space-to-depth", action="store_true", help="4x4/s1 first conv on 2x2 blocks (benchmark.md §7)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickled whole-model files (resnet34-ssd1200.pytorch); trusted files only")
    parser.add_argument("--check", action="store_true",
                        help="run the file in ONNX Runtime and compare with PyTorch on a random image")


def run(args: argparse.Namespace) -> int:
    import sys

    from ssdbench.infer.space_to_depth import apply_space_to_depth
    from ssdbench.model.specs import get_spec
    from ssdbench.model.ssd import build_model
    from ssdbench.model.weights import checkpoint_model_name

    output_file(args.out, "--out")
    args.model = args.model or checkpoint_model_name(args.weights) or "ssd1200_r34"
    get_spec(args.model)  # a bad --model fails here, before any note is printed
    if args.weights is None:
        print("ssdbench export: note: no --weights, exporting a randomly initialised model", file=sys.stderr)
    model = build_model(args.model, weights=args.weights, num_classes=args.num_classes,
                        allow_pickle=args.allow_pickle)
    net = apply_space_to_depth(model) if args.space_to_depth else model
    path = export_model(net, args.model, args.out, args.postprocess,
                        args.opset, not args.static_batch)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, postprocess {args.postprocess}, "
          f"opset {args.opset}, {'static' if args.static_batch else 'dynamic'} batch)")
    if args.check:
        print(check_export(path, model, args.model, args.space_to_depth))
    return 0
