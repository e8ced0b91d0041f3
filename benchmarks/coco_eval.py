"""COCO evaluation time per backend: N images x D detections (default 5,000 x 100, COCO val size).

    python benchmarks/coco_eval.py [--images 5000] [--dets 100] [--repeats 3] [--out benchmarks/out/]

Times `coco_stats` (index + evaluate + accumulate + summarize) for faster-coco-eval and
pycocotools on the same synthetic ground truth and detections, and `detections_to_coco` for the
conversion; one warm-up run each, then the median of --repeats. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import namedtuple

import numpy as np


def synthetic(n_images: int, n_dets: int, seed: int = 0):
    """COCO-like ground truth (7 objects per image, 80 sparse categories) and detections:
    half jittered ground truth, half random boxes, in the normalised-ltrb `Detections` form."""
    rng = np.random.default_rng(seed)
    cat_ids = [c for c in range(1, 91) if c not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    images, anns, dets, sizes = [], [], [], []
    Det = namedtuple("Det", "boxes labels scores")
    for i in range(1, n_images + 1):
        w, h = 640, 480
        images.append({"id": i, "width": w, "height": h})
        sizes.append((h, w))
        k = 7
        xy = rng.uniform(0, 0.7, (k, 2))
        wh = rng.uniform(0.02, 0.3, (k, 2))
        labels = rng.integers(1, 81, k)
        for (x, y), (bw, bh), lab in zip(xy, wh, labels):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat_ids[lab - 1],
                         "bbox": [x * w, y * h, bw * w, bh * h], "area": bw * w * bh * h, "iscrowd": 0})
        ltrb = np.concatenate([xy, xy + wh], 1)
        near = np.repeat(ltrb, n_dets // 2 // k + 1, 0)[: n_dets // 2] + rng.normal(0, 0.01, (n_dets // 2, 4))
        rand_xy = rng.uniform(0, 0.8, (n_dets - len(near), 2))
        rand = np.concatenate([rand_xy, rand_xy + rng.uniform(0.01, 0.2, rand_xy.shape)], 1)
        det_labels = np.concatenate([np.repeat(labels, n_dets // 2 // k + 1)[: n_dets // 2],
                                     rng.integers(1, 81, len(rand))])
        dets.append(Det(np.clip(np.concatenate([near, rand]), 0, 1), det_labels, rng.uniform(0.05, 1, n_dets)))
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in cat_ids]}
    label_to_cat = {i + 1: c for i, c in enumerate(cat_ids)}
    return gt, dets, sizes, label_to_cat


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    from ssdbench.eval.coco_scoring import coco_stats, detections_to_coco

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/out/")
    args = parser.parse_args()

    gt, dets, sizes, label_to_cat = synthetic(args.images, args.dets)
    ids = [img["id"] for img in gt["images"]]
    t_conv, results = timed(lambda: detections_to_coco(dets, ids, sizes, label_to_cat), args.repeats)
    rows = [{"step": "detections_to_coco", "seconds": t_conv}]
    stats = {}
    for backend in ("faster", "pycocotools"):
        t, s = timed(lambda b=backend: coco_stats(gt, results, backend=b), args.repeats)
        rows.append({"step": f"coco_stats[{backend}]", "seconds": t})
        stats[backend] = s
    diff = float(np.abs(stats["faster"] - stats["pycocotools"]).max())

    print(f"COCO eval, {args.images} images x {args.dets} detections ({len(results)} results), "
          f"median of {args.repeats}, {platform.processor() or platform.machine()}, {os.cpu_count()} cpus")
    print(f"{'step':<28} {'seconds':>9}")
    for r in rows:
        print(f"{r['step']:<28} {r['seconds']:>9.3f}")
    print(f"speed-up faster vs pycocotools: {rows[2]['seconds'] / rows[1]['seconds']:.1f}x; "
          f"max |stat difference| {diff:.1e}; AP {stats['faster'][0]:.4f}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "coco_eval.json")
    with open(path, "w") as f:
        json.dump({"images": args.images, "dets": args.dets, "repeats": args.repeats, "rows": rows,
                   "max_stat_diff": diff, "cpus": os.cpu_count()}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
