"""What the per-class analysis adds to a COCO evaluation: N images x D detections (COCO val size
by default: 5,000 x 100, 80 categories).

    python benchmarks/eval_analysis.py [--images 5000] [--dets 100] [--repeats 1] [--out benchmarks/out/]

Times, on the synthetic data of `coco_eval.py`: `coco_stats` (faster-coco-eval), `run_cocoeval`
(the same evaluation keeping the precision array), `confusion_matrix` (score >= 0.3, IoU 0.5)
and `write_eval_pictures` (the four PNGs), with CPU seconds of this process beside wall seconds
(the machine may be shared). One warm-up run each, then the median of --repeats. Prints a table,
writes eval_analysis.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from coco_eval import synthetic


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(median wall s, median process CPU s, last result) after one warm-up."""
    out = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    from ssdbench.eval.coco_scoring import coco_stats, detections_to_coco
    from ssdbench.eval.confusion import confusion_matrix
    from ssdbench.eval.per_class import mean_ap, per_class_rows, run_cocoeval
    from ssdbench.eval.plots import write_eval_pictures

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/out/")
    args = parser.parse_args()

    gt, dets, sizes, label_to_cat = synthetic(args.images, args.dets)
    ids = [img["id"] for img in gt["images"]]
    results = detections_to_coco(dets, ids, sizes, label_to_cat)
    wall, cpu, stats = timed(lambda: coco_stats(gt, results), args.repeats)
    rows = [{"step": "coco_stats (12 numbers)", "wall_s": wall, "cpu_s": cpu}]
    wall, cpu, details = timed(lambda: run_cocoeval(gt, results), args.repeats)
    rows.append({"step": "run_cocoeval (+ precision array)", "wall_s": wall, "cpu_s": cpu})
    wall, cpu, details.confusion = timed(lambda: confusion_matrix(gt, results, details.cat_ids), args.repeats)
    rows.append({"step": "confusion_matrix", "wall_s": wall, "cpu_s": cpu})
    with tempfile.TemporaryDirectory() as folder:
        wall, cpu, _ = timed(lambda: write_eval_pictures(details, folder), args.repeats)
    rows.append({"step": "write_eval_pictures (4 PNG)", "wall_s": wall, "cpu_s": cpu})
    diff = abs(mean_ap(per_class_rows(details)) - float(stats[0]))

    print(f"{args.images} images x {args.dets} detections ({len(results)} results), median of {args.repeats}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
    print(f"{'step':<34} {'wall s':>8} {'CPU s':>8}")
    for r in rows:
        print(f"{r['step']:<34} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f}")
    print(f"|mean per-class AP - COCO AP| = {diff:.1e} (AP {stats[0]:.4f})")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "eval_analysis.json")
    with open(path, "w") as f:
        json.dump({"images": args.images, "dets": args.dets, "repeats": args.repeats, "rows": rows,
                   "mean_per_class_ap_diff": diff, "cpus": os.cpu_count()}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
