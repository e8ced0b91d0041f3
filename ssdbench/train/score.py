"""MLPerf olympic mean of the time-to-train of several runs: `ssdbench score RUN...`.

How MLPerf Training scores a benchmark (v1.1 rules; `mlperf_logging.result_summarizer`):
- a run's time to train is run_stop - run_start of its log, in minutes;
- SSD needs 5 runs; the fastest and the slowest are dropped and the other 3 averaged;
- a run that did not reach the quality target counts as the dropped slowest run: with one such
  run the score is the mean of the converged runs without the fastest; with two or more the
  result is invalid (MLPerf: "too many non-converging runs").
Other run counts (not an MLPerf score, printed as such): n >= 3 drops the fastest and the slowest
the same way; n = 1 or 2 reports the plain mean of the converged runs.

A RUN is a run folder (its `summary.json`, else the MLPerf log inside it) or an MLPerf log file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ssdbench.errors import CliError

MLPERF_RUNS = 5  # SSD (mlperf_logging.benchmark_meta: 'ssd': 5)
MAX_UNCONVERGED = 1  # result_summarizer: max_dropped_scores for every benchmark but unet3d
LOG_NAMES = ("mlperf_log.txt", "mllog.txt", "mlperf.log")


@dataclass
class RunResult:
    name: str
    minutes: float | None  # time to train; None when it cannot be measured
    reached: bool
    epochs: int | None = None
    source: str = ""


def _from_summary(path: Path) -> RunResult:
    try:
        data = json.loads(path.read_text())
        minutes = data.get("time_to_train_min")
        return RunResult(str(path.parent), None if minutes is None else float(minutes),
                         bool(data.get("reached_target", False)), data.get("epochs"), "summary.json")
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise CliError(f"{path}: not a valid summary.json ({exc})") from None


def _from_log(path: Path) -> RunResult:
    """Time to train and success from the `:::MLLOG` lines (first run_start, first run_stop)."""
    start = stop = None
    status, epochs = None, None
    for line in path.read_text(errors="replace").splitlines():
        if ":::MLLOG" not in line:
            continue
        try:
            event = json.loads(line.split(":::MLLOG", 1)[1])
        except json.JSONDecodeError:
            raise CliError(f"{path}: malformed :::MLLOG line: {line[:80]}") from None
        key, meta = event.get("key"), event.get("metadata") or {}
        if key == "run_start" and start is None:
            start = float(event["time_ms"])
        elif key == "run_stop" and stop is None:
            stop, status = float(event["time_ms"]), meta.get("status")
        elif key in ("epoch_stop", "block_stop", "eval_accuracy") and "epoch_num" in meta:
            epochs = max(epochs or 0, int(meta["epoch_num"]))
    if start is None or stop is None:
        missing = "run_start" if start is None else "run_stop"
        return RunResult(str(path), None, False, epochs, f"MLPerf log ({missing} not recorded)")
    return RunResult(str(path), (stop - start) / 60_000.0, status == "success", epochs, "MLPerf log")


def read_run(run: str | Path) -> RunResult:
    """One RUN argument -> its result."""
    path = Path(run)
    if path.is_file():
        return _from_log(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run not found: {run}")
    if (path / "summary.json").is_file():
        return _from_summary(path / "summary.json")
    for name in LOG_NAMES:
        if (path / name).is_file():
            return _from_log(path / name)
    raise CliError(f"{run}: no summary.json or MLPerf log ({', '.join(LOG_NAMES)}) in this folder")


def olympic_mean(results: list[RunResult]) -> dict:
    """Score of several runs of one config, as described in the module docstring.

    Returns {"score": minutes or None, "valid_mlperf": bool, "used": [names], "note": str}.
    """
    converged = sorted((r for r in results if r.reached and r.minutes is not None), key=lambda r: r.minutes)
    failed = len(results) - len(converged)
    n = len(results)
    if failed > MAX_UNCONVERGED:
        return {"score": None, "valid_mlperf": False, "used": [],
                "note": f"invalid: {failed} runs did not reach the target (MLPerf allows {MAX_UNCONVERGED})"}
    if n >= 3:
        # drop the fastest; drop the slowest unless a failed run already took its place
        used = converged[1:len(converged) - (1 - failed)]
        note = "olympic mean: fastest and slowest dropped"
        if failed:
            note += " (the run that missed the target counts as the slowest)"
    else:
        used = converged
        note = f"plain mean of {len(used)} run(s): MLPerf needs {MLPERF_RUNS}"
    if n != MLPERF_RUNS and n >= 3:
        note += f"; {n} runs given, MLPerf scores {MLPERF_RUNS}"
    score = sum(r.minutes for r in used) / len(used) if used else None
    return {"score": score, "valid_mlperf": n == MLPERF_RUNS and score is not None,
            "used": [r.name for r in used], "note": note}


def format_table(results: list[RunResult], summary: dict) -> str:
    rows = [f"{'run':<48} {'minutes':>9} {'epochs':>6}  target  source"]
    for r in results:
        minutes = "-" if r.minutes is None else f"{r.minutes:9.2f}"
        epochs = "-" if r.epochs is None else str(r.epochs)
        rows.append(f"{r.name[-48:]:<48} {minutes:>9} {epochs:>6}  {'yes' if r.reached else 'NO ':<6}  {r.source}")
    score = "-" if summary["score"] is None else f"{summary['score']:.2f} min"
    rows.append(f"score: {score}  ({summary['note']}{'' if summary['valid_mlperf'] else '; not a valid MLPerf score'})")
    return "\n".join(rows)
