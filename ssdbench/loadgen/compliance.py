"""The MLPerf compliance tests: running them (`run_compliance`) and verifying them as MLPerf's
scripts do (`verify_performance`, `verify_test04`, `compare_responses`).

The tests for SSD-Large: TEST01, TEST04-A, TEST04-B, TEST05 (`ssdbench compliance`).

Each test reruns the submission's performance run (its ``settings.json``: scenario, LoadGen keys,
SUT, data, weights) with the round's audit settings for ssd-resnet34 (`rounds.json`, from
compliance/nvidia/TEST*/audit.config on the round's branch): TEST01 logs a sample of responses in
performance mode, TEST04-A issues each performance sample once, TEST04-B one sample again and
again, TEST05 uses other seeds. The audit.config is written into the test's own run folder and its
path given to LoadGen (`ssdbench.loadgen.run`); a stray ``./audit.config`` is reported before any
run and never read. The detail log must show LoadGen found the audit file and applied its values.

The verification below decides pass or fail as MLPerf's scripts do. The outputs go where the submission checker
looks for them, ``OUT`` being ``compliance/<system>/ssd-resnet34/<Scenario>``::

    OUT/TEST01/verify_accuracy.txt (verify_accuracy.py's own output), verify_performance.txt
    OUT/TEST01/accuracy/mlperf_log_accuracy.json, accuracy.txt [, baseline_accuracy.txt, compliance_accuracy.txt]
    OUT/TEST01/performance/run_1/mlperf_log_summary.txt, mlperf_log_detail.txt
    OUT/TEST04-A/verify_performance.txt; OUT/TEST04-A/performance/run_1/...; OUT/TEST04-B/performance/run_1/...
    OUT/TEST05/verify_performance.txt; OUT/TEST05/performance/run_1/...
    OUT/runs/<test>/            the full run folders (report.md, settings, audit.config)
    OUT/ssdbench_checks/        ssdbench's stricter whole-response TEST01 comparison (not an MLPerf file)
    OUT/compliance.json         scenario, round, the runs compared, pass / fail per test

Verification of the compliance tests, as MLPerf's scripts verify them (ssdbench's own code).

Rules learnt from compliance/nvidia/TEST01, TEST04-A and TEST05 of mlcommons/inference on each
round's branch (tolerances in `rounds.json`):

- TEST01 accuracy (``verify_accuracy.py``): every response LoadGen logged during the performance
  run must equal the accuracy-mode response for that sample. ssdbench compares the whole payload
  (the script compares the first value). When responses differ (allowed non-determinism), the
  README's baseline path decides: the accuracy-mode responses of the same samples
  (``create_accuracy_baseline.sh``) and the compliance responses are scored with the benchmark's
  accuracy script, and their mAPs must agree within ``accuracy_delta`` (1 % for the 99 % target;
  read here as relative to the baseline).
- TEST01 / TEST05 performance (``verify_performance.py``): both runs VALID, same scenario, the
  test's metric within the tolerance of the submission's performance run (TEST01 10 %, TEST05 5 %;
  20 % for very short latencies from v1.0).
- TEST04 (``verify_test4_performance.py``): TEST04-A issues each of the P performance samples
  once, TEST04-B one sample P times; B within the tolerance of A, or slower, passes. B much
  faster means the SUT cached results.

The metric is the one the scripts read from the summary: Offline samples per second, Server
scheduled samples per second, SingleStream p90 and MultiStream p99 (per query) latency in ns.
"""
from __future__ import annotations

import json
import shutil
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path

from ssdbench.errors import CliError
from ssdbench.io import atomic_write_json, atomic_write_text, read_json
from ssdbench.loadgen.accuracy import accuracy_text, open_val_dataset
from ssdbench.loadgen.rules import DetailLog, official_verify_accuracy, read_detail_log
from ssdbench.loadgen.run import RunInputs, report_stray_audit_config, run_loadgen
from ssdbench.loadgen.settings import COMPLIANCE_TESTS, Round, RunSettings, get_round

MARKER = "compliance.json"
SSDBENCH_CHECKS = "ssdbench_checks"  # ssdbench's checks beyond the official scripts (not copied into a tree)
PERF_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")


