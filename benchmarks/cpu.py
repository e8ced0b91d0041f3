"""SSD-Large on the CPU, close to the hardware: peaks, every backend and precision, LoadGen, accuracy.

One run prints one table (and writes JSON to ``--out``):

1. **Peaks** of the cores this process uses, measured with PyTorch: a large 3x3 convolution in
   channels_last (256 -> 256 channels, 150x150, oneDNN picks AMX / AVX512-BF16 kernels where the
   CPU has them) in bf16 and fp32, an int8 matrix product (``torch._int_mm``, 2048^3) and, since
   that is not the kernel INT8 inference runs, a stack of ``INT8_DEPTH`` such convolutions (with
   ReLU) quantized by NNCF under OpenVINO: its activations stay INT8 from layer to layer, as in
   the quantized network, so the figure is the rate of the CPU's int8 units (VNNI / AMX) and not
   of one layer's fp32 <-> int8 conversions at its edges (a single quantized conv read 0.28 TOPS
   on an AMX Xeon whose INT8 SSD1200 ran at 3.3: "114% of peak"). The INT8 peak is the larger.
2. **SSD1200** (``ssd1200_r34``, 433 GFLOP per image, benchmark.md §1) at each batch size, for each
   backend and precision: end-to-end samples/s (network + benchmark.md §4 post-processing, median
   after warm-up: compile / autotune outside the timed runs), the fraction of the matching peak
   (GFLOP/image x samples/s over the bf16, fp32 or int8 peak), the speed-up over the plain PyTorch
   eager fp32 row (the baseline; none when ``--variants`` leaves it out), and the output
   difference against fp32 eager (max |diff| of the raw maps / max |reference|). INT8 rows run files from `ssdbench.infer.quantize`, calibrated on
   ``--calib-count`` embedded-dataset train images. Random weights (speed does not depend on them).
   The variants are timed in interleaved rounds (``--iters``), so on a shared machine every row
   sees the same load.
3. ``--loadgen``: LoadGen Offline runs (``ssdbench loadgen --scenario Offline --preset cpu --model
   ssd1200_r34`` with the table's backends; ``--loadgen-samples`` samples, expected rate = the table's
   batch-8 figure so the run lasts about ``--loadgen-seconds``): samples/s, VALID/INVALID, speed-up.
4. ``--accuracy``: COCO mAP of the trained demo model (``--weights``, default the demo preset
   trained once into the cache folder by `ssdbench.train.demo_model.demo_checkpoint`, about 2.5
   minutes on 2 cores the first time) on the whole embedded val set (250 images) per backend and
   precision, against its fp32 mAP (the MLPerf closed rule asks >= 99%). ``--only-accuracy``
   skips the rest.

    python benchmarks/cpu.py                                    # peaks + table, batch 1 and 8
    python benchmarks/cpu.py --loadgen --accuracy               # everything (tens of minutes on 2 cores)
    python benchmarks/cpu.py --variants eager:fp32,openvino:int8 --batch-sizes 1
    python benchmarks/cpu.py --only-accuracy                    # the accuracy of every path only
"""

from __future__ import annotations

import argparse
import copy
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

GFLOP = {"ssd1200_r34": 433.2, "ssd128_mini": None}  # benchmark.md §1 (`ssdbench model info`)
# backend:precision; layout cl = channels_last (eager / compile). int8 = a quantized model file.
VARIANTS = ("eager:fp32", "eager:bf16:cl", "compile:fp32:cl", "compile:bf16:cl", "onnxruntime:fp32",
            "onnxruntime:int8", "openvino:fp32", "openvino:bf16", "openvino:int8")
LOADGEN = ("eager:fp32", "compile:bf16:cl", "openvino:bf16", "onnxruntime:int8", "openvino:int8",
           "openvino:int8:x2", "eager:fp32")  # x2 = two instances, each on half of the cores; the baseline twice


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ssd1200_r34", help="network of the table (ssd128_mini: a quick smoke run)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--calib-count", type=int, default=8, help="calibration images of the INT8 files")
    p.add_argument("--loadgen", action="store_true", help="also LoadGen Offline runs")
    p.add_argument("--loadgen-variants", default=",".join(LOADGEN))
    p.add_argument("--loadgen-samples", type=int, default=16, help="QSL samples of the LoadGen runs")
    p.add_argument("--loadgen-seconds", type=float, default=30.0, help="min_duration of the LoadGen runs")
    p.add_argument("--accuracy", action="store_true", help="also the demo model's mAP per variant")
    p.add_argument("--only-accuracy", action="store_true", help="only the demo model's mAP per variant")
    p.add_argument("--weights", help="the trained ssd128_mini of --accuracy (default: the cached demo model)")
    p.add_argument("--out", default="benchmarks/out")
    return p.parse_args(argv)


