"""MLPerf olympic mean of the time-to-train of several runs: `ssdbench score RUN...`.

How MLPerf Training scores a benchmark (v1.1 rules; `mlperf_logging.result_summarizer`):
- a run's time to train is run_stop - run_start of its log, in minutes;
- SSD needs 5 runs; the fastest and the slowest are dropped and the other 3 averaged;
- which runs count is the result summarizer's rule (`summarizer_verdict`): a run with an MLPerf
  log counts when the compliance checker passes it on the common rules and it records run_start
  and run_stop; the quality target is not read there (the closed division's package checker
  rejects a run below it). A run without a log (a bare summary.json) counts when it reached the
  target. A run that does not count is the dropped slowest run: with one such run the score is
  the mean of the counted runs without the fastest; with two or more the result is invalid
  (MLPerf: "too many non-converging runs"). `train --runs`, `score` and `package` all score so.
Other run counts (not an MLPerf score, printed as such): n >= 3 drops the fastest and the slowest
the same way; n = 1 or 2 reports the plain mean of the converged runs.

A RUN is a run folder (its `summary.json`, else the MLPerf log inside it) or an MLPerf log file.

A submission tree (``results/<system>/ssd/result_*.txt`` + ``systems/<system>.json``, as
`ssdbench package` lays it out) is scored as `mlperf_logging.result_summarizer` scores it
(`score_tree`): a result counts when its log passes the compliance checker and records
run_start and run_stop (the status is not read); more than one that does not makes the result
invalid; the olympic mean drops the fastest and, unless a dropped result took its place, the
slowest; it is multiplied by the RCP normalisation: ``scaling.json`` of the benchmark folder
when present (the RCP checker writes it during the package check), else for the closed division
the factor the RCP checker computes (RCP mean epochs / the runs' mean epochs when they converge
faster than the reference within its allowed speedup), else 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ssdbench.errors import CliError
from ssdbench.io import read_json
from ssdbench.train.mlperf_checks import RULESET

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
    counts: bool | None = None  # the result summarizer counts it (None: no MLPerf log; `reached` decides)

    @property
    def counted(self) -> bool:
        """Whether the score uses it: the summarizer's rule when the run has an MLPerf log."""
        return (self.reached if self.counts is None else self.counts) and self.minutes is not None


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
        return _as_summarizer(_from_log(path), path)
    if not path.is_dir():
        raise FileNotFoundError(f"run not found: {run}")
    logs = [path / name for name in LOG_NAMES if (path / name).is_file()]
    if (path / "summary.json").is_file():
        result = _from_summary(path / "summary.json")
        return _as_summarizer(result, logs[0]) if logs else result
    if logs:
        return _as_summarizer(_from_log(logs[0]), logs[0])
    raise CliError(f"{run}: no summary.json or MLPerf log ({', '.join(LOG_NAMES)}) in this folder")


def summarizer_verdict(log: Path, ruleset: str = RULESET) -> tuple[float | None, list[str]]:
    """(time to train in minutes, why it does not count) of one MLPerf log, as the result
    summarizer decides (`_read_result_file`, `_query_run_start_stop`): it counts when the
    compliance checker passes it on the common rules and it records run_start and run_stop; the
    status of run_stop and the quality target are not read (the closed division's package
    checker rejects a run below the target)."""
    from ssdbench.train.mlperf_checks import compliance

    failed = compliance(log, ruleset)
    minutes = _start_stop_minutes(log)
    if minutes is None:
        failed = [*failed, "run_start or run_stop not recorded"]
    return minutes, failed


def _as_summarizer(result: RunResult, log: Path) -> RunResult:
    """``result`` with the summarizer's verdict on ``log`` (and its time to train)."""
    try:
        minutes, failed = summarizer_verdict(log)
    except (ValueError, KeyError) as exc:  # a line the checker cannot parse
        minutes, failed = None, [f"unreadable MLPerf log ({exc})"]
    result.counts = not failed
    result.minutes = minutes if minutes is not None else result.minutes
    if failed:
        result.source += f"; not counted: {failed[0]}"
    return result


def summarizer_olympic(scores: list[float], dropped: int) -> float | None:
    """The summarizer's olympic average (`_compute_olympic_average`, max_dropped_scores 1): the
    fastest dropped, the slowest too unless a dropped run took its place; None when none is left."""
    ordered = sorted(scores)
    used = ordered[MAX_UNCONVERGED:len(ordered) - (MAX_UNCONVERGED - dropped)]
    return sum(used) / len(used) if used else None


