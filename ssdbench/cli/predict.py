"""`ssdbench predict IMAGE...`: detections as JSON and images with the boxes drawn.

Each image is decoded, preprocessed as the model's input, run through a backend with the shared
post-processing and drawn (`ssdbench.infer.predict`). ``--out DIR`` receives ``detections.json``
(boxes ltrb in pixels of the original image) and one drawn image per input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssdbench.checks import FRACTION, POSITIVE_INT, output_folder

EPILOG = """examples:
  ssdbench predict street.jpg --weights resnet34-ssd1200.pt
  ssdbench predict a.jpg b.png --model ssd128_mini --weights runs/demo/checkpoints/last.pt --out preds
  ssdbench predict img.jpg --weights w.pt --data /coco --score-threshold 0.5
  ssdbench predict img.jpg --backend onnxruntime --model-file resnet34-ssd1200.onnx   # the official file
  ssdbench predict img.jpg --backend openvino --model-file q_ov --data /coco          # quantized INT8
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--weights", help="checkpoint or reference weights")
    parser.add_argument("--model-file", help="an .onnx, an OpenVINO .xml, a TensorFlow .pb or a `ssdbench quantize` folder "
                        "(--backend onnxruntime or openvino) instead of --weights")
    parser.add_argument("--model", help="model name (default: the one recorded in the checkpoint, else ssd1200_r34)")
    parser.add_argument("--data", help="COCO-format dataset whose categories name the classes")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--score-threshold", type=FRACTION, default=0.3, help="minimum score kept (default: 0.3)")
    parser.add_argument("--backend", default="eager", choices=["eager", "compile", "onnxruntime", "openvino"])
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda[:i] (default: cpu; openvino: cpu only)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="compute precision (default auto: bf16 on CPUs with AMX/AVX512-BF16 and on CUDA)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="images per forward (default: 4)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickled whole-model files (resnet34-ssd1200.pytorch); trusted files only")


def run(args: argparse.Namespace) -> int:
    from ssdbench.errors import CliError
    from ssdbench.infer.backends import BackendOptions, backend_target, make_backend, model_file_network
    from ssdbench.infer.predict import categories, detect, read_image, write_predictions
    from ssdbench.model.ssd import build_model
    from ssdbench.model.weights import checkpoint_model_name

    output_folder(args.out, "--out")
    backend_target(args.backend, args.device)  # a device that is not there (or not for --backend) fails first
    paths = [Path(p) for p in args.images]
    images = [read_image(p) for p in paths]  # every image is checked before any work starts

    if bool(args.weights) == bool(args.model_file):
        raise CliError("give exactly one of --weights and --model-file")
    options = BackendOptions(device=args.device, dtype=args.dtype)
    if args.model_file is not None:
        args.model = args.model or model_file_network(args.model_file)
        backend = make_backend(args.backend, args.model, options, model_file=args.model_file)
        cats = categories(backend.num_classes, args.data)  # contiguous label k -> the k-th category
    else:
        args.model = args.model or checkpoint_model_name(args.weights) or "ssd1200_r34"
        model = build_model(args.model, weights=args.weights, allow_pickle=args.allow_pickle)
        cats = categories(model.spec.num_classes, args.data)
        backend = make_backend(args.backend, args.model, options, model=model)
    dets = detect(backend, images, args.batch_size)
    out = Path(args.out)
    results = write_predictions(out, paths, images, dets, cats, args.score_threshold)
    for result in results:
        records = result["detections"]
        top = ", ".join(f"{r['name']} {r['score']:.2f}" for r in records[:3])
        more = ", ..." if len(records) > 3 else ""
        print(f"{result['image']}: {len(records)} detections" + (f" ({top}{more})" if top else ""))
    print(f"wrote {out / 'detections.json'} and {len(results)} drawn images to {out}", file=sys.stderr)
    return 0