# ---------------------------------------------------------------- 1. peaks
def peaks(repeats: int = 3) -> dict[str, float]:
    """Practical TFLOP/s (TOPS for int8) of this process's cores (module doc): the best of
    ``repeats`` measurements, since on a shared machine a slow one measures the others' load."""
    runs = [_peaks_once() for _ in range(repeats)]
    return {key: max(r[key] for r in runs) for key in runs[0]}


def _peaks_once() -> dict[str, float]:
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 256, 150, 150).contiguous(memory_format=torch.channels_last)
    flops = 2 * 256 * 256 * 9 * 150 * 150
    out = {}
    with torch.inference_mode():
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            c, xx = conv.to(dtype), x.to(dtype)
            out[name] = flops / statistics.median(timed(lambda: c(xx), 2, 5)) / 1e12  # noqa: B023
        a = torch.randint(-128, 127, (2048, 2048), dtype=torch.int8)
        b = torch.randint(-128, 127, (2048, 2048), dtype=torch.int8)
        out["int8_matmul"] = 2 * 2048**3 / statistics.median(timed(lambda: torch._int_mm(a, b), 2, 5)) / 1e12
    out["int8_conv_openvino"] = _openvino_int8_conv(conv.float(), x.float().clone(), flops)
    out["int8"] = max(out["int8_matmul"], out["int8_conv_openvino"])  # the INT8 rows' peak
    return out


INT8_DEPTH = 8  # convolutions in the INT8 peak's stack (module doc)


def _openvino_int8_conv(conv, x, flops: float, depth: int = INT8_DEPTH) -> float:
    """TOPS of ``depth`` copies of the convolution (each followed by ReLU) quantized to INT8 by
    NNCF and run by OpenVINO (its VNNI / AMX kernels; INT8 between the layers): torch's int8
    matrix product is not the kernel our INT8 rows run."""
    import tempfile
    import warnings

    import nncf
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        path = f"{tmp}/conv.onnx"
        layers = [m for _ in range(depth) for m in (copy.deepcopy(conv), torch.nn.ReLU())]
        stack = torch.nn.Sequential(*layers).eval()
        torch.onnx.export(stack, (x,), path, dynamo=False, input_names=["x"], output_names=["y"])
        samples = [torch.randn_like(x).numpy() for _ in range(2)]
        model = nncf.quantize(ov.Core().read_model(path), nncf.Dataset(samples), subset_size=2)
        compiled = ov.Core().compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        request, feed = compiled.create_infer_request(), {0: samples[0]}
        return depth * flops / statistics.median(timed(lambda: request.infer(feed), 2, 5)) / 1e12


# ---------------------------------------------------------------- 2. the table
def _parse(variant: str) -> dict:
    parts = variant.split(":")
    return {"name": variant, "backend": parts[0], "precision": parts[1], "cl": "cl" in parts[2:],
            "instances": 2 if "x2" in parts[2:] else 1}


def _quantized_files(model, model_name: str, count: int, folder: Path) -> dict[str, Path]:
    """INT8 folders for onnxruntime and openvino, calibrated on embedded train images."""
    from ssdbench.data.synth import default_dataset
    from ssdbench.infer.quantize import Calibration, FloatModel, calibration_files, quantize
    from ssdbench.model.specs import get_spec

    calibration = Calibration(calibration_files(default_dataset(), count=count), f"{count} embedded train images")
    src = FloatModel(cached_onnx(model, model_name), model_name, get_spec(model_name).input_size, "random init")
    return {rt: quantize(rt, src, folder / f"{model_name}-{rt}-int8", calibration).parent
            for rt in ("onnxruntime", "openvino")}


def build(v: dict, model, model_name: str, qfiles: dict):
    """The backend of one variant (INT8: the quantized file; the float parts in bf16 on OpenVINO
    where the CPU has native bf16)."""
    if v["precision"] == "int8":
        dtype = "auto" if v["backend"] == "openvino" else "fp32"
        return make_backend(v["backend"], model_name, BackendOptions(dtype=dtype),
                            model_file=qfiles[v["backend"]])
    options = BackendOptions(dtype=v["precision"], channels_last=v["cl"])
    return make_backend(v["backend"], model_name, options, model=model)


def _rel_diff(backend, images, reference) -> float:
    with torch.inference_mode():
        got = backend.forward_raw(images)
    num = max((g.float() - r).abs().max().item() for g, r in zip(got, reference))
    return num / max(r.abs().max().item() for r in reference)


