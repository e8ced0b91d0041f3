"""MLPerf compliance tests for SSD-Large: TEST01, TEST04-A, TEST04-B, TEST05 (`ssdbench compliance`).

Each test reruns the submission's performance run (its ``settings.json``: scenario, LoadGen keys,
SUT, data, weights) with the round's audit settings for ssd-resnet34 (`rounds.json`, from
compliance/nvidia/TEST*/audit.config on the round's branch): TEST01 logs a sample of responses in
performance mode, TEST04-A issues each performance sample once, TEST04-B one sample again and
again, TEST05 uses other seeds. The audit.config is written into the test's own run folder and its
path given to LoadGen (`ssdbench.loadgen.run`); a stray ``./audit.config`` is reported before any
run and never read. The detail log must show LoadGen found the audit file and applied its values.

`verify` decides pass or fail as MLPerf's scripts do. The outputs go where the submission checker
looks for them, ``OUT`` being ``compliance/<system>/ssd-resnet34/<Scenario>``::

    OUT/TEST01/verify_accuracy.txt (verify_accuracy.py's own output), verify_performance.txt
    OUT/TEST01/accuracy/mlperf_log_accuracy.json, accuracy.txt [, baseline_accuracy.txt, compliance_accuracy.txt]
    OUT/TEST01/performance/run_1/mlperf_log_summary.txt, mlperf_log_detail.txt
    OUT/TEST04-A/verify_performance.txt; OUT/TEST04-A/performance/run_1/...; OUT/TEST04-B/performance/run_1/...
    OUT/TEST05/verify_performance.txt; OUT/TEST05/performance/run_1/...
    OUT/runs/<test>/            the full run folders (report.md, settings, audit.config)
    OUT/ssdbench_checks/        ssdbench's stricter whole-response TEST01 comparison (not an MLPerf file)
    OUT/compliance.json         scenario, round, the runs compared, pass / fail per test
"""

from __future__ import annotations

import json
import shutil
from copy import deepcopy
from pathlib import Path

from ssdbench.errors import CliError
from ssdbench.io import read_json
from ssdbench.loadgen import verify
from ssdbench.loadgen.accuracy import accuracy_text, open_val_dataset
from ssdbench.loadgen.detail_log import read_detail_log
from ssdbench.loadgen.official import official_verify_accuracy
from ssdbench.loadgen.rounds import COMPLIANCE_TESTS, get_round
from ssdbench.loadgen.run import report_stray_audit_config, run_loadgen
from ssdbench.loadgen.settings import RunSettings

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
                   predict=None, cache: bool = True, progress: bool = True, verbose: bool = True,
                   allow_pickle: bool = False) -> dict[str, bool]:  # fmt: skip
    """Run and verify ``tests`` against performance run ``run``; returns test -> passed.

    ``accuracy_run``: the submission's accuracy run (TEST01 compares with it). ``predict``
    replaces the backend the runs would build from their settings (tests). ``allow_pickle``: the
    run's weights are a pickled whole-model file (as ``ssdbench loadgen --allow-pickle``).
    """
    tests, run, out = expand_tests(tests), Path(run), Path(out)
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
        _run_one(test, settings, info, out, predict, cache, progress, allow_pickle)
    extra: dict[str, bool] = {}
    results = _verify(tests, run, accuracy_run, out, rnd, info, extra)
    _write_marker(out, info, run, accuracy_run, results, extra)
    if verbose:
        for test, passed in results.items():
            print(f"{test}: {'PASS' if passed else 'FAIL'}  ({out / test})")
        for name, passed in extra.items():
            print(f"{name}: {'PASS' if passed else 'FAIL'}  ({out / SSDBENCH_CHECKS}; not an MLPerf verdict)")
    return results


