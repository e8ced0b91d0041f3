"""Images/s of the batched post-processing against a plain per-image, per-class loop.

The loop is written in the style of the MLPerf inference reference (benchmark.md §4): for every image and
every class, threshold, sort, then greedy NMS one kept box at a time with a host sync per step
(IoU clamped here, unlike the reference). Both get the same synthetic network outputs:
offsets ~ N(0, 1) and class logits ~ N(0, 2^2) per (class, box), which lets roughly 470 boxes
per class pass the 0.05 threshold on SSD300 (8732 boxes) and roughly 800 on SSD1200 (15130),
so every class fills its 200 candidates, as with an untrained or weakly trained network.

    python benchmarks/postprocess.py                       # CPU (+ CUDA when available)
    python benchmarks/postprocess.py --devices cpu --batches 1 32 --out benchmarks/out

Warm-up, then the median of `--repeats` timed runs (CUDA synchronised). Prints a table and
writes `postprocess.json` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from timing import sync_for, timed
from tqdm import tqdm

from ssdbench.model.boxes import decode_offsets, default_boxes
from ssdbench.model.nms import HAVE_TORCHVISION
from ssdbench.model.postprocess import postprocess


def _iou_against(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU of (K, 4) ltrb boxes with one (4,) box, clamped."""
    lt = torch.maximum(boxes[:, :2], box[:2])
    rb = torch.minimum(boxes[:, 2:], box[2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    box_area = (box[2:] - box[:2]).clamp(min=0).prod()
    return inter / (area + box_area - inter).clamp(min=1e-12)


def loop_postprocess(locs, scores, dboxes, threshold=0.05, iou_threshold=0.5, per_class=200, per_image=200):
    """Reference-style post-processing: Python loops over images, classes and kept boxes."""
    results = []
    for i in range(locs.shape[0]):
        boxes = decode_offsets(locs[i].t().float(), dboxes)
        probs = scores[i].float().softmax(dim=0)
        out_boxes, out_labels, out_scores = [], [], []
        for c in range(1, probs.shape[0]):
            mask = probs[c] > threshold
            cls_boxes, cls_scores = boxes[mask], probs[c][mask]
            if cls_scores.numel() == 0:
                continue
            order = cls_scores.argsort(descending=True)[:per_class]
            while order.numel() > 0:  # one host sync per kept box, as in the reference
                best = order[0]
                out_boxes.append(cls_boxes[best])
                out_scores.append(cls_scores[best])
                out_labels.append(c)
                order = order[1:][_iou_against(cls_boxes[order[1:]], cls_boxes[best]) < iou_threshold]
        if not out_scores:
            results.append((torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0)))
            continue
        all_scores = torch.stack(out_scores)
        top = all_scores.argsort(descending=True)[:per_image]
        results.append((torch.stack(out_boxes)[top], torch.tensor(out_labels)[top], all_scores[top]))
    return results


def synthetic_outputs(num_boxes: int, batch: int, device: str, seed: int = 0):
    """Network-shaped outputs: locs (N, 4, B) ~ N(0, 1), scores (N, 81, B) logits ~ N(0, 4)."""
    g = torch.Generator().manual_seed(seed)
    locs = torch.randn(batch, 4, num_boxes, generator=g)
    scores = torch.randn(batch, 81, num_boxes, generator=g) * 2.0
    return locs.to(device), scores.to(device)


def time_median(fn, device: str, warmup: int, repeats: int) -> float:
    return statistics.median(timed(fn, warmup, repeats, sync_for(device)))


def run_case(model: str, batch: int, device: str, args) -> list[dict]:
    dboxes = default_boxes(model).to(device)
    locs, scores = synthetic_outputs(dboxes.shape[0], batch, device)
    passing = (scores.softmax(dim=1)[:, 1:] > 0.05).sum(dim=2).float().mean().item()
    methods = {"ours (greedy kernel)": lambda: postprocess(locs, scores, dboxes, nms_kernel="greedy")}
    if HAVE_TORCHVISION:
        methods["ours (torchvision nms)"] = lambda: postprocess(
            locs, scores, dboxes, nms_kernel="torchvision"
        )
    methods["loop (reference style)"] = lambda: loop_postprocess(locs, scores, dboxes)
    rows = []
    for method, fn in methods.items():
        if method.startswith("loop"):  # seconds per image: warm up on one image only
            loop_postprocess(locs[:1], scores[:1], dboxes)
            seconds = time_median(fn, device, 0, args.loop_repeats)
        else:
            seconds = time_median(fn, device, args.warmup, args.repeats)
        rows.append(
            {
                "model": model,
                "batch": batch,
                "device": device,
                "method": method,
                "seconds": seconds,
                "images_per_s": batch / seconds,
                "boxes_per_class_above_threshold": passing,
            }
        )
    loop_s = rows[-1]["seconds"]
    for row in rows:
        row["speedup_vs_loop"] = loop_s / row["seconds"]
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"{'model':<12} {'batch':>5} {'device':<6} {'method':<24} {'img/s':>10} {'ms/batch':>10} {'vs loop':>8}"
    )
    for r in rows:
        print(
            f"{r['model']:<12} {r['batch']:>5} {r['device']:<6} {r['method']:<24} "
            f"{r['images_per_s']:>10.1f} {1000 * r['seconds']:>10.1f} {r['speedup_vs_loop']:>7.1f}x"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ssd300_r34", "ssd1200_r34"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument(
        "--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the batched version")
    parser.add_argument(
        "--loop-repeats", type=int, default=1, help="timed runs of the (slow, ~3 s/image) loop"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [(m, b, d) for d in args.devices for m in args.models for b in args.batches]
    rows = []
    for model, batch, device in tqdm(cases, desc="postprocess benchmark", unit="case"):
        rows.extend(run_case(model, batch, device, args))
    print_table(rows)
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "torchvision": HAVE_TORCHVISION,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "postprocess.json"
    path.write_text(
        json.dumps(
            {"machine": machine, "inputs": "synthetic: locs ~ N(0,1), logits ~ N(0,4)", "rows": rows},
            indent=2,
        )
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
