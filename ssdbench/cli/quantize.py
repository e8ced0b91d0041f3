"""`ssdbench quantize`: post-training static INT8 quantization for OpenVINO or ONNX Runtime.

Writes a folder (``--out``: new, empty, or written by quantize before, which is replaced; checked
before any work) holding the quantized model (OpenVINO IR ``model.xml/.bin`` or QDQ
``model.onnx``) and ``quantize.json``; ``--backend openvino|onnxruntime --model-file DIR`` of
`loadgen`, `eval` and `predict` runs it (`ssdbench.infer.quantize`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ssdbench.checks import POSITIVE_INT

EPILOG = """examples:
  ssdbench quantize --backend openvino --weights runs/demo/checkpoints/last.pt --calib-count 200 --out q_ov
  ssdbench quantize --backend onnxruntime --weights ssd1200.pt --data /coco \\
      --calib-list coco_cal_images_list.txt --out q_ort      # MLPerf's 500 calibration images
  ssdbench quantize --backend openvino --model-file ssd1200.onnx --data /coco --calib-count 500 --out q
  ssdbench quantize --backend openvino --model-file resnet34_tf.22.1.pb --data /coco --calib-count 500 --out q_tf
then:
  ssdbench eval --backend openvino --model-file q_ov
  ssdbench loadgen --scenario Offline --preset cpu --backend openvino --model-file q_ov
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--backend", required=True, choices=("openvino", "onnxruntime"), help="the runtime the file is made for")
    a("--weights", help="checkpoint or reference weights of the network to quantize")
    a("--model-file", help="an ONNX file with raw outputs (locs, scores) instead of --weights; with --backend "
                           "openvino also MLPerf's TensorFlow graph (.pb) or its tf2onnx conversion")
    a("--model", help="model name (default: the checkpoint's, else ssd1200_r34)")
    a("--data", help="COCO-format dataset with the calibration images (default: the embedded one)")
    a("--split", default="train", help="split the calibration images come from (default: train)")
    a("--calib-list", help="file names, one per line (MLPerf: coco_cal_images_list.txt, 500 train2017 images)")
    a("--calib-count", type=POSITIVE_INT, help="use the first N images of the split (or of --calib-list)")
    a("--out", required=True, help="output folder (a folder written by quantize before is replaced)")
    a("--allow-pickle", action="store_true", help="allow pickled whole-model files (trusted files only)")


def _source_onnx(args) -> tuple[Path, str, str]:
    """(raw-layout ONNX file, or a TensorFlow-layout file for openvino; model name; where it came from;
    its layout)."""
    from ssdbench.errors import CliError
    from ssdbench.infer import model_file as MF
    from ssdbench.infer.backends import cached_onnx
    from ssdbench.model.ssd import build_model
    from ssdbench.model.weights import checkpoint_model_name

    if bool(args.weights) == bool(args.model_file):
        raise CliError("give exactly one of --weights and --model-file")
    if args.model_file:
        path, sidecar = MF.resolve_path(args.model_file)
        tf_file = _tf_layout_file(args, path)
        if tf_file:
            return path, args.model or tf_file, str(path), "tf"
        info = MF.inspect_onnx(path, sidecar) if path.suffix == ".onnx" else None
        if info is None or info.layout != "raw" or info.quantized:
            raise CliError(f"--model-file {args.model_file}: quantize takes a float ONNX file with raw "
                           "outputs (locs, scores), e.g. `ssdbench export onnx`")
        return path, args.model or info.model_name or "ssd1200_r34", str(path), "raw"
    if not Path(args.weights).is_file():
        raise FileNotFoundError(f"weights file not found: {args.weights}")
    name = args.model or checkpoint_model_name(args.weights) or "ssd1200_r34"
    model = build_model(name, weights=args.weights, allow_pickle=args.allow_pickle).eval()
    return cached_onnx(model, name), name, str(args.weights), "raw"


def _tf_layout_file(args, path: Path) -> str | None:
    """The network of MLPerf's TensorFlow graph (.pb) or its tf2onnx conversion, else None; such a
    file is quantized whole (its post-processing stays float) by OpenVINO only."""
    from ssdbench.errors import CliError
    from ssdbench.infer import model_file as MF
    from ssdbench.infer.backends import model_file_network

    if path.suffix != ".pb" and not (path.suffix == ".onnx" and MF.inspect_onnx(path).layout == "tf"):
        return None
    if args.backend != "openvino":
        raise CliError(f"--model-file {path}: a TensorFlow-layout graph is quantized with --backend openvino")
    return model_file_network(path)


def run(args: argparse.Namespace) -> int:
    from ssdbench.infer.quantize import Calibration, FloatModel, calibration_files, check_out, quantize
    from ssdbench.model.specs import get_spec

    check_out(args.out)  # before any work
    if args.data is None:
        from ssdbench.data.synth import default_dataset

        args.data = str(default_dataset())
    files = calibration_files(args.data, args.calib_list, args.calib_count, args.split)
    source, name, origin, layout = _source_onnx(args)
    calib = f"{args.calib_list or args.split + ' split'} of {args.data}"
    start = time.perf_counter()
    model = FloatModel(source, name, get_spec(name).input_size, origin, layout)
    path = quantize(args.backend, model, args.out, Calibration(files, calib))
    print(f"{name} quantized for {args.backend} with {len(files)} calibration images ({calib}) in "
          f"{time.perf_counter() - start:.0f} s: {path}")
    return 0
