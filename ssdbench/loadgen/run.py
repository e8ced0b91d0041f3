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

from ssdbench.dist import pick_device
from ssdbench.errors import CliError
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.accuracy import open_val_dataset, report_accuracy
from ssdbench.loadgen.qsl import SampleLibrary
from ssdbench.loadgen.report import short_text, write_report
from ssdbench.loadgen.sut import BatchingSUT, HostToDevice, check_detections

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


def build_predict(sut_settings: dict, weights, num_classes: int, device: torch.device):
    """The backend's ``predict`` for the SUT (padded detections, benchmark.md §4 post-processing)."""
    from ssdbench.infer.backends import make_backend

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
                dets = check_detections(predict(feeder([np.zeros(sample_shape, np.float32)] * n)))
            dets.counts.cpu()  # wait for the device


def _device(run_settings: S.RunSettings) -> torch.device:
    """The SUT's torch device; an error names ``--device`` or the file / preset that chose it."""
    source = run_settings.sources.get("device", "flags")
    flag = "--device" if source == "flags" else f"device (from {source})"
    return pick_device(run_settings.sut["device"], flag=flag)


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
    device = _device(run_settings)
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