def expand_tests(names) -> list[str]:
    """Test names in run order; ``TEST04`` means both halves, ``all`` every test."""
    out: list[str] = []
    for name in names:
        name = name.upper()
        parts = {"ALL": list(COMPLIANCE_TESTS), "TEST04": ["TEST04-A", "TEST04-B"]}.get(name, [name])
        for part in parts:
            if part not in COMPLIANCE_TESTS:
                raise ValueError(f"unknown compliance test {name!r}; choose from "
                                 f"{', '.join(COMPLIANCE_TESTS)}, TEST04 (A and B) or all")  # fmt: skip
            if part not in out:
                out.append(part)
    return sorted(out, key=COMPLIANCE_TESTS.index)


def load_run(folder: str | Path, mode: str) -> dict:
    """The ``settings.json`` of a published ``ssdbench loadgen`` run of ``mode``; CliError otherwise."""
    folder = Path(folder)
    if not (folder / "settings.json").is_file():
        raise CliError(f"{folder} is not an ssdbench loadgen run folder (no settings.json)")
    info = read_json(folder / "settings.json", "run settings")
    if info.get("mode") != mode or info.get("audit_test"):
        what = f"a {info['audit_test']} run" if info.get("audit_test") else f"a {info.get('mode')} run"
        raise CliError(f"{folder} is not a {mode} run (it is {what})")
    for name in PERF_FILES:
        if not (folder / name).is_file():
            raise CliError(f"{folder} has no {name}")
    return info


def run_compliance(tests, run: str | Path, out: str | Path, accuracy_run: str | Path | None = None,
                   inputs: RunInputs | None = None, progress: bool = True, verbose: bool = True) -> dict[str, bool]:
    """Run and verify ``tests`` against performance run ``run``; returns test -> passed.

    ``accuracy_run``: the submission's accuracy run (TEST01 compares with it). ``inputs``: the
    sample cache, ``allow_pickle`` (the run's weights are a pickled whole-model file, as
    ``ssdbench loadgen --allow-pickle``) and ``predict``, which replaces the backend the runs would
    build from their settings (tests); the dataset and the weights are the run's own.
    """
    tests, run, out, inputs = expand_tests(tests), Path(run), Path(out), inputs or RunInputs()
    info = load_run(run, "performance")
    accuracy_info = load_run(accuracy_run, "accuracy") if accuracy_run else None
    if "TEST01" in tests and accuracy_info is None:
        raise CliError("TEST01 needs --accuracy-run (the accuracy run of the same system and dataset)")
    if accuracy_info and (accuracy_info["data"], accuracy_info["qsl_count"]) != (info["data"], info["qsl_count"]):
        raise CliError(f"{accuracy_run} scored {accuracy_info['qsl_count']} images of {accuracy_info['data']}, "
                       f"the performance run used {info['qsl_count']} of {info['data']}")  # fmt: skip
    report_stray_audit_config()
    settings = RunSettings.from_json(info)
    rnd = get_round(settings.round)
    for test in tests:
        _run_one(test, settings, info, out, inputs, progress)
    extra: dict[str, bool] = {}
    results = _verify(tests, run, accuracy_run, out, rnd, info, extra)
    _write_marker(out, info, run, accuracy_run, results, extra)
    if verbose:
        for test, passed in results.items():
            print(f"{test}: {'PASS' if passed else 'FAIL'}  ({out / test})")
        for name, passed in extra.items():
            print(f"{name}: {'PASS' if passed else 'FAIL'}  ({out / SSDBENCH_CHECKS}; not an MLPerf verdict)")
    return results


def _run_one(test: str, settings: RunSettings, info: dict, out: Path, inputs: RunInputs, progress: bool) -> None:
    """One audited LoadGen run in ``out/runs/<test>``; its logs copied into the official layout."""
    weights = None if info.get("weights") in (None, "None") else info["weights"]
    run = run_loadgen(deepcopy(settings), out / "runs" / test, replace(inputs, data=info["data"], weights=weights),
                      progress=progress, verbose=False, audit_test=test)  # fmt: skip
    detail = read_detail_log(run.out / "mlperf_log_detail.txt")
    if not detail.found_audit_config:
        raise CliError(f"{test}: LoadGen did not report reading {run.out / 'audit.config'}")
    folder = out / test
    if folder.exists():
        shutil.rmtree(folder)
    perf = folder / "performance" / "run_1"
    perf.mkdir(parents=True)
    for name in PERF_FILES:
        shutil.copy2(run.out / name, perf / name)
    if test == "TEST01":
        (folder / "accuracy").mkdir()
        shutil.copy2(run.out / "mlperf_log_accuracy.json", folder / "accuracy" / "mlperf_log_accuracy.json")


