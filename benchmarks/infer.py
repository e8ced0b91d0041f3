"""SSD-Large inference throughput and latency per backend, dtype, layout and batch size.

For every variant: first correctness (raw maps against fp32 eager PyTorch on the same images, with
a stated relative tolerance), then timing. Network (``forward_raw``) and post-processing (benchmark.md §4,
``postprocess_padded``) are timed separately; medians over ``--iters`` after ``--warmup`` runs,
synchronised on CUDA. Prints a table and writes JSON to ``--out``.

    python benchmarks/infer.py                          # CPU: eager/compile/onnxruntime, fp32/bf16, batch 1 and 4
    python benchmarks/infer.py --device cuda            # GPU: batch 1..128, CUDA graphs, channels_last, s2d
    python benchmarks/infer.py --backends eager --dtypes bf16 --layouts cl,cl+s2d --batch-sizes 1,8

Random weights by default (``--weights`` for real ones): speed does not depend on the values, but
post-processing does through the number of candidates above 0.05; random weights give many (at
least as costly as trained weights), so the post-processing column is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from timing import timed
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssdbench.infer.backends import BackendOptions, make_backend
from ssdbench.model.ssd import build_model

# Relative tolerance on raw maps (max |diff| / max |reference|) against fp32 eager.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
LAYOUTS = {"plain": {}, "cl": {"channels_last": True}, "s2d": {"space_to_depth": True},
           "cl+s2d": {"channels_last": True, "space_to_depth": True}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ssd1200_r34")
    p.add_argument("--weights", help="weights file (default: random init, seed 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", default="eager,compile,onnxruntime")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--layouts", help=f"comma list of {', '.join(LAYOUTS)} (default: plain on CPU; plain,cl,cl+s2d on GPU)")
    p.add_argument("--batch-sizes", help="default: 1,4 on CPU; 1,2,4,8,16,32,64,128 on GPU")
    p.add_argument("--compile-mode", help="torch.compile mode (default: default on CPU, reduce-overhead on GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per variant (default: 1 CPU, 10 GPU)")
    p.add_argument("--iters", type=int, default=None, help="timed runs per variant (default: 3 CPU, 50 GPU)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default="benchmarks/out", help="folder for the JSON results")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.layouts = args.layouts or ("plain,cl,cl+s2d" if gpu else "plain")
    args.batch_sizes = args.batch_sizes or ("1,2,4,8,16,32,64,128" if gpu else "1,4")
    args.compile_mode = args.compile_mode or ("reduce-overhead" if gpu else "default")
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    args.iters = args.iters if args.iters is not None else (50 if gpu else 3)
    return args


def _variants(args):
    for backend in args.backends.split(","):
        for dtype in args.dtypes.split(","):
            for layout in args.layouts.split(","):
                if layout not in LAYOUTS:
                    raise SystemExit(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
                yield backend, dtype, layout


def _build(args, model, backend, dtype, layout):
    """A backend, or a string saying why this combination is not available."""
    try:
        options = BackendOptions(device=args.device, dtype=dtype, compile_mode=args.compile_mode,
                                 **LAYOUTS[layout])
        return make_backend(backend, args.model, options, model=model)
    except ValueError as exc:  # e.g. onnxruntime in bf16, fp16 on CPU
        return str(exc)


def _rel_diff(got, ref) -> float:
    num = max((g.float().cpu() - r).abs().max().item() for g, r in zip(got, ref))
    return num / max(r.abs().max().item() for r in ref)


def measure(backend, images, reference, dtype, warmup, iters) -> dict:
    """Correctness on `reference`'s batch, then network and post-processing times on `images`."""
    check = reference["images"]
    rel = _rel_diff(backend.forward_raw(check), reference["raw"])
    row = {"rel_diff": rel, "tolerance": TOLERANCE[dtype], "ok": rel <= TOLERANCE[dtype]}
    if not row["ok"]:
        return row  # never time a wrong variant
    images = images.to(backend.device)
    with torch.inference_mode():
        net = timed(lambda: backend.forward_raw(images), warmup, iters, backend.synchronize)
        locs, scores = backend.forward_raw(images)
        post = timed(lambda: backend.postprocess(locs, scores), max(1, warmup), iters, backend.synchronize)
    n = images.shape[0]
    net_s, post_s = statistics.median(net), statistics.median(post)
    row.update(network_ms=1e3 * net_s, post_ms=1e3 * post_s, latency_ms=1e3 * (net_s + post_s),
               samples_per_s=n / (net_s + post_s), network_samples_per_s=n / net_s,
               network_times_ms=[1e3 * t for t in net], post_times_ms=[1e3 * t for t in post])
    return row


def machine() -> dict:
    import onnxruntime

    info = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in lines if "model name" in line)
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def print_table(rows: list[dict]) -> None:
    head = f"{'backend':<12}{'dtype':<6}{'layout':<8}{'batch':>6}{'rel.diff':>10}{'net ms':>10}{'post ms':>9}" \
           f"{'lat ms':>10}{'samples/s':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        key = f"{r['backend']:<12}{r['dtype']:<6}{r['layout']:<8}{r['batch']:>6}"
        if "skipped" in r:
            print(f"{key}  skipped: {r['skipped']}")
        elif not r["ok"]:
            print(f"{key}{r['rel_diff']:>10.1e}  FAILED correctness (tolerance {r['tolerance']:.0e})")
        else:
            print(f"{key}{r['rel_diff']:>10.1e}{r['network_ms']:>10.1f}{r['post_ms']:>9.1f}"
                  f"{r['latency_ms']:>10.1f}{r['samples_per_s']:>11.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model, weights=args.weights).eval()
    size = model.spec.input_size
    gen = torch.Generator().manual_seed(0)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    images = torch.randn(max(batch_sizes), 3, size, size, generator=gen)  # never all-zero inputs
    check = images[:1]
    with torch.inference_mode():
        reference = {"images": check, "raw": [t.float() for t in model(check)]}  # fp32 eager, on CPU
    rows, variants = [], list(_variants(args))
    bar = tqdm(total=len(variants) * len(batch_sizes), desc="variants", unit="run")
    for backend_name, dtype, layout in variants:
        backend = _build(args, model, backend_name, dtype, layout)
        for bs in batch_sizes:
            row = {"backend": backend_name, "dtype": dtype, "layout": layout, "batch": bs}
            if isinstance(backend, str):
                row["skipped"] = backend
            else:
                row.update(measure(backend, images[:bs], reference, dtype, args.warmup, args.iters))
                row["config"] = backend.describe()
            rows.append(row)
            bar.set_postfix_str(f"{backend_name} {dtype} {layout} bs{bs}")
            bar.update()
        del backend
    bar.close()
    print_table(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"infer_{args.model}_{args.device.replace(':', '')}_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine(), "model": args.model, "warmup": args.warmup,
                                "iters": args.iters, "rows": rows}, indent=1))
    print(f"wrote {path}")
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
