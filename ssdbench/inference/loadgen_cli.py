"""SSD-Large under MLPerf LoadGen: `ssdbench loadgen --scenario S --mode performance|accuracy`.

Wires the parts: settings (`settings.py`), the QSL over COCO val (`qsl.py`), the dynamic-batching
SUT (`sut.py`) around a backend (`backends.py`), LoadGen itself, and the report (`report.py`).
LoadGen writes into a hidden staging folder inside ``--out``; only a run that completed, answered
every query exactly once and had no SUT or QSL error has its files moved into ``--out``. A failed
run's staging folder is renamed ``failed-<time>/`` with a ``RUN_FAILED.txt`` saying why, so its
logs can never be taken for results. Accuracy mode then scores ``mlperf_log_accuracy.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssdbench.cli import CliError

from . import settings as S
from .accuracy import open_val_dataset, report_accuracy
from .qsl import SampleLibrary
from .report import short_text, write_report
from .sut import BatchingSUT, HostToDevice

EPILOG = """examples:
  ssdbench loadgen --scenario Offline --mode performance --preset cpu --out runs/lg_offline
  ssdbench loadgen --scenario Server --preset gpu_h100 --weights resnet34-ssd1200.pt --data /coco
  ssdbench loadgen --scenario SingleStream --mode accuracy --preset cpu --weights demo.pt
  ssdbench loadgen --preset tpu_v3_1x_server --device cuda --min-duration 60    # seed settings
  ssdbench loadgen --scenario Server --user-conf user.conf --qps 250 --latency 100
precedence: built-in ssd-resnet34.conf < --preset < --user-conf < flags
"""

RESULT_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json",
                "mlperf_log_trace.json", "settings.conf", "settings.json", "report.md",
                "latency_histogram.png", "accuracy.txt")  # fmt: skip


class RunFailed(CliError):
    """The LoadGen run finished but its results cannot be trusted."""


@dataclass
class LoadgenRun:
    """What a finished run produced."""

    out: Path
    result: str  # VALID / INVALID (LoadGen's verdict)
    summary: object  # report.Summary
    sut: BatchingSUT
    settings: S.RunSettings
    map: float | None = None  # accuracy mode


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here")
    return device


def build_predict(sut_settings: dict, weights, num_classes: int, device: torch.device):
    """The backend's ``predict`` for the SUT (padded detections, SPEC §4 post-processing)."""
    from .backends import make_backend

    backend = make_backend(
        sut_settings["backend"], sut_settings["model"], weights=weights, device=device,
        dtype=sut_settings["dtype"], channels_last=sut_settings["channels_last"],
        space_to_depth=sut_settings["space_to_depth"], num_classes=None if weights else num_classes,
    )  # fmt: skip
    return backend.predict


def warm_up(predict, sample_shape, max_batch: int, iterations: int, device: torch.device) -> None:
    """Untimed batches of zeros at the largest and the smallest batch size (compile, autotune)."""
    feeder = HostToDevice(device, max_batch, sample_shape)
    for n in sorted({max_batch, 1}):
        for _ in range(iterations):
            with torch.inference_mode():
                dets = predict(feeder([np.zeros(sample_shape, np.float32)] * n))
            _ = dets[-1].cpu() if isinstance(dets, tuple) else dets  # wait for the device


