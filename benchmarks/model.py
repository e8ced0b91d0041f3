"""Images/s and achieved GFLOP/s of the pure network, forward (eval) and forward+backward (train).

FLOPs per image come from `layer_macs` (2 x MACs of convs, biases and BatchNorm; benchmark.md §1: 31.7
GFLOP for SSD300, 433 for SSD1200), so the table also says how well the convolutions use the
machine. Random weights and random inputs: speed does not depend on the values. Post-processing
and the loss are not included (see benchmarks/postprocess.py, benchmarks/infer.py).

    python benchmarks/model.py                                   # CPU: ssd128_mini + ssd300_r34
    python benchmarks/model.py --models ssd300_r34 --batches 1 8 --layouts nchw cl
    python benchmarks/model.py --device cuda --models ssd300_r34 ssd1200_r34 --dtypes fp32 bf16

Warm-up, then the median of `--repeats` timed runs (CUDA synchronised). Prints a table and
writes `model.json` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from itertools import product
from pathlib import Path

import torch
from timing import sync_for, timed
from tqdm import tqdm

from ssdbench.model.specs import MODEL_NAMES, get_spec
from ssdbench.model.ssd import SSD, layer_macs

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ssd128_mini", "ssd300_r34"], choices=MODEL_NAMES)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    p.add_argument("--layouts", nargs="+", default=["nchw", "cl"], choices=["nchw", "cl"],
                   help="cl = channels_last")
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=list(DTYPES),
                   help="bf16/fp16 run under torch.autocast")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    return p.parse_args()


def step_fn(model: SSD, x: torch.Tensor, mode: str, dtype, device: str):
    """One timed unit: a no-grad forward (eval) or forward + backward of a dummy loss (train)."""
    autocast = torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None)

    def run():
        if mode == "eval":
            with torch.no_grad(), autocast:
                model(x)
        else:
            with autocast:
                locs, scores = model(x)
            (locs.float().square().mean() + scores.float().square().mean()).backward()
            model.zero_grad(set_to_none=True)
    return run


def time_median(fn, device: str, warmup: int, repeats: int) -> float:
    return statistics.median(timed(fn, warmup, repeats, sync_for(device)))


def main() -> None:
    args = parse_args()
    cases = list(product(args.models, args.modes, args.layouts, args.dtypes, args.batches))
    rows = []
    for name, mode, layout, dtype_name, batch in tqdm(cases, desc="model benchmark", unit="case"):
        spec = get_spec(name)
        gflop = 2 * sum(m for _, _, m in layer_macs(spec)) / 1e9 * (3 if mode == "train" else 1)
        fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
        model = SSD(spec).to(args.device, memory_format=fmt).train(mode == "train")
        x = torch.randn(batch, 3, spec.input_size, spec.input_size, device=args.device).to(memory_format=fmt)
        sec = time_median(step_fn(model, x, mode, DTYPES[dtype_name], args.device), args.device,
                          args.warmup, args.repeats)
        rows.append({"model": name, "mode": mode, "layout": layout, "dtype": dtype_name, "batch": batch,
                     "seconds": sec, "images_per_s": batch / sec, "gflop_per_image": gflop,
                     "achieved_gflops": gflop * batch / sec})
    print_table(rows)
    save(rows, args)


def print_table(rows: list[dict]) -> None:
    head = (f"{'model':<12} {'mode':<5} {'layout':<6} {'dtype':<5} {'batch':>5} {'img/s':>9} "
            f"{'GFLOP/img':>9} {'GFLOP/s':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<12} {r['mode']:<5} {r['layout']:<6} {r['dtype']:<5} {r['batch']:>5} "
              f"{r['images_per_s']:>9.2f} {r['gflop_per_image']:>9.1f} {r['achieved_gflops']:>9.1f}")
    print("train = forward + backward, counted as 3x the forward FLOPs")


def save(rows: list[dict], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "device": args.device,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    path = args.out / "model.json"
    path.write_text(json.dumps({"machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
                                "results": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