def olympic_mean(results: list[RunResult]) -> dict:
    """Score of several runs of one config, as described in the module docstring; the one scoring
    rule of `ssdbench train --runs`, `ssdbench score` and `ssdbench package` (`score_tree`).

    Returns {"score": minutes or None, "valid_mlperf": bool, "used": [names], "note": str}.
    """
    converged = sorted((r for r in results if r.counted), key=lambda r: r.minutes)
    failed = len(results) - len(converged)
    n = len(results)
    if failed > MAX_UNCONVERGED:
        return {"score": None, "valid_mlperf": False, "used": [],
                "note": f"invalid: {failed} runs do not count (MLPerf allows {MAX_UNCONVERGED})"}
    if n >= 3:
        # drop the fastest; drop the slowest unless a failed run already took its place
        used = converged[1:len(converged) - (1 - failed)]
        note = "olympic mean: fastest and slowest dropped"
        if failed:
            note += " (the run that does not count takes the slowest's place)"
    else:
        used = converged
        note = f"plain mean of {len(used)} run(s): MLPerf needs {MLPERF_RUNS}"
    if n != MLPERF_RUNS and n >= 3:
        note += f"; {n} runs given, MLPerf scores {MLPERF_RUNS}"
    score = summarizer_olympic([r.minutes for r in converged], failed) if n >= 3 else (
        sum(r.minutes for r in used) / len(used) if used else None)
    missed = sum(1 for r in results if r.counted and not r.reached)
    if missed:
        note += (f"; {missed} run(s) below the quality target counted, as the result summarizer counts them "
                 "(the closed division's package checker rejects them)")
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


# ---------------------------------------------------------------- submission trees
def is_tree(path: str | Path) -> bool:
    """A submission tree: a folder with results/ and systems/."""
    path = Path(path)
    return (path / "results").is_dir() and (path / "systems").is_dir()


def _start_stop_minutes(path: Path) -> float | None:
    """run_stop - run_start in minutes (the summarizer's: the last run_start before the first
    run_stop), None when either is missing."""
    start = stop = None
    for line in path.read_text(errors="replace").splitlines():
        if ":::MLLOG" not in line:
            continue
        event = json.loads(line.split(":::MLLOG", 1)[1])
        if event.get("key") == "run_start":
            start = float(event["time_ms"])
        elif event.get("key") == "run_stop":
            stop = float(event["time_ms"])
            break
    return None if start is None or stop is None else (stop - start) / 60_000.0


def _scaling(folder: Path, division: str, ruleset: str) -> tuple[float, str]:
    """(factor, where it came from) as described in the module docstring."""
    from ssdbench.train.mlperf_checks import rcp_check

    scaling = folder / "scaling.json"
    if scaling.is_file():
        return float(read_json(scaling, "scaling file")["scaling_factor"]), "scaling.json"
    if division != "closed":
        return 1.0, "open division: no RCP normalisation"
    passed, message, factor = rcp_check(folder, ruleset)
    return factor, f"RCP checker: {message} ({'passed' if passed else 'failed'})"


def score_tree(tree: str | Path, ruleset: str = RULESET) -> list[dict]:
    """One entry per ``results/<system>/ssd`` folder of a submission tree: {"system", "division",
    "runs": [RunResult], "failures": {file: [failed rules]}, "olympic" (minutes or None),
    "factor", "factor_source", "score" (minutes or None), "note"}."""
    tree, out = Path(tree), []
    for system_dir in sorted(p for p in (tree / "results").iterdir() if p.is_dir()):
        folder = system_dir / "ssd"
        if not folder.is_dir():
            continue
        desc = read_json(tree / "systems" / f"{system_dir.name}.json", "system description")
        runs, failures = [], {}
        for path in sorted(folder.glob("result_*.txt")):
            minutes, failed = summarizer_verdict(path, ruleset)
            if failed:
                failures[path.name] = failed
            runs.append(RunResult(path.name, minutes, not failed, None, "compliance passed" if not failed
                                  else "compliance failed"))
        scores = sorted(r.minutes for r in runs if r.reached)
        dropped = len(runs) - len(scores)
        olympic, note = None, f"invalid: {dropped} results do not count (MLPerf allows {MAX_UNCONVERGED})"
        if dropped <= MAX_UNCONVERGED:
            olympic = summarizer_olympic(scores, dropped)
            note = "olympic mean of the compliant results" + (" (no result left)" if olympic is None else "")
        factor, source = _scaling(folder, desc.get("division", ""), ruleset)
        out.append({"system": system_dir.name, "division": desc.get("division"), "runs": runs,
                    "failures": failures, "olympic": olympic, "factor": factor, "factor_source": source,
                    "score": None if olympic is None else olympic * factor, "note": note})
    return out


def format_tree(entries: list[dict]) -> str:
    """`score_tree`'s result as lines: one per result file, then the score per system."""
    rows = []
    for e in entries:
        rows.append(f"{e['system']} ({e['division']} division):")
        for r in e["runs"]:
            minutes = "-" if r.minutes is None else f"{r.minutes:.4f}"
            rows.append(f"  {r.name:<14} {minutes:>10} min  {r.source}")
            rows += [f"      {line}" for line in e["failures"].get(r.name, [])]
        score = "-" if e["score"] is None else f"{e['score']:.4f} min"
        rows.append(f"  score: {score} = olympic mean {e['olympic'] if e['olympic'] is None else round(e['olympic'], 6)}"
                    f" x {e['factor']:.6f} ({e['factor_source']}); {e['note']}")
    return "\n".join(rows)
