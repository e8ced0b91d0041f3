"""COCO mAP of a model on a COCO-format dataset: `ssdbench eval`.

Prints the 12 COCO bbox stats (the pycocotools table) and writes the detections as a COCO results
JSON. Under torchrun or srun every rank evaluates a shard; rank 0 prints and writes. On one
process the network runs through an inference backend (`ssdbench.infer.backends`: eager,
compile, onnxruntime, openvino; ``--model-file`` for an ONNX / OpenVINO / quantized file, also the
official ``resnet34-ssd1200.onnx``), in ``--dtype`` (auto: bf16 where the CPU has native bf16).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ssdbench.checks import NON_NEGATIVE_INT, POSITIVE_INT, output_file
from ssdbench.errors import CliError
from ssdbench.io import atomic_write_json

# Process-group timeout: rank 0 scores the gathered results while the others wait for the stats.
DIST_TIMEOUT_S = 1800.0
INFER_BACKENDS = ("eager", "compile", "onnxruntime", "openvino")
COCO_BACKENDS = ("faster", "pycocotools")

EPILOG = """examples:
  ssdbench eval --weights runs/demo/checkpoints/last.pt          # embedded dataset, ssd128_mini
  ssdbench eval --data /coco --weights last.pt --model ssd300_r34 --out val_results.json
  ssdbench eval --data /coco --weights last.pt --eval-backend pycocotools
  ssdbench eval --weights runs/demo/checkpoints/last.pt --dtype fp32 --backend compile
  ssdbench eval --backend openvino --model-file q_ov            # a `ssdbench quantize` folder
  ssdbench eval --data /coco --backend onnxruntime --model-file resnet34-ssd1200.onnx
  torchrun --nproc_per_node 8 -m ssdbench eval --data /coco --weights last.pt --model ssd300_r34

