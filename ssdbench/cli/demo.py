"""Train the demo model on the embedded synthetic dataset, evaluate it, draw its predictions.

The whole product in one command on a laptop CPU: `ssdbench train --preset demo` (ssd128_mini,
a few minutes on 2 cores), the 12 COCO stats of the final evaluation, and a few validation
images with the predicted boxes (thick, class colours, name + score) and the ground-truth boxes
(thin white with a dark edge, tagged "gt") drawn, all in one run folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from ssdbench.checks import FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, SEED
from ssdbench.errors import PREEMPTED_EXIT

EPILOG = """examples:
  ssdbench demo                         # about 2.5 minutes on 2 CPU cores with native bf16
  ssdbench demo --epochs 4 --out runs/quick
then:
  ssdbench eval --data ~/.cache/ssdbench/synth-v1 --model ssd128_mini --weights RUN/checkpoints/last.pt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="run folder (default runs/demo-<time>)")
    parser.add_argument("--epochs", type=POSITIVE_INT, help="epochs (default: the demo preset's)")
    parser.add_argument("--batch-size", type=POSITIVE_INT, help="images per step")
    parser.add_argument("--workers", type=NON_NEGATIVE_INT, help="data-loader worker processes")
    parser.add_argument("--device", help="auto, cpu, cuda")
    parser.add_argument("--seed", type=SEED, help="random seed")
    parser.add_argument("--threads", type=POSITIVE_INT,
                        help="torch compute threads (default: CPU cores minus data workers, at least 1)")
    parser.add_argument("--images", type=NON_NEGATIVE_INT, default=6, help="validation images to draw predictions on")
    parser.add_argument("--score-threshold", type=FRACTION, default=0.3, help="draw detections above this score")
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="TensorBoard events in RUN/tensorboard (needs the tensorboard package)")


def _set_threads(threads: int | None, workers: int) -> None:
    """Leave one core per data worker: oversubscribed cores make CPU training several times slower."""
    if threads is None and "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, threads or cores - workers))


def _quiet_log() -> None:
    """Not on a terminal (a CI or Slurm log): one progress line per epoch and per evaluation
    (`progress` mode "final"), unless SSDBENCH_PROGRESS says otherwise."""
    from ssdbench.progress import MODE_ENV

    if not sys.stdout.isatty() and not os.environ.get(MODE_ENV, "").strip():
        os.environ[MODE_ENV] = "final"


def run(args: argparse.Namespace) -> int:
    from ssdbench.eval.coco_scoring import STAT_NAMES
    from ssdbench.infer.draw import contact_sheet, draw_predictions
    from ssdbench.train.build import data_root
    from ssdbench.train.config import resolve_config, set_up
    from ssdbench.train.trainer import print_result, train_run

    overrides = {"out": args.out, "epochs": args.epochs, "batch_size": args.batch_size,
                 "workers": args.workers, "device": args.device, "seed": args.seed,
                 "tensorboard": getattr(args, "tensorboard", None)}
    _quiet_log()
    if args.epochs is not None:
        overrides["decay_epochs"] = (max(1, round(args.epochs * 0.8)),)  # keep the schedule's shape
    cfg = resolve_config("demo", None, overrides)
    _set_threads(args.threads, cfg.workers)
    print(f"ssdbench demo: training {cfg.model} on the embedded synthetic dataset "
          f"({cfg.epochs} epochs, batch {cfg.batch_size}, {torch.get_num_threads()} threads)", flush=True)
    setup = set_up(cfg)  # the device picked and the config resolved, once
    setup.print_note()
    summary = train_run(setup)
    if summary.get("status") == "interrupted":  # checkpointed: the same command resumes
        print("ssdbench demo: preempted (exit status 75); the same command resumes", file=sys.stderr)
        return PREEMPTED_EXIT
    if not summary:
        return 0
    run_dir = Path(summary["run_dir"])
    stats = summary["eval_history"][-1]["stats"] if summary["eval_history"] else []
    print("COCO evaluation (val):")
    for name, value in zip(STAT_NAMES, stats):
        print(f"  {name:10s} {value:.4f}")
    pictures = draw_predictions(run_dir / "checkpoints" / "last.pt", data_root(cfg), run_dir,
                                args.images, args.score_threshold, setup.launch.device)  # the device it trained on
    print_result(summary)
    sheet = contact_sheet(pictures, run_dir / "predictions.png")
    print(f"predictions drawn: {pictures[0].parent if pictures else 'none'} ({len(pictures)} PNG)"
          + (f"; all in one picture: {sheet}" if sheet else ""))
    print(f"plots: {run_dir / 'plots'}; MLPerf log: {summary['mlperf_log']}")
    return 0
