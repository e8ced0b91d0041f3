"""Verification of the compliance tests, as MLPerf's scripts verify them (ssdbench's own code).

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
from dataclasses import dataclass, field
from pathlib import Path

from ssdbench.loadgen.detail_log import DetailLog
from ssdbench.loadgen.rounds import Round

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
    out.write_text(json.dumps(kept, indent=0) + "\n")
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