AP@[.50:.95] is the MLPerf quality metric (training target 0.23 for ssd300_r34).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="COCO-format dataset root (default: the embedded synthetic dataset)")
    parser.add_argument("--weights", help="checkpoint or state dict (any layout ssdbench reads)")
    parser.add_argument("--model-file", help="an .onnx, an OpenVINO .xml, a TensorFlow .pb or a `ssdbench quantize` folder "
                        "(--backend onnxruntime or openvino) instead of --weights")
    parser.add_argument("--model", help="model name (default: the one recorded in the checkpoint, else ssd128_mini on the "
                        "embedded dataset and ssd300_r34 otherwise)")
    parser.add_argument("--split", default="val", help="dataset split (default: val)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="images per batch and rank (default: 32)")
    parser.add_argument("--backend", choices=(*INFER_BACKENDS, *COCO_BACKENDS), default="eager",
                        help="inference backend (default: eager); faster / pycocotools here are the older "
                             "spelling of --eval-backend")
    parser.add_argument("--eval-backend", choices=COCO_BACKENDS, default=None,
                        help="COCO evaluation backend (default: faster, i.e. faster-coco-eval)")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                        help="compute precision (default auto: bf16 on CPUs with AMX/AVX512-BF16 and on CUDA)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="NHWC for eager/compile (default auto: on with bf16; on is an error for the "
                             "file backends)")
    parser.add_argument("--out", default="detections.json", help="COCO results JSON to write (default: detections.json)")
    parser.add_argument("--analysis", metavar="DIR",
                        help="also write DIR/eval.json (stats, per-class AP, confusion matrix) and its pictures "
                             "(per-class AP, precision-recall curves, confusion matrix)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu; the openvino "
                        "backend runs on the cpu only)")
    parser.add_argument("--workers", type=NON_NEGATIVE_INT, default=2, help="data loader worker processes (default: 2)")
    parser.add_argument("--amp", action="store_true", help="the same as --dtype bf16")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow weight files that need full unpickling (only for files you trust)")


def _dataset(data: str | None, split: str):
    from ssdbench.data.coco import CocoDetection, annotation_path

    if data is None:
        from ssdbench.data.synth import default_dataset

        data = str(default_dataset())
    if not Path(data).is_dir():
        raise FileNotFoundError(f"dataset folder not found: {data}")
    if not Path(annotation_path(data, split)).is_file():
        raise FileNotFoundError(f"{data}: no annotation file for split {split!r} ({annotation_path(data, split)})")
    return CocoDetection(data, split)


def _model(args, dataset, device):
    from ssdbench import build_model
    from ssdbench.model.weights import WeightsError, checkpoint_categories, checkpoint_model_name

    if not Path(args.weights).is_file():
        raise FileNotFoundError(f"weights file not found: {args.weights}")
    name = args.model or checkpoint_model_name(args.weights)
    name = name or ("ssd128_mini" if args.data is None else "ssd300_r34")
    try:
        model = build_model(name, weights=args.weights, allow_pickle=args.allow_pickle)
    except WeightsError:
        raise  # names the file and what is wrong with it already
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CliError(f"{args.weights} does not fit model {name} (pass --model?): {str(exc).splitlines()[0]}") from None
    if model.spec.num_classes != dataset.num_classes:
        raise CliError(f"{args.weights} predicts {model.spec.num_classes} classes but {dataset.root} "
                       f"has {dataset.num_classes} (with background)")
    warn_category_order(checkpoint_categories(args.weights), dataset, args.weights)
    return model.to(device)


def warn_category_order(trained: list[int] | None, dataset, weights) -> bool:
    """Warn (stderr) when the checkpoint's categories, in label order, are not the dataset's:
    label k would be scored as another category (a shuffled `categories` list scored 0.058%)."""
    if trained is None or list(trained) == list(dataset.cat_ids):
        return False
    same = sorted(trained) == sorted(dataset.cat_ids)
    why = ("the same categories in another order" if same else "other categories")
    print(f"warning: {weights} was trained with category ids {trained[:8]}{'...' if len(trained) > 8 else ''} "
          f"in label order, {dataset.ann_file} lists {why} ({list(dataset.cat_ids)[:8]}...): labels will be "
          "scored as the wrong categories", file=sys.stderr)  # fmt: skip
    return True


def _backend(args, dataset, device):
    """The inference backend of one-process evaluation (--backend, --dtype, --model-file)."""
    from ssdbench.infer.backends import BackendOptions, channels_last_for, make_backend, model_file_network

    if args.backend == "openvino":
        device = args.device  # the CPU: auto picks it, another device is an error naming --device
    if args.model_file is not None:
        if args.backend not in ("onnxruntime", "openvino"):
            raise CliError(f"--model-file needs --backend onnxruntime or openvino (got {args.backend})")
        name = args.model or model_file_network(args.model_file)
        backend = make_backend(args.backend, name, BackendOptions(device=device, dtype=args.dtype),
                               model_file=args.model_file)
        if backend.num_classes != dataset.num_classes:  # before any inference
            raise CliError(f"--model-file {args.model_file} predicts {backend.num_classes} classes but --data "
                           f"{dataset.root} has {dataset.num_classes} (with background)")
        return backend
    model = _model(args, dataset, device)
    channels_last = channels_last_for(args.backend, args.channels_last, args.dtype, device)
    options = BackendOptions(device=device, dtype=args.dtype, channels_last=channels_last)
    return make_backend(args.backend, model.spec.name, options, model=model)


def _resolve_flags(args) -> None:
    """--amp and the older --backend faster|pycocotools; one of --weights / --model-file."""
    if args.backend in COCO_BACKENDS:
        args.eval_backend, args.backend = args.eval_backend or args.backend, "eager"
    args.eval_backend = args.eval_backend or "faster"
    if args.amp:
        if args.dtype not in (None, "bf16"):
            raise CliError(f"--amp means --dtype bf16; it contradicts --dtype {args.dtype}")
        args.dtype = "bf16"
    args.dtype = args.dtype or "auto"
    if bool(args.weights) == bool(args.model_file):
        raise CliError("give exactly one of --weights and --model-file")
    from ssdbench.infer.backends import channels_last_for

    try:  # before any work: "on" with a file backend (so with every --model-file) is an error
        channels_last_for(args.backend, args.channels_last)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    output_file(args.out, "--out")
    if args.analysis is not None:
        from ssdbench.checks import output_folder

        output_folder(args.analysis, "--analysis")


def run(args: argparse.Namespace) -> int:
    from ssdbench import dist as D
    from ssdbench.data.loader import InputSettings, Shard, build_loader
    from ssdbench.eval.analysis import analyze
    from ssdbench.eval.coco_scoring import format_stats
    from ssdbench.eval.evaluate import evaluate, predict_backend
    from ssdbench.precision import AMP_DTYPES, resolve_precision

    _resolve_flags(args)
    launch = D.init_distributed(args.device or "auto", DIST_TIMEOUT_S)  # joins the group under torchrun / srun
    device, distributed = launch.device, launch.distributed
    dataset = _dataset(args.data, args.split)
    start = time.perf_counter()
    if distributed:  # every rank a shard: the network itself, under autocast
        if args.backend != "eager" or args.model_file:
            raise CliError("distributed eval runs the eager backend on --weights")
        model = _model(args, dataset, device)
        shard = Shard(D.get_rank(), D.get_world_size())
        loader = build_loader(dataset, args.batch_size, train=False,
                              inputs=InputSettings(model.spec.input_size, shard=shard), workers=args.workers)
        stats, results = evaluate(model, loader, dataset, device, backend=args.eval_backend, distributed=True,
                                  autocast_dtype=AMP_DTYPES[resolve_precision(args.dtype, device)])
        name = model.spec.name
    else:
        backend = _backend(args, dataset, device)
        loader = build_loader(dataset, args.batch_size, train=False, inputs=InputSettings(backend.input_size),
                              workers=args.workers)
        stats, results = None, predict_backend(backend, loader, dataset)  # scored once, with the details below
        name = f"{backend.model_name} ({backend.name}, {backend.dtype}{', int8' if _quantized(backend) else ''})"
    if D.is_main():
        details = analyze(dataset.ann_file, results, image_ids=dataset.ids, backend=args.eval_backend)
        stats = details.stats if stats is None else stats
        seconds = time.perf_counter() - start
        print(f"{name} on {dataset.root} ({args.split}, {len(dataset.ids)} images), "
              f"COCO eval {args.eval_backend}: {seconds:.1f} s, {len(dataset.ids) / seconds:.1f} images/s")
        print(format_stats(stats))
        _per_class(args, details)
        atomic_write_json(args.out, results, indent=None)
        print(f"{len(results)} detections written to {args.out}")
    D.shutdown()
    return 0


def _per_class(args, details) -> None:
    """Print the per-class AP table; with --analysis also write eval.json and the pictures."""
    from ssdbench.eval.analysis import details_json
    from ssdbench.eval.coco_scoring import STAT_NAMES
    from ssdbench.eval.per_class import format_table, per_class_rows

    print(format_table(per_class_rows(details)))
    if args.analysis is None:
        return
    from ssdbench.eval.plots import write_eval_pictures

    folder = Path(args.analysis)
    pictures = write_eval_pictures(details, folder)
    payload = {"stats": dict(zip(STAT_NAMES, details.stats.tolist())), **details_json(details)}
    atomic_write_json(folder / "eval.json", payload)
    print(f"per-class AP, confusion matrix: {folder / 'eval.json'}; pictures: "
          + ", ".join(p.name for p in pictures))


def _quantized(backend) -> bool:
    return bool(getattr(getattr(backend, "file", None), "quantized", False))
