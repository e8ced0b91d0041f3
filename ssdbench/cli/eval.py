"""COCO mAP of a model on a COCO-format dataset: `ssdbench eval`.

Prints the 12 COCO bbox stats (the pycocotools table) and writes the detections as a COCO results
JSON. Under torchrun or srun every rank evaluates a shard; rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ssdbench.checks import NON_NEGATIVE_INT, POSITIVE_INT, output_file
from ssdbench.errors import CliError
from ssdbench.io import atomic_write_json

# Process-group timeout: rank 0 scores the gathered results while the others wait for the stats.
DIST_TIMEOUT_S = 1800.0

EPILOG = """examples:
  ssdbench eval --weights runs/demo/checkpoints/last.pt          # embedded dataset, ssd128_mini
  ssdbench eval --data /coco --weights last.pt --model ssd300_r34 --out val_results.json
  ssdbench eval --data /coco --weights last.pt --backend pycocotools
  torchrun --nproc_per_node 8 -m ssdbench eval --data /coco --weights last.pt --model ssd300_r34

AP@[.50:.95] is the MLPerf quality metric (training target 0.23 for ssd300_r34).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="COCO-format dataset root (default: the embedded synthetic dataset)")
    parser.add_argument("--weights", required=True, help="checkpoint or state dict (any layout ssdbench reads)")
    parser.add_argument("--model", help="model name (default: the one recorded in the checkpoint, else ssd128_mini on the "
                        "embedded dataset and ssd300_r34 otherwise)")
    parser.add_argument("--split", default="val", help="dataset split (default: val)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="images per batch and rank (default: 32)")
    parser.add_argument("--backend", choices=("faster", "pycocotools"), default="faster",
                        help="COCO evaluation backend (default: faster, i.e. faster-coco-eval)")
    parser.add_argument("--out", default="detections.json", help="COCO results JSON to write (default: detections.json)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--workers", type=NON_NEGATIVE_INT, default=2, help="data loader worker processes (default: 2)")
    parser.add_argument("--amp", action="store_true", help="autocast to bfloat16 (CUDA, or CPUs with bf16)")
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
    from ssdbench.model.weights import WeightsError, checkpoint_model_name

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
    return model.to(device)


def run(args: argparse.Namespace) -> int:
    import torch

    from ssdbench import dist as D
    from ssdbench.data.loader import build_loader
    from ssdbench.eval.coco import format_stats
    from ssdbench.eval.evaluate import evaluate

    output_file(args.out, "--out")
    launch = D.init_distributed(args.device or "auto", DIST_TIMEOUT_S)  # joins the group under torchrun / srun
    device, distributed = launch.device, launch.distributed
    dataset = _dataset(args.data, args.split)
    model = _model(args, dataset, device)
    loader = build_loader(dataset, args.batch_size, train=False, size=model.spec.input_size,
                          rank=D.get_rank(), world_size=D.get_world_size(), workers=args.workers)
    start = time.perf_counter()
    stats, results = evaluate(model, loader, dataset, device, backend=args.backend, distributed=distributed,
                              autocast_dtype=torch.bfloat16 if args.amp else None)
    seconds = time.perf_counter() - start
    if D.is_main():
        print(f"{model.spec.name} on {dataset.root} ({args.split}, {len(dataset.ids)} images), "
              f"backend {args.backend}: {seconds:.1f} s, {len(dataset.ids) / seconds:.1f} images/s")
        print(format_stats(stats))
        atomic_write_json(args.out, results, indent=None)
        print(f"{len(results)} detections written to {args.out}")
    D.shutdown()
    return 0
