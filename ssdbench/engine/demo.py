"""Train the demo model on the embedded synthetic dataset, evaluate it, draw its predictions.

The whole product in one command on a laptop CPU: `ssdbench train --preset demo` (ssd128_mini,
a few minutes on 2 cores), the 12 COCO stats of the final evaluation, and a few validation
images with the predicted boxes (thick, class colours, name + score) and the ground-truth boxes
(thin white with a dark edge, tagged "gt") drawn, all in one run folder.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
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
    """Run the trained model on the first `count` val images; write <out>/predictions/*.png
    with the predictions above `score_threshold` and the ground truth (`draw_ground_truth`)."""
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
        image, target = val.load(i)
        with torch.no_grad():
            locs, scores = model(transform(image)[0][None].to(device))
        det = postprocess(locs.float(), scores.float(), "ssd128_mini")[0]
        path = folder / f"{val.ids[i]:012d}.png"
        picture = _draw(image, det, names, score_threshold)
        draw_ground_truth(picture, target["boxes"], target["labels"], names, score_threshold).save(path)
        written.append(path)
    return written


def _draw(image, det, names, score_threshold):
    from ssdbench.inference.predict import draw_detections  # one drawing for demo and `predict`

    return draw_detections(image, det, names, score_threshold=score_threshold)


GT_COLOUR, GT_EDGE = (255, 255, 255), (0, 0, 0)  # white line on a dark edge: visible on any fill


def contact_sheet(pictures: list[Path], out: Path, columns: int = 3, width: int = 400) -> Path | None:
    """Tile the drawn predictions into one PNG (`width` px per tile), so a run is judged at a glance."""
    from PIL import Image

    if not pictures:
        return None
    rows = -(-len(pictures) // columns)
    sheet = Image.new("RGB", (columns * width, rows * width), "white")
    for k, path in enumerate(pictures):
        with Image.open(path) as im:
            tile = im.convert("RGB")
        tile.thumbnail((width, width))  # square cells: landscape and portrait images alike
        x, y = (k % columns) * width, (k // columns) * width
        sheet.paste(tile, (x + (width - tile.width) // 2, y + (width - tile.height) // 2))
    sheet.save(out)
    return out


def draw_ground_truth(img, boxes, labels, names: dict, score_threshold: float):
    """Draw ground truth on PIL image ``img`` in place (and return it): a thin white box with a
    1-px dark edge per object, "gt <class>" inside its bottom-left corner, and a legend line.

    ``boxes`` (n, 4) ltrb normalised, ``labels`` (n,) (label 1 = first category; 0 = padding).
    The predictions (drawn before) are the thick, class-coloured boxes with a score.
    """
    from PIL import ImageDraw, ImageFont

    draw, font, (w, h) = ImageDraw.Draw(img), ImageFont.load_default(), img.size
    for box, label in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1)):
        if label <= 0:
            continue
        l, t, r, b = (np.clip(box, 0.0, 1.0) * [w, h, w, h]).tolist()
        draw.rectangle([l - 1, t - 1, r + 1, b + 1], outline=GT_EDGE, width=1)
        draw.rectangle([l, t, r, b], outline=GT_COLOUR, width=1)
        text = f"gt: {names.get(int(label), int(label))}"
        tl, tt, tr, tb = draw.textbbox((0, 0), text, font=font)
        y = max(t, b - (tb - tt) - 3)
        draw.rectangle([l + 1, y, l + (tr - tl) + 4, y + (tb - tt) + 2], fill=GT_EDGE)
        draw.text((l + 2, y), text, fill=GT_COLOUR, font=font)
    _legend(draw, font, h, f"thin white: gt   thick: predicted, score >= {score_threshold:.2f}")
    return img


def _legend(draw, font, height: int, text: str) -> None:
    """One line of text on a dark band along the bottom edge."""
    tl, tt, tr, tb = draw.textbbox((0, 0), text, font=font)
    y = height - (tb - tt) - 4
    draw.rectangle([0, y, tr - tl + 6, height], fill=GT_EDGE)
    draw.text((3, y + 1), text, fill=GT_COLOUR, font=font)


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
    sheet = contact_sheet(pictures, run_dir / "predictions.png")
    print(f"predictions drawn: {pictures[0].parent if pictures else 'none'} ({len(pictures)} PNG)"
          + (f"; all in one picture: {sheet}" if sheet else ""))
    print(f"plots: {run_dir / 'plots'}; MLPerf log: {summary['mlperf_log']}")
    return 0