def _run_one(test: str, settings: RunSettings, info: dict, out: Path, predict, cache: bool, progress: bool,
             allow_pickle: bool) -> None:  # fmt: skip
    """One audited LoadGen run in ``out/runs/<test>``; its logs copied into the official layout."""
    weights = None if info.get("weights") in (None, "None") else info["weights"]
    run = run_loadgen(deepcopy(settings), out / "runs" / test, data=info["data"], weights=weights,
                      predict=predict, cache=cache, progress=progress, verbose=False,
                      allow_pickle=allow_pickle, audit_test=test)  # fmt: skip
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
            verdict = verify.verify_performance(reference, _test_detail(out, test), rnd, test)
            (out / test / "verify_performance.txt").write_text(verdict.text)
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
    verdict = verify.verify_test04(_test_detail(out, "TEST04-A"), _test_detail(out, "TEST04-B"), rnd)
    (out / "TEST04-A" / "verify_performance.txt").write_text(verdict.text)
    return {"TEST04-A": verdict.passed, "TEST04-B": verdict.passed}


def _verify_accuracy(accuracy_run: Path, out: Path, rnd, info: dict) -> tuple[bool, bool]:
    """TEST01's accuracy check: (the official verdict, ssdbench's whole-response verdict).

    ``TEST01/verify_accuracy.txt`` is what the round's ``verify_accuracy.py`` prints
    (`official.official_verify_accuracy`); when it says TEST FAIL, the README's baseline path
    decides (baseline_accuracy.txt, compliance_accuracy.txt in TEST01/accuracy, as the submission
    checker asks). ssdbench's stricter whole-response comparison, and its own baseline comparison
    when responses differ, go to ``OUT/ssdbench_checks/`` (never into the official files)."""
    acc_dir = out / "TEST01" / "accuracy"
    reference_log, test_log = accuracy_run / "mlperf_log_accuracy.json", acc_dir / "mlperf_log_accuracy.json"
    official_pass, official_text = official_verify_accuracy(reference_log, test_log)
    (out / "TEST01" / "verify_accuracy.txt").write_text(official_text)
    verdict, indices = verify.compare_responses(reference_log, test_log)
    dataset = open_val_dataset(info["data"])
    value = text = None
    if indices:
        value, text = accuracy_text(test_log, dataset)
        (acc_dir / "accuracy.txt").write_text(text)
    own = out / SSDBENCH_CHECKS
    own.mkdir(exist_ok=True)
    passed, whole = official_pass, verdict.passed
    if indices and (not official_pass or verdict.lines[-1] == "TEST FAIL"):
        where = acc_dir if not official_pass else own
        baseline = verify.baseline_log(reference_log, indices, out / "runs" / "TEST01" / "mlperf_log_accuracy_baseline.json")
        base_value, base_text = accuracy_text(baseline, dataset)
        (where / "baseline_accuracy.txt").write_text(base_text)
        (where / "compliance_accuracy.txt").write_text(text)
        # the rounded mAPs of the two texts, the numbers the submission checker reads back
        decision = verify.compare_accuracy(round(100 * base_value, 3), round(100 * value, 3), rnd)
        verdict.lines += ["responses differ: the baseline comparison decides (TEST01 README, Part III)", *decision.lines]
        passed = official_pass or decision.passed
        whole = decision.passed
    header = [("ssdbench's whole-response comparison (stricter than verify_accuracy.py, which compares the first "
               "byte of each response); not part of the official result"), ""]  # fmt: skip
    (own / "TEST01_whole_response.txt").write_text("\n".join(header) + "\n" + verdict.text)
    return passed, whole


def _write_marker(out: Path, info: dict, run: Path, accuracy_run, results: dict[str, bool],
                  extra: dict[str, bool]) -> None:  # fmt: skip
    """``compliance.json``: what ran against what; merged with the tests of earlier calls."""
    path = out / MARKER
    old = json.loads(path.read_text()).get("tests", {}) if path.is_file() else {}
    data = {"scenario": info["scenario"], "round": info.get("round"), "performance_run": str(run.resolve()),
            "accuracy_run": str(Path(accuracy_run).resolve()) if accuracy_run else None,
            "tests": {**old, **results},
            "ssdbench_checks": {**(json.loads(path.read_text()).get("ssdbench_checks", {}) if path.is_file() else {}),
                                **extra}}  # fmt: skip
    path.write_text(json.dumps(data, indent=2) + "\n")
