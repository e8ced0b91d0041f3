"""Training throughput (images/s) of one SSD training step: synthetic in-memory inputs vs the real
data pipeline, fp32 vs bf16 autocast, NCHW vs channels_last; CPU, and CUDA when present (MFU).

    python benchmarks/train_step.py                       # ssd300_r34, CPU (+ CUDA if available)
    python benchmarks/train_step.py --model ssd128_mini --batch-size 16 --steps 10
    python benchmarks/train_step.py --devices cuda --batch-size 114 --steps 50

One step = target encoding + forward + SSD loss + backward + SGD update (`train.loop.train_step`).
"synthetic": the same pre-made batch every step (the network alone, as nanoGPT's bench.py);
"pipeline": batches from `build_loader` over the embedded synthetic COCO dataset (JPEG decode,
SSD crop, flip, resize, colour jitter in --workers processes), so the gap is the input cost.
Warm-up steps are not timed; each step is synchronised; the median step time is reported.
MFU (CUDA): 3 x 31.7 GFLOP per SSD300 image per training step (benchmark.md §1: forward 31.7 GFLOP,
backward ~2x) over the GPU's dense bf16/fp32 peak given by --peak-tflops.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from ssdbench.precision import AMP_DTYPES
from ssdbench.progress import Progress
from ssdbench.train.build import MLPerfSchedule
from ssdbench.train.loop import StepParts, train_step

FWD_GFLOP = {"ssd300_r34": 31.7, "ssd1200_r34": 433.0, "ssd128_mini": None}  # benchmark.md §1
PEAK_TFLOPS = {"bf16": 989.0, "fp32": 67.0}  # H100 SXM dense; override with --peak-tflops


def synthetic_batch(batch: int, size: int, classes: int, objects: int = 8) -> dict:
    """A fixed batch: random images, `objects` random ltrb boxes per image (normalised)."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(batch, objects, 2, generator=g) * 0.6
    wh = 0.05 + torch.rand(batch, objects, 2, generator=g) * 0.35
    return {"images": torch.randn(batch, 3, size, size, generator=g),
            "boxes": torch.cat([xy, xy + wh], -1).clamp(max=1.0),
            "labels": torch.randint(1, classes, (batch, objects), generator=g)}


def make_parts(model_name: str, device: torch.device, precision: str, channels_last: bool,
               classes: int) -> StepParts:
    from ssdbench.model.encoder import Encoder
    from ssdbench.model.ssd import build_model

    net = build_model(model_name, num_classes=classes).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, MLPerfSchedule(1000, 0, 0, ()))
    return StepParts(net, opt, sched, Encoder(model_name), device, None, AMP_DTYPES[precision], channels_last)


def pipeline_batches(model_name: str, batch: int, workers: int):
    from ssdbench.data.coco import CocoDetection
    from ssdbench.data.loader import InputSettings, build_loader
    from ssdbench.data.synth import default_dataset
    from ssdbench.model.specs import get_spec

    data = CocoDetection(default_dataset(), "train")
    inputs = InputSettings(get_spec(model_name).input_size, max_objects=64)
    loader = build_loader(data, batch, train=True, inputs=inputs, workers=workers)
    return itertools.cycle(loader), data.num_classes


def time_steps(parts: StepParts, batches, warmup: int, steps: int, label: str) -> list[float]:
    sync = torch.cuda.synchronize if parts.device.type == "cuda" else (lambda: None)
    times = []
    shown = Progress(warmup + steps, label, unit="step", min_interval_s=5.0, stream=sys.stderr)
    for i in shown.iterate(range(warmup + steps)):
        batch = next(batches)
        sync()
        t0 = time.perf_counter()
        train_step(parts, batch)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    shown.close()
    return times


def run_case(args, device: torch.device, source: str, precision: str, channels_last: bool) -> dict:
    if source == "pipeline":
        batches, classes = pipeline_batches(args.model, args.batch_size, args.workers)
    else:
        classes = 81
        from ssdbench.model.specs import get_spec

        batches = itertools.repeat(synthetic_batch(args.batch_size, get_spec(args.model).input_size, classes))
    parts = make_parts(args.model, device, precision, channels_last, classes)
    label = f"{device.type} {source} {precision} {'nhwc' if channels_last else 'nchw'}"
    times = time_steps(parts, batches, args.warmup, args.steps, label)
    median = statistics.median(times)
    row = {"device": device.type, "input": source, "precision": precision, "channels_last": channels_last,
           "batch": args.batch_size, "median_step_s": median, "img_s": args.batch_size / median}
    gflop = FWD_GFLOP.get(args.model)
    if device.type == "cuda" and gflop:
        peak = args.peak_tflops or PEAK_TFLOPS[precision]
        row["mfu"] = 3 * gflop * 1e9 * row["img_s"] / (peak * 1e12)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", default="ssd300_r34")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="data workers for the pipeline input")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: all present)")
    parser.add_argument("--inputs", nargs="+", default=["synthetic", "pipeline"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak for MFU")
    parser.add_argument("--out", default="benchmarks/out", help="folder for train_step.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for dev, source, precision, nhwc in itertools.product(devices, args.inputs, args.precisions, (False, True)):
        rows.append(run_case(args, torch.device(dev), source, precision, nhwc))
    print_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "batch": args.batch_size, "steps": args.steps, "warmup": args.warmup,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor()
            or platform.machine(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    (out / "train_step.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out / 'train_step.json'}")


def print_table(rows: list[dict]) -> None:
    print(f"{'device':6} {'input':9} {'prec':5} {'layout':6} {'batch':>5} {'step ms':>9} {'img/s':>8} {'MFU':>6}")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"{r['device']:6} {r['input']:9} {r['precision']:5} {'nhwc' if r['channels_last'] else 'nchw':6} "
              f"{r['batch']:>5} {1000 * r['median_step_s']:>9.1f} {r['img_s']:>8.2f} {mfu:>6}")


if __name__ == "__main__":
    main()
