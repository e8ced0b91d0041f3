"""SSD-Large under LoadGen against the network alone, and the device pool's scaling on the CPU.

For SSD1200 (random weights) with OpenVINO INT8 (an `ssdbench quantize --backend openvino` file,
calibrated on ``--calib-count`` embedded train images) and with ``torch.compile`` bf16
channels_last, one table (and JSON in ``--out``):

(a) the network alone: `Backend.predict` on a batch of 8 in this process, all cores, median of
    ``--iters`` after warm-up (the ceiling of any harness);
(b) LoadGen Offline, one backend on all cores in the SUT's own process (``ssdbench loadgen`` without
    ``--devices``), and (b1) the same through the pool with one worker (``--devices cpu:1``);
(c) LoadGen Offline with ``--devices cpu:2``: two workers, one core each.

(h) the harness's own CPU time per batch of 8 at 1200x1200 (thread CPU time, one thread, so
    other jobs on the machine barely move it): the plain SUT's stack of float32 samples, the
    pool worker's read of uint8 slots and its normalisation (fresh float32 temporaries, as first
    written, against `Normaliser`'s reused buffer).

(b) / (a) is what the harness costs (target: >= 95%); (c) / (b) is the scaling figure. Every
LoadGen run: ``--count --samples`` QSL samples, batches of 8, ``--seconds`` minimum duration,
expected rate 1.3x (a) (a faster run than expected is INVALID: too short; it is rerun once at its
own rate). The variants run one after the other: on a shared machine compare rows of one run.

    python benchmarks/loadgen_pool.py                        # both models, about 10-20 min on 2 cores
    python benchmarks/loadgen_pool.py --variants openvino:int8 --samples 16 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import timed

from ssdbench.infer.backends import BackendOptions, cached_onnx, make_backend
from ssdbench.model.ssd import build_model

MODEL = "ssd1200_r34"
VARIANTS = ("openvino:int8", "compile:bf16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="backend:precision, comma-separated")
    p.add_argument("--samples", type=int, default=16, help="QSL samples (and min query count) per LoadGen run")
    p.add_argument("--seconds", type=float, default=20.0, help="min_duration of each LoadGen run")
    p.add_argument("--iters", type=int, default=3, help="timed batches of 8 for (a)")
    p.add_argument("--calib-count", type=int, default=8)
    p.add_argument("--configs", default="h,a,b,b1,c", help="which of h, a, b, b1, c to run")
    p.add_argument("--out", default="benchmarks/out/loadgen_pool")
    return p.parse_args(argv)


def int8_file(out: Path, count: int) -> Path:
    """The OpenVINO INT8 folder (made once in ``out``)."""
    from ssdbench.data.synth import default_dataset
    from ssdbench.infer.quantize import Calibration, FloatModel, calibration_files, quantize
    from ssdbench.model.specs import get_spec

    folder = out / f"{MODEL}-openvino-int8"
    if folder.is_dir() and any(folder.glob("*.xml")):
        return folder
    torch.manual_seed(0)
    src = FloatModel(cached_onnx(build_model(MODEL).eval(), MODEL), MODEL, get_spec(MODEL).input_size, "random init")
    calibration = Calibration(calibration_files(default_dataset(), count=count), f"{count} embedded train images")
    return quantize("openvino", src, folder, calibration).parent


def backend_flags(variant: str, int8: Path | None) -> dict:
    backend, precision = variant.split(":")[:2]
    if precision == "int8":
        return {"backend": backend, "dtype": "auto", "model_file": int8}
    return {"backend": backend, "dtype": precision, "channels_last": True}


def network_alone(variant: str, int8, iters: int) -> float:
    """(a): samples/s of `predict` on a batch of 8, this process, all its cores."""
    flags = backend_flags(variant, int8)
    if "model_file" in flags:
        options, kwargs = BackendOptions(dtype=flags["dtype"]), {"model_file": flags["model_file"]}
    else:
        options = BackendOptions(dtype=flags["dtype"], channels_last=True)
        kwargs = {"model": build_model(MODEL).eval()}
    backend = make_backend(flags["backend"], MODEL, options, **kwargs)
    if hasattr(backend, "use_batch_buckets"):
        backend.use_batch_buckets(8)
    images = torch.randn(8, 3, 1200, 1200, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        times = timed(lambda: backend.predict(images).counts.tolist(), 1, iters)
    return 8 / statistics.median(times)


def loadgen_offline(variant: str, int8, devices: str | None, expected: float, args, folder: Path) -> dict:
    """(b) / (b1) / (c): one LoadGen Offline run (rerun once at its own rate when it was too short)."""
    from ssdbench.loadgen import settings as S
    from ssdbench.loadgen.run import RunInputs, run_loadgen

    flags = backend_flags(variant, int8)
    model_file = flags.pop("model_file", None)
    keys = {"model": MODEL, **flags, "count": args.samples, "max_batch_size": 8, "warmup": 1,
            "min_duration": round(args.seconds * 1000), "min_query_count": args.samples,
            "target_qps": expected, "threads": 1, "devices": devices}  # fmt: skip
    t0 = time.perf_counter()
    for attempt in range(2):
        settings = S.resolve("Offline", "performance", "cpu", None, keys)
        run = run_loadgen(settings, folder / f"try{attempt}", RunInputs(model_file=model_file),
                          progress=False, verbose=False)
        sps = run.summary.metrics.get("Samples per second")
        if run.result == "VALID" or not sps:
            break
        keys["target_qps"] = float(f"{1.1 * sps:.4g}")
    report = (folder / f"try{attempt}" / "report.md")
    return {"result": run.result, "samples_per_s": sps, "wall_s": time.perf_counter() - t0,
            "folder": str(report.parent), "expected_qps": keys["target_qps"]}


def harness_costs(repeats: int = 5) -> dict[str, float]:
    """(h): median thread CPU ms per batch of 8 uint8 / float32 1200x1200 samples."""
    import numpy as np

    from ssdbench.loadgen.samples import Normaliser, SampleReader, SharedSamples

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    u8 = [rng.integers(0, 256, (3, 1200, 1200), dtype=np.uint8) for _ in range(8)]
    f32 = [x.astype(np.float32) for x in u8]
    store, reader, normalise = SharedSamples(8, (3, 1200, 1200)), SampleReader(), Normaliser("cpu")
    for i, x in enumerate(u8):
        store.put(i, x)
    path, shape = store.handle()
    read = lambda: reader.batch(path, shape, store.slots(range(8)))

    def fresh():  # out-of-place ops: three new float32 batches per call
        return (read().float() / 255.0 - normalise.mean) / normalise.std

    calls = {"plain SUT: stack 8 float32 samples": lambda: torch.from_numpy(np.stack(f32)),
             "pool worker: read 8 uint8 slots": read,
             "pool worker: read + normalise, fresh temporaries": fresh,
             "pool worker: read + normalise, Normaliser (reused buffer)": lambda: normalise(read())}  # fmt: skip
    out = {}
    for name, call in calls.items():
        call()
        times = []
        for _ in range(repeats):
            t0 = time.thread_time()
            call()
            times.append((time.thread_time() - t0) * 1e3)
        out[name] = statistics.median(times)
    store.close()
    torch.set_num_threads(threads)
    return out


CONFIGS = {"b": ("LoadGen Offline, 1 backend on all cores (no pool)", None),
           "b1": ("LoadGen Offline, --devices cpu:1 (pool, 1 worker)", "cpu:1"),
           "c": ("LoadGen Offline, --devices cpu:2 (2 workers x 1 core)", "cpu:2")}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = args.configs.split(",")
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv, "load_start": os.getloadavg(),
              "cpu": _cpu_name(), "rows": []}  # fmt: skip
    path = out / f"loadgen_pool_{time.strftime('%Y%m%d_%H%M%S')}.json"
    if "h" in configs:
        result["harness_cpu_ms_per_batch_of_8"] = costs = harness_costs()
        for name, ms in costs.items():
            print(f"(h) {name}: {ms:.0f} ms CPU", flush=True)
        path.write_text(json.dumps(result, indent=1, default=str))
    variants = [v for v in args.variants.split(",") if v]
    int8 = int8_file(out, args.calib_count) if any(v.endswith("int8") for v in variants) else None
    for variant in variants:
        alone = network_alone(variant, int8, args.iters) if "a" in configs else None
        row = {"variant": variant, "a_network_alone": alone}
        print(f"{variant}: (a) network alone, batch 8: {alone} samples/s", flush=True)
        for key in [c for c in ("b", "b1", "c") if c in configs]:
            label, devices = CONFIGS[key]
            expected = float(f"{1.3 * (alone or 1.0):.4g}")
            got = loadgen_offline(variant, int8, devices, expected, args, out / f"{variant}-{key}")
            row[key] = got
            print(f"{variant}: ({key}) {label}: {got['result']} {got['samples_per_s']} samples/s", flush=True)
        result["rows"].append(row)
        result["load_now"] = os.getloadavg()
        path.write_text(json.dumps(result, indent=1, default=str))
    print_table(result["rows"])
    print(f"wrote {path}")
    return 0


def _ratio(x, y) -> str:
    return f"{100 * x / y:.0f}%" if x and y else "-"


def print_table(rows) -> None:
    print(f"\n{'variant':<15}{'(a) alone':>11}{'(b) LG':>9}{'b/a':>6}{'(b1) cpu:1':>12}{'b1/a':>6}"
          f"{'(c) cpu:2':>11}{'c/b':>6}")
    for r in rows:
        a = r.get("a_network_alone")
        b, b1, c = (r.get(k, {}).get("samples_per_s") for k in ("b", "b1", "c"))
        cell = lambda x, w: f"{x:>{w}.3f}" if x else f"{'-':>{w}}"
        print(f"{r['variant']:<15}{cell(a, 11)}{cell(b, 9)}{_ratio(b, a):>6}{cell(b1, 12)}{_ratio(b1, a):>6}"
              f"{cell(c, 11)}{_ratio(c, b):>6}")


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