def _verify(tests: list[str], run: Path, accuracy_run, out: Path, rnd, info: dict,
            extra: dict[str, bool]) -> dict[str, bool]:  # fmt: skip
    """Verify each test that ran (TEST04 once both halves exist in ``out``); ssdbench's own checks,
    beyond the official ones, go to ``extra``."""
    reference = read_detail_log(run / "mlperf_log_detail.txt")
    results: dict[str, bool] = {}
    for test in ("TEST01", "TEST05"):
        if test in tests:
            verdict = verify_performance(reference, _test_detail(out, test), rnd, test)
            atomic_write_text(out / test / "verify_performance.txt", verdict.text)
            results[test] = verdict.passed
    if "TEST01" in tests:
        official, whole = _verify_accuracy(Path(accuracy_run), out, rnd, info)
        results["TEST01"] = official and results["TEST01"]
        extra["TEST01 whole-response (ssdbench)"] = whole
    if {"TEST04-A", "TEST04-B"} & set(tests):
        results.update(_verify_test04(out, rnd))
    return {test: results[test] for test in COMPLIANCE_TESTS if test in results}


def _test_detail(out: Path, test: str):
    return read_detail_log(out / test / "performance" / "run_1" / "mlperf_log_detail.txt")


def _verify_test04(out: Path, rnd) -> dict[str, bool]:
    """TEST04-A vs TEST04-B, written to TEST04-A/verify_performance.txt (as run_verification.py)."""
    halves = ("TEST04-A", "TEST04-B")
    missing = [t for t in halves if not (out / t / "performance" / "run_1" / "mlperf_log_detail.txt").is_file()]
    if missing:
        raise CliError(f"TEST04 compares TEST04-A with TEST04-B: run {' and '.join(missing)} into {out} too")
    verdict = verify_test04(_test_detail(out, "TEST04-A"), _test_detail(out, "TEST04-B"), rnd)
    atomic_write_text(out / "TEST04-A" / "verify_performance.txt", verdict.text)
    return {"TEST04-A": verdict.passed, "TEST04-B": verdict.passed}


def _verify_accuracy(accuracy_run: Path, out: Path, rnd, info: dict) -> tuple[bool, bool]:
    """TEST01's accuracy check: (the official verdict, ssdbench's whole-response verdict).

    ``TEST01/verify_accuracy.txt`` is what the round's ``verify_accuracy.py`` prints
    (`rules.official_verify_accuracy`); when it says TEST FAIL, the README's baseline path
    decides (baseline_accuracy.txt, compliance_accuracy.txt in TEST01/accuracy, as the submission
    checker asks). ssdbench's stricter whole-response comparison, and its own baseline comparison
    when responses differ, go to ``OUT/ssdbench_checks/`` (never into the official files)."""
    acc_dir = out / "TEST01" / "accuracy"
    reference_log, test_log = accuracy_run / "mlperf_log_accuracy.json", acc_dir / "mlperf_log_accuracy.json"
    official_pass, official_text = official_verify_accuracy(reference_log, test_log)
    atomic_write_text(out / "TEST01" / "verify_accuracy.txt", official_text)
    verdict, indices = compare_responses(reference_log, test_log)
    dataset = open_val_dataset(info["data"])
    value = text = None
    if indices:
        value, text = accuracy_text(test_log, dataset)
        atomic_write_text(acc_dir / "accuracy.txt", text)
    own = out / SSDBENCH_CHECKS
    own.mkdir(exist_ok=True)
    passed, whole = official_pass, verdict.passed
    if indices and (not official_pass or verdict.lines[-1] == "TEST FAIL"):
        where = acc_dir if not official_pass else own
        baseline = baseline_log(reference_log, indices, out / "runs" / "TEST01" / "mlperf_log_accuracy_baseline.json")
        base_value, base_text = accuracy_text(baseline, dataset)
        atomic_write_text(where / "baseline_accuracy.txt", base_text)
        atomic_write_text(where / "compliance_accuracy.txt", text)
        # the rounded mAPs of the two texts, the numbers the submission checker reads back
        decision = compare_accuracy(round(100 * base_value, 3), round(100 * value, 3), rnd)
        verdict.lines += ["responses differ: the baseline comparison decides (TEST01 README, Part III)", *decision.lines]
        passed = official_pass or decision.passed
        whole = decision.passed
    header = [("ssdbench's whole-response comparison (stricter than verify_accuracy.py, which compares the first "
               "byte of each response); not part of the official result"), ""]  # fmt: skip
    atomic_write_text(own / "TEST01_whole_response.txt", "\n".join(header) + "\n" + verdict.text)
    return passed, whole