def table(args, model, model_name, qfiles, peak) -> list[dict]:
    """Every variant x batch size, timed in interleaved rounds: on a shared machine each variant
    sees the same mix of load, so the ratios between rows hold even when absolute figures drift."""
    size = model.spec.input_size
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    images = torch.randn(max(sizes), 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = [t.float() for t in model(images[:1])]
    built = []
    for variant in args.variants.split(","):
        v, t0 = _parse(variant), time.perf_counter()
        backend = build(v, model, model_name, qfiles)
        diff = _rel_diff(backend, images[:1], reference)
        for bs in sizes:  # warm-up: compile / autotune per batch size, outside the timed rounds
            with torch.inference_mode():
                timed(lambda: backend.predict(images[:bs]).counts.tolist(), args.warmup, 0)  # noqa: B023
        built.append((v, backend, diff))
        print(f"  built {variant:<18} rel.diff {diff:.1e} ({time.perf_counter() - t0:.0f} s)", flush=True)
    times = {(v["name"], bs): [] for v, _b, _d in built for bs in sizes}
    for rnd in range(args.iters):
        for v, backend, _diff in built:
            for bs in sizes:
                with torch.inference_mode():
                    times[v["name"], bs] += timed(lambda: backend.predict(images[:bs]).counts.tolist(), 0, 1)  # noqa: B023
        print(f"  round {rnd + 1}/{args.iters} done (load {os.getloadavg()[0]:.1f})", flush=True)
    rows = []
    for v, backend, diff in built:
        for bs in sizes:
            sps = bs / statistics.median(times[v["name"], bs])
            gflop = GFLOP.get(model_name)
            frac = gflop * sps / 1e3 / peak[v["precision"]] if gflop else None
            rows.append({**v, "batch": bs, "samples_per_s": sps, "peak_fraction": frac, "rel_diff": diff,
                         "times_s": times[v["name"], bs], "config": backend.describe()})
    base = {b["batch"]: b["samples_per_s"] for b in rows if b["name"] == "eager:fp32"}
    for r in rows:  # without eager:fp32 in --variants there is no baseline: no speed-ups
        r["speedup"] = r["samples_per_s"] / base[r["batch"]] if r["batch"] in base else None
    return rows


# ---------------------------------------------------------------- 3. LoadGen
def loadgen_runs(args, model_name, qfiles, rows, out: Path) -> list[dict]:
    from ssdbench.loadgen import settings as S
    from ssdbench.loadgen.run import RunInputs, run_loadgen

    results = []
    for variant in args.loadgen_variants.split(","):
        v = _parse(variant)
        name = variant.replace(":x2", "")
        table_rows = [r for r in rows if r["name"] == name and r["batch"] == 8] or [r for r in rows if r["name"] == name]
        # 1.5x the table's rate: a faster run would end before min_duration (INVALID); a slower one runs longer.
        # Not times the instances: they share the same cores the table's row used.
        expected = 1.5 * (table_rows[-1]["samples_per_s"] if table_rows else 1.0)
        dtype = v["precision"] if v["precision"] != "int8" else ("auto" if v["backend"] == "openvino" else "fp32")
        flags = {"model": model_name, "backend": v["backend"], "dtype": dtype, "channels_last": v["cl"],
                 "instances": v["instances"], "count": args.loadgen_samples, "max_batch_size": 8,
                 "min_duration": round(args.loadgen_seconds * 1000), "min_query_count": args.loadgen_samples,
                 "target_qps": expected, "warmup": 1, "threads": v["instances"]}  # fmt: skip
        settings = S.resolve("Offline", "performance", "cpu", None, flags)
        folder = out / f"loadgen-{len(results)}-{variant.replace(':', '-')}"
        t0 = time.perf_counter()
        model_file = qfiles.get(v["backend"]) if v["precision"] == "int8" else None
        run = run_loadgen(settings, folder, RunInputs(model_file=model_file), progress=False, verbose=False)
        sps = run.summary.metrics.get("Samples per second")
        if run.result != "VALID" and sps:  # faster than expected: too short; once more at its own rate
            flags["target_qps"] = expected = 1.2 * sps
            settings = S.resolve("Offline", "performance", "cpu", None, flags)
            folder = Path(f"{folder}-again")  # the run recorded below is this one
            run = run_loadgen(settings, folder, RunInputs(model_file=model_file), progress=False,
                              verbose=False)
            sps = run.summary.metrics.get("Samples per second")
        results.append({**v, "result": run.result, "samples_per_s": sps, "expected_qps": expected,
                        "folder": str(folder), "wall_s": time.perf_counter() - t0})
        print(f"  loadgen {variant:<20} {run.result}: {sps} samples/s", flush=True)
    # the baseline: the mean of its runs (first and last, so load drifts count on both sides)
    base = [r["samples_per_s"] for r in results if r["name"] == "eager:fp32" and r["samples_per_s"]]
    for r in results:
        r["speedup"] = r["samples_per_s"] / statistics.mean(base) if base and r["samples_per_s"] else None
    return results


# ---------------------------------------------------------------- 4. accuracy
def accuracy(args, out: Path) -> list[dict]:
    from ssdbench.data.coco import CocoDetection
    from ssdbench.data.loader import InputSettings, build_loader
    from ssdbench.data.synth import default_dataset
    from ssdbench.eval.evaluate import evaluate_backend
    from ssdbench.train.demo_model import demo_checkpoint

    weights = args.weights or demo_checkpoint(progress=True)
    print(f"accuracy of {weights} ...", flush=True)
    model = build_model("ssd128_mini", weights=weights).eval()
    dataset = CocoDetection(default_dataset(), "val")
    loader = build_loader(dataset, 32, train=False, inputs=InputSettings(128), workers=0)
    qfiles = _quantized_files(model, "ssd128_mini", 200, out / "quantized")
    rows = []
    for variant in args.variants.split(","):
        v = _parse(variant)
        stats, _ = evaluate_backend(build(v, model, "ssd128_mini", qfiles), loader, dataset, "faster", progress=False)
        rows.append({**v, "map": float(stats[0])})
        print(f"  accuracy {variant:<18} mAP {stats[0]:.4f}", flush=True)
    ref = next((r["map"] for r in rows if r["name"] == "eager:fp32"), None)
    for r in rows:  # the fp32 eager mAP is the reference; without it in --variants, no ratios
        r["ratio"] = r["map"] / ref if ref else None
    return rows


# ---------------------------------------------------------------- output
def _print_accuracy(acc) -> None:
    for r in acc:
        ratio = f"{100 * r['ratio']:.2f}% of fp32" if r["ratio"] is not None else "(no eager:fp32 reference)"
        print(f"mAP {r['name']:<20} {r['map']:.4f}  {ratio}")


def print_tables(peak, rows, lg, acc) -> None:
    if peak is None:  # --only-accuracy
        _print_accuracy(acc)
        return
    print(f"\npeaks (this process, {torch.get_num_threads()} threads): bf16 {peak['bf16']:.3f} TFLOP/s, "
          f"fp32 {peak['fp32']:.3f} TFLOP/s (3x3 conv, channels_last), int8 {peak['int8_matmul']:.3f} TOPS "
          f"(torch._int_mm), {peak['int8_conv_openvino']:.3f} TOPS ({INT8_DEPTH} convs in INT8, OpenVINO)")
    print(f"{'variant':<20}{'batch':>6}{'samples/s':>11}{'x eager fp32':>14}{'of peak':>9}{'rel.diff':>10}")
    for r in rows:
        frac = f"{100 * r['peak_fraction']:.0f}%" if r["peak_fraction"] is not None else "-"
        speed = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
        print(f"{r['name']:<20}{r['batch']:>6}{r['samples_per_s']:>11.3f}{speed:>14}{frac:>9}"
              f"{r['rel_diff']:>10.1e}")
    for r in lg:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(f"loadgen Offline {r['name']:<22} {r['result']:<8} {r['samples_per_s']} samples/s  {speed}")
    _print_accuracy(acc)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.only_accuracy:
        acc = accuracy(args, out)
        path = out / f"cpu_accuracy_{time.strftime('%Y%m%d_%H%M%S')}.json"
        path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv,
                                    "torch": torch.__version__, "accuracy": acc}, indent=1, default=str))
        print_tables(None, [], [], acc)
        print(f"wrote {path}")
        return 0
    print("peaks ...", flush=True)
    peak = peaks()
    model_name = args.model
    model = build_model(model_name).eval()
    print("quantizing (INT8 files) ...", flush=True)
    qfiles = _quantized_files(model, model_name, args.calib_count, out / "quantized")
    print("table ...", flush=True)
    path = out / f"cpu_{time.strftime('%Y%m%d_%H%M%S')}.json"
    result = {"machine": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv, "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "load_average_start": os.getloadavg()},
              "peaks": peak, "rows": [], "loadgen": [], "accuracy": []}  # fmt: skip

    def save(key, value):  # after every stage: a later failure keeps what was measured
        result[key] = value
        result["machine"]["load_average_now"] = os.getloadavg()
        path.write_text(json.dumps(result, indent=1, default=str))
        return value

    rows = save("rows", table(args, model, model_name, qfiles, peak))
    print_tables(peak, rows, [], [])
    lg = save("loadgen", loadgen_runs(args, model_name, qfiles, rows, out) if args.loadgen else [])
    acc = save("accuracy", accuracy(args, out) if args.accuracy else [])
    print_tables(peak, rows, lg, acc)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
