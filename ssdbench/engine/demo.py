"""Train the demo model on the embedded synthetic dataset, evaluate it, draw its predictions.

The whole product in one command on a laptop CPU: `ssdbench train --preset demo` (ssd128_mini,
a few minutes on 2 cores), the 12 COCO stats of the final evaluation, and a few validation
images with the predicted boxes drawn, all in one run folder.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

EPILOG = """examples:
  ssdbench demo                         # about 5 minutes on 2 CPU cores
  ssdbench demo --epochs 4 --out runs/quick
then:
  ssdbench eval --data ~/.cache/ssdbench/synth-v1 --model ssd128_mini --weights RUN/checkpoints/last.pt
"""

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="run folder (default runs/demo-<time>)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the demo preset's)")
    parser.add_argument("--batch-size", type=int, help="images per step")
    parser.add_argument("--workers", type=int, help="data-loader worker processes")
    parser.add_argument("--device", help="auto, cpu, cuda")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--threads", type=int,
                        help="torch compute threads (default: CPU cores minus data workers, at least 1)")
    parser.add_argument("--images", type=int, default=6, help="validation images to draw predictions on")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="draw detections above this score")


def _set_threads(threads: int | None, workers: int) -> None:
    """Leave one core per data worker: oversubscribed cores make CPU training several times slower."""
    if threads is None and "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, threads or cores - workers))


def draw_predictions(weights: Path, data_root: Path, out: Path, count: int, score_threshold: float,
                     device: torch.device) -> list[Path]:
    """Run the trained model on the first `count` val images; write <out>/predictions/*.png."""
    from ssdbench.data.coco import CocoDetection
    from ssdbench.data.transforms import EvalTransform
    from ssdbench.model.postprocess import postprocess
    from ssdbench.model.ssd import build_model

    val = CocoDetection(data_root, "val")
    model = build_model("ssd128_mini", weights=str(weights)).to(device).eval()
    transform, names = EvalTransform(model.spec.input_size), dict(zip(range(1, val.num_classes), val.cat_names))
    folder = out / "predictions"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(min(count, len(val))):
        image, _target = val.load(i)
        with torch.no_grad():
            locs, scores = model(transform(image)[0][None].to(device))
        det = postprocess(locs.float(), scores.float(), "ssd128_mini")[0]
        path = folder / f"{val.ids[i]:012d}.png"
        _draw(image, det, names, score_threshold).save(path)
        written.append(path)
    return written


def _draw(image, det, names, score_threshold):
    try:
        from ssdbench.inference.predict import draw_detections
    except ImportError:  # the inference package is optional for training installs
        return _draw_boxes(image, det, score_threshold)
    return draw_detections(image, det, names, score_threshold=score_threshold)


def _draw_boxes(image, det, score_threshold):
    """Minimal fallback: boxes only (ltrb normalised -> pixels)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(image)
    draw, (w, h) = ImageDraw.Draw(img), img.size
    for box, score in zip(det.boxes.tolist(), det.scores.tolist()):
        if score >= score_threshold:
            draw.rectangle([box[0] * w, box[1] * h, box[2] * w, box[3] * h], outline=(255, 0, 0), width=2)
    return img


def run(args: argparse.Namespace) -> int:
    from .config import resolve_config
    from .parts import data_root
    from .session import run_training
    from .train_cli import print_result

    overrides = {"out": args.out, "epochs": args.epochs, "batch_size": args.batch_size,
                 "workers": args.workers, "device": args.device, "seed": args.seed}
    if args.epochs is not None:
        overrides["decay_epochs"] = (max(1, round(args.epochs * 0.8)),)  # keep the schedule's shape
    cfg = resolve_config("demo", None, overrides)
    _set_threads(args.threads, cfg.workers)
    print(f"ssdbench demo: training {cfg.model} on the embedded synthetic dataset "
          f"({cfg.epochs} epochs, batch {cfg.batch_size}, {torch.get_num_threads()} threads)", flush=True)
    summary = run_training(cfg)
    if not summary or summary.get("status") == "interrupted":
        return 0
    run_dir = Path(summary["run_dir"])
    stats = summary["eval_history"][-1]["stats"] if summary["eval_history"] else []
    print("COCO evaluation (val):")
    for name, value in zip(STAT_NAMES, stats):
        print(f"  {name:10s} {value:.4f}")
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    pictures = draw_predictions(run_dir / "checkpoints" / "last.pt", data_root(cfg), run_dir,
                                args.images, args.score_threshold, device)
    print_result(summary)
    print(f"predictions drawn: {pictures[0].parent if pictures else 'none'} ({len(pictures)} PNG)")
    print(f"plots: {run_dir / 'plots'}; MLPerf log: {summary['mlperf_log']}")
    return 0