def _write_marker(out: Path, info: dict, run: Path, accuracy_run, results: dict[str, bool],
                  extra: dict[str, bool]) -> None:  # fmt: skip
    """``compliance.json``: what ran against what; merged with the tests of earlier calls."""
    path = out / MARKER
    old = read_json(path, "compliance record") if path.is_file() else {}
    data = {"scenario": info["scenario"], "round": info.get("round"), "performance_run": str(run.resolve()),
            "accuracy_run": str(Path(accuracy_run).resolve()) if accuracy_run else None,
            "tests": {**old.get("tests", {}), **results},
            "ssdbench_checks": {**old.get("ssdbench_checks", {}), **extra}}  # fmt: skip
    atomic_write_json(path, data)


# What LoadGen logs as an error in every TEST04 run but Offline's: it issues the P performance
# samples once (A) or P times one sample (B) and ends before the minimum duration and query count.
# MLPerf's TEST04 script reports errors as warnings; ssdbench tolerates this one only.
TEST04_EXPECTED_ERROR = "error_runtime: Ending early: Ran out of generated queries"

# scenario -> (detail-log key, what it is, higher is better)
METRICS = {
    "Offline": ("result_samples_per_second", "samples per second", True),
    "Server": ("result_scheduled_samples_per_sec", "scheduled samples per second", True),
    "SingleStream": ("result_90.00_percentile_latency_ns", "p90 latency (ns)", False),
    "MultiStream": ("result_99.00_percentile_per_query_latency_ns", "p99 per-query latency (ns)", False),
}


@dataclass
class Verdict:
    """One verification: passed or not, and the lines of its verify_*.txt (the last says PASS/FAIL)."""

    passed: bool
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def metric(detail: DetailLog, scenario: str) -> float:
    """The scenario's performance metric from a detail log; ValueError when it is missing."""
    key = METRICS[scenario][0]
    value = detail.get(key)
    if value is None:
        raise ValueError(f"{detail.path}: no {key} (is it a {scenario} performance run?)")
    return float(value)


def unexpected_errors(log: DetailLog, test04: bool) -> list[str]:
    """The detail log's errors, less the one every TEST04 run logs (`TEST04_EXPECTED_ERROR`)."""
    return [e for e in log.errors if not (test04 and e.startswith(TEST04_EXPECTED_ERROR))]


def _valid_pair(ref: DetailLog, test: DetailLog, names: tuple[str, str], test04: bool = False) -> str | None:
    """Why the two runs cannot be compared (None when they can). TEST04's script does not ask for
    VALID runs (a TEST04-A run is just the P performance samples, usually shorter than the minimum
    duration); other errors in a detail log always disqualify it."""
    for log, name in zip((ref, test), names):
        if not test04 and log.get("result_validity") != "VALID":
            return f"TEST FAIL: {name} results are invalid ({log.get('result_validity')})"
        if errors := unexpected_errors(log, test04):
            return f"TEST FAIL: {name} detail log has errors: {errors[0]}"
    if ref.get("effective_scenario") != test.get("effective_scenario"):
        return f"TEST FAIL: scenarios differ ({ref.get('effective_scenario')} vs {test.get('effective_scenario')})"
    return None


def verify_performance(reference: DetailLog, test: DetailLog, rnd: Round, name: str) -> Verdict:
    """TEST01 / TEST05: the test's metric within the round's tolerance of the performance run's."""
    lines = ["Verifying performance."]
    if problem := _valid_pair(reference, test, ("reference", "test")):
        return Verdict(False, lines + [problem])
    scenario = str(reference.get("effective_scenario"))
    ref, got = metric(reference, scenario), metric(test, scenario)
    tolerance = rnd.tolerance(name, scenario, ref)
    lines += [f"metric: {METRICS[scenario][1]}", f"reference score = {ref:g}", f"test score = {got:g}",
              f"allowed difference = {100 * tolerance:g}% (round {rnd.name})"]  # fmt: skip
    ok = ref * (1 - tolerance) < got < ref * (1 + tolerance)
    return Verdict(ok, lines + ["TEST PASS" if ok else "TEST FAIL: Test score invalid"])


