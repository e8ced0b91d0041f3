"""The run folder of a LoadGen test: results appear in ``--out`` only when the run succeeded.

LoadGen writes into a hidden staging folder ``--out/.incomplete-<pid>-<time>/``. A run that
completed, answered every query exactly once and had no SUT or QSL error is published: its files
move into ``--out`` (result files of an older run there are removed first, so old and new never
mix). A failed run's staging folder is renamed ``failed-<time>/`` with a ``RUN_FAILED.txt`` saying
why, so its logs can never be taken for results.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

# Every file a published run may leave in --out (LoadGen's logs, our settings, report and score).
RESULT_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json",
                "mlperf_log_trace.json", "settings.conf", "settings.json", "report.md",
                "latency_histogram.png", "accuracy.txt", "audit.config",
                "latency_timeline.png", "throughput_timeline.png", "device_throughput.png")  # fmt: skip


def make_staging(out: Path) -> Path:
    """A fresh hidden staging folder inside ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".incomplete-{os.getpid()}-{int(time.time())}"
    staging.mkdir()
    return staging


def fail(staging: Path, out: Path, reason: str) -> Path:
    """Rename the staging folder to ``out/failed-<time>/`` with the reason; return its path."""
    (staging / "RUN_FAILED.txt").write_text(f"This run FAILED; its logs are not results.\nreason: {reason}\n")
    failed = out / time.strftime("failed-%Y%m%d-%H%M%S")
    n = 1
    while failed.exists():
        failed, n = out / f"{failed.name.split('.')[0]}.{n}", n + 1
    staging.rename(failed)
    return failed


def publish(staging: Path, out: Path) -> None:
    """Move a successful run's files into ``out``; stale result files of older runs go first."""
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)
    trace = staging / "mlperf_log_trace.json"
    if trace.is_file() and trace.stat().st_size == 0:
        trace.unlink()  # tracing is off; LoadGen still creates the empty file
    for path in staging.iterdir():
        shutil.move(str(path), out / path.name)
    staging.rmdir()