def _staging_dir(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".incomplete-{os.getpid()}-{int(time.time())}"
    staging.mkdir()
    return staging


def _fail(staging: Path, out: Path, reason: str) -> Path:
    """Rename the staging folder to failed-<time>/ with the reason; return its path."""
    (staging / "RUN_FAILED.txt").write_text(f"This run FAILED; its logs are not results.\nreason: {reason}\n")
    failed = out / time.strftime("failed-%Y%m%d-%H%M%S")
    n = 1
    while failed.exists():
        failed, n = out / f"{failed.name.split('.')[0]}.{n}", n + 1
    staging.rename(failed)
    return failed


def _publish(staging: Path, out: Path) -> None:
    """Move a successful run's files into ``out``; stale result files of older runs go first."""
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
    trace = staging / "mlperf_log_trace.json"
    if trace.is_file() and trace.stat().st_size == 0:
        trace.unlink()  # tracing is off; LoadGen still creates the empty file
    for path in staging.iterdir():
        shutil.move(str(path), out / path.name)
    staging.rmdir()


def _run_test(sut: BatchingSUT, qsl: SampleLibrary, test_settings, staging: Path) -> None:
    import mlperf_loadgen as lg

    log = lg.LogSettings()
    log.log_output.outdir = str(staging)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False
    sut_handle, qsl_handle = sut.construct(), qsl.construct()
    try:
        lg.StartTestWithLogSettings(sut_handle, qsl_handle, test_settings, log)
    finally:
        lg.DestroyQSL(qsl_handle)
        lg.DestroySUT(sut_handle)
        sut.stop()


def _check_run(sut: BatchingSUT, qsl: SampleLibrary, staging: Path) -> None:
    if qsl.error is not None:
        raise RunFailed(f"loading a QSL sample failed: {qsl.error}")
    if sut.error is not None:
        raise RunFailed(f"the SUT failed: {type(sut.error).__name__}: {sut.error}")
    if problem := sut.response_problems():
        raise RunFailed(f"response bookkeeping: {problem}")
    if not (staging / "mlperf_log_summary.txt").is_file():
        raise RunFailed("LoadGen wrote no summary")


def run_loadgen(run_settings: S.RunSettings, out: str | Path, data=None, weights=None, predict=None,
                cache: bool = True, progress: bool = True, verbose: bool = True,
                eval_backend: str = "faster") -> LoadgenRun:  # fmt: skip
    """One LoadGen test; ``predict`` replaces the backend (same contract as `Backend.predict`)."""
    sut_cfg, out = run_settings.sut, Path(out)
    dataset = open_val_dataset(data)
    device = resolve_device(sut_cfg["device"])
    from ssdbench.model.specs import get_spec

    input_size = get_spec(sut_cfg["model"]).input_size
    if predict is None:
        predict = build_predict(sut_cfg, weights, dataset.num_classes, device)
    qsl = SampleLibrary(dataset, input_size, sut_cfg["count"],
                        run_settings.loadgen.get("performance_sample_count_override") or 64,
                        cache=cache, progress=progress)  # fmt: skip
    qsl.prepare()
    warm_up(predict, qsl.sample_shape, sut_cfg["max_batch_size"], sut_cfg["warmup"], device)
    staging = _staging_dir(out)
    try:
        ts = S.make_test_settings(run_settings, str(staging / "settings.conf"), qsl.performance_count)
        info = {**run_settings.to_json(), "data": str(dataset.root), "weights": str(weights),
                "device": str(device), "qsl_count": qsl.count}  # fmt: skip
        (staging / "settings.json").write_text(json.dumps(info, indent=2) + "\n")
        sut = BatchingSUT(predict, qsl, sut_cfg["max_batch_size"], sut_cfg["batch_timeout_us"],
                          sut_cfg["threads"], device)  # fmt: skip
        _run_test(sut, qsl, ts, staging)
        _check_run(sut, qsl, staging)
        # Offline is one query: its samples' latencies make the histogram; else per query.
        offline = run_settings.scenario == "Offline"
        latencies = sut.sample_latencies_ns if offline else sut.query_latencies_ns
        summary = write_report(staging, info, latencies, sut.batch_sizes)
        # Scored before publishing: an accuracy run whose log cannot be scored is no result.
        score = _score_accuracy(staging, dataset, eval_backend) if run_settings.mode == "accuracy" else None
    except BaseException as exc:
        failed = _fail(staging, out, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, RunFailed):
            raise RunFailed(f"{exc} (logs moved to {failed}, not results)") from None
        raise
    _publish(staging, out)
    if verbose:
        print(short_text(summary))
        if score is not None:
            print((out / "accuracy.txt").read_text(), end="")
        print(f"logs and report: {out}")
    return LoadgenRun(out, summary.result, summary, sut, run_settings, score)


def _score_accuracy(out: Path, dataset, backend: str) -> float:
    """Run the accuracy tool on the fresh log and keep its output in accuracy.txt."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        value = report_accuracy(out / "mlperf_log_accuracy.json", backend=backend, dataset=dataset)
    (out / "accuracy.txt").write_text(buf.getvalue())
    return value


def add_arguments(parser) -> None:
    a = parser.add_argument
    a("--scenario", default=None, help=f"one of {', '.join(S.SCENARIOS)} (default: the preset's)")
    a("--mode", default="performance", help=f"one of {', '.join(S.MODES)}")
    a("--preset", default=None, help="system preset: " + ", ".join(S.load_presets()))
    a("--user-conf", default=None, help="LoadGen-syntax file: ssd-resnet34.<Scenario>.<key> = value")
    a("--data", default=None, help="COCO-format dataset root with val2017 (default: the embedded one)")
    a("--weights", default=None, help="model weights (default: random init, for timing only)")
    a("--out", default="runs/loadgen", help="output folder (default runs/loadgen)")
    a("--no-cache", action="store_true", help="do not cache resized samples on disk")
    a("--eval-backend", default="faster", choices=("faster", "pycocotools"), help="COCO eval (accuracy mode)")
    g = parser.add_argument_group("LoadGen settings (override config and preset)")
    g.add_argument("--qps", type=float, help="target_qps: Server arrival rate / Offline expected rate")
    g.add_argument("--latency", type=float, help="target_latency in ms (Server bound; expected latency "
                   "for SingleStream/MultiStream)")  # fmt: skip
    g.add_argument("--samples-per-query", type=int, help="MultiStream samples per query")
    g.add_argument("--min-duration", type=float, help="min_duration in seconds")
    g.add_argument("--min-query-count", type=int, help="min_query_count (Offline: samples)")
    g.add_argument("--performance-sample-count", type=int, help="samples resident in performance mode")
    s = parser.add_argument_group("system under test")
    s.add_argument("--count", type=int, help="samples in the QSL (0 = the whole val split)")
    s.add_argument("--max-batch-size", type=int, help="dynamic batcher: largest batch")
    s.add_argument("--batch-timeout-us", type=int, help="dynamic batcher: wait for a fuller batch (µs)")
    s.add_argument("--threads", type=int, help="worker threads (batches in flight)")
    s.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), help="compute precision")
    s.add_argument("--backend", choices=("eager", "compile", "onnxruntime"), help="inference backend")
    s.add_argument("--model", help="ssd1200_r34 (SSD-Large), ssd300_r34 or ssd128_mini")
    s.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    s.add_argument("--space-to-depth", action="store_true", default=None, help="space-to-depth first conv")
    s.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format")
    s.add_argument("--warmup", type=int, help="untimed warm-up batches")


def flags_from_args(args) -> dict:
    """Command-line flags -> setting keys (None = not given)."""
    ms = None if args.min_duration is None else round(args.min_duration * 1000)
    return {
        "target_qps": args.qps, "target_latency": args.latency, "samples_per_query": args.samples_per_query,
        "min_duration": ms, "min_query_count": args.min_query_count,
        "performance_sample_count_override": args.performance_sample_count, "count": args.count,
        "max_batch_size": args.max_batch_size, "batch_timeout_us": args.batch_timeout_us,
        "threads": args.threads, "dtype": args.dtype, "backend": args.backend, "model": args.model,
        "device": args.device, "space_to_depth": args.space_to_depth,
        "channels_last": args.channels_last, "warmup": args.warmup,
    }  # fmt: skip


def run(args) -> int:
    from ..model.weights import checkpoint_model_name

    # Our checkpoints name their network: weights decide the model unless --model says otherwise.
    args.model = args.model or checkpoint_model_name(args.weights)
    run_settings = S.resolve(args.scenario, args.mode, args.preset, args.user_conf, flags_from_args(args))
    print("resolved settings (value, source):")
    print("  " + S.format_settings(run_settings).replace("\n", "\n  "))
    result = run_loadgen(run_settings, args.out, args.data, args.weights, cache=not args.no_cache,
                         eval_backend=args.eval_backend)  # fmt: skip
    return 0 if result.result == "VALID" or run_settings.mode == "accuracy" else 1