def verify_test04(unique: DetailLog, same: DetailLog, rnd: Round) -> Verdict:
    """TEST04: B (one sample repeated) must not be much faster than A (unique samples)."""
    lines = ["Verifying performance."]
    if problem := _valid_pair(unique, same, ("TEST04-A", "TEST04-B"), test04=True):
        return Verdict(False, lines + [problem])
    if unique.get("effective_performance_issue_unique") is not True:
        return Verdict(False, lines + ["TEST FAIL: Invalid test settings in TEST04-A (performance_issue_unique)"])
    if same.get("effective_performance_issue_same") is not True:
        return Verdict(False, lines + ["TEST FAIL: Invalid test settings in TEST04-B (performance_issue_same)"])
    scenario = str(unique.get("effective_scenario"))
    a, b = metric(unique, scenario), metric(same, scenario)
    higher_is_better = METRICS[scenario][2]
    tolerance = rnd.tolerance("TEST04-A", scenario, a)
    lines += [f"metric: {METRICS[scenario][1]}", f"TEST04-A score = {a:g}", f"TEST04-B score = {b:g}",
              f"allowed difference = {100 * tolerance:g}% (round {rnd.name})"]  # fmt: skip
    if a * (1 - tolerance) < b < a * (1 + tolerance):
        return Verdict(True, lines + ["TEST PASS"])
    if (b < a) == higher_is_better:  # B is the slower one
        return Verdict(True, lines + ["TEST PASS", "Note: TEST04-B is significantly slower than TEST04-A"])
    why = "TEST FAIL: TEST04-B is much faster than TEST04-A: does the SUT cache results of repeated samples?"
    return Verdict(False, [*lines, why])


def log_entries(path: Path) -> list[dict]:
    """The entries of an accuracy log (JSON array); ValueError naming the file when malformed."""
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a LoadGen accuracy log ({exc})") from None
    if isinstance(entries, list):
        return entries
    raise ValueError(f"{path}: not a LoadGen accuracy log (no JSON array)")


def compare_responses(accuracy_log: Path, test_log: Path) -> tuple[Verdict, list[int]]:
    """TEST01's comparison: each logged performance-mode response vs the accuracy run's.

    Returns the verdict and the QSL indices of the compliance log (in log order, unique).
    """
    reference: dict[int, str] = {}
    for entry in log_entries(accuracy_log):
        reference.setdefault(int(entry["qsl_idx"]), str(entry["data"]).upper())
    sampled = log_entries(test_log)
    matched = mismatched = missing = 0
    indices: list[int] = []
    for entry in sampled:
        idx = int(entry["qsl_idx"])
        if idx not in indices:
            indices.append(idx)
        if idx not in reference:
            missing += 1
        elif reference[idx] == str(entry["data"]).upper():
            matched += 1
        else:
            mismatched += 1
    lines = [f"num_acc_log_entries = {len(reference)}", f"num_perf_log_entries = {len(sampled)}",
             f"num_perf_log_qsl_idx_match = {matched + mismatched}", f"num_perf_log_data_mismatch = {mismatched}",
             f"num_missing_qsl_idxs = {missing}"]  # fmt: skip
    if not sampled:
        return Verdict(False, lines + ["TEST FAIL: the performance run logged no responses"]), indices
    ok = mismatched == 0 and missing == 0
    return Verdict(ok, lines + ["TEST PASS" if ok else "TEST FAIL"]), indices


def baseline_log(accuracy_log: Path, indices: list[int], out: Path) -> Path:
    """The accuracy run's entries of ``indices`` (create_accuracy_baseline.sh's baseline) -> ``out``."""
    wanted = set(indices)
    kept, seen = [], set()
    for entry in log_entries(accuracy_log):
        idx = int(entry["qsl_idx"])
        if idx in wanted and idx not in seen:
            kept.append(entry)
            seen.add(idx)
    atomic_write_text(out, json.dumps(kept, indent=0) + "\n")
    return out


def compare_accuracy(baseline_map: float, compliance_map: float, rnd: Round) -> Verdict:
    """The baseline path's decision: the two mAPs (percent) within the round's allowed delta."""
    delta = float(rnd.compliance["TEST01"]["accuracy_delta"])
    diff = abs(compliance_map - baseline_map)
    allowed = delta * abs(baseline_map)
    ok = diff <= allowed + 1e-9
    lines = [f"baseline mAP = {baseline_map:.3f}%", f"compliance mAP = {compliance_map:.3f}%",
             (f"difference = {diff:.3f} points, allowed {allowed:.3f} ({100 * delta:g}% of the baseline, "
              f"round {rnd.name})"),
             f"baseline comparison: {'PASS' if ok else 'FAIL'}"]
    return Verdict(ok, lines)
