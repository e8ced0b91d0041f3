"""The values and verdicts of the round's own MLPerf tools, as they would print them.

- `official_result`: the result the round's submission checker reports for a performance run
  (tools/submission/submission-checker.py, ``RESULT_FIELD_NEW`` and ``check_performance_dir``,
  branch r2.0; the older rounds' entries are in the same table). v2.0 reads SingleStream from
  ``early_stopping_latency_ss`` and MultiStream from ``early_stopping_latency_ms`` (LoadGen's
  early-stopping estimates), the rounds before it the raw 90th percentile (SingleStream) and the
  samples per query (legacy MultiStream, which LoadGen 6.x no longer runs). Latencies are shown
  in milliseconds, as the checker divides them by ``MS_TO_NS``. v0.5 and v0.7 read the summary
  rather than the detail log; the values are the same.
- `summary_headline_note`: LoadGen 6.x writes the SingleStream / MultiStream headline of
  ``mlperf_log_summary.txt`` as ``90.0th percentile latency (ns)`` / ``99.0th percentile latency
  (ns)``; the compliance scripts of the rounds up to r2.0 (compliance/nvidia/TEST04-A/
  verify_test4_performance.py, TEST01 and TEST05/verify_performance.py) match
  ``90th percentile latency`` / ``99th percentile latency`` and read a score of 0, so they print
  "TEST FAIL" for any SingleStream / MultiStream run. ssdbench's verdict reads the same
  percentile from the detail log (`ssdbench.loadgen.verify.METRICS`); the note says so wherever
  such a verdict is shown.
- `official_verify_accuracy`: TEST01's ``verify_accuracy.py`` (default ``--dtype byte``, the
  in-memory mode ``run_verification.py`` calls): per performance-mode response, the first
  element of its data against the accuracy-mode response of the same sample; its output lines,
  ending in ``TEST PASS`` or ``TEST FAIL``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ssdbench.loadgen.detail_log import DetailLog, read_detail_log

MS_TO_NS = 1_000_000
_COMMON = {"Offline": "result_samples_per_second", "Server": "result_scheduled_samples_per_sec"}
_BEFORE_V2 = {**_COMMON, "SingleStream": "result_90.00_percentile_latency_ns", "MultiStream": "effective_samples_per_query"}
RESULT_FIELDS = {  # submission-checker.py RESULT_FIELD_NEW (MultiStream: "MultiStreamLegacy" before v2.0)
    "v0.5": _BEFORE_V2, "v0.7": _BEFORE_V2, "v1.0": _BEFORE_V2, "v1.1": _BEFORE_V2,
    "v2.0": {**_COMMON, "SingleStream": "early_stopping_latency_ss", "MultiStream": "early_stopping_latency_ms"},
}  # fmt: skip
UNITS = {"Offline": "samples/s", "Server": "samples/s", "SingleStream": "ms", "MultiStream": "ms"}
HEADLINE_SCRIPT_LINES = {"SingleStream": "90th percentile latency", "MultiStream": "99th percentile latency"}


@dataclass(frozen=True)
class OfficialResult:
    """The checker's result of one run: the detail-log field it reads, the value, its unit."""

    field: str
    value: float | None  # None when the field is missing (the checker would stop with an error)
    unit: str

    def __str__(self) -> str:
        shown = "-" if self.value is None else f"{self.value:.6g}"
        return f"{shown} {self.unit} ({self.field})"


def official_result(detail: DetailLog, round_name: str, scenario: str) -> OfficialResult:
    """The round checker's result of a performance run of ``scenario`` (see the module doc)."""
    fields = RESULT_FIELDS.get(round_name, RESULT_FIELDS["v2.0"])
    key = fields[scenario]
    raw = detail.get(key)
    legacy_ms = scenario == "MultiStream" and round_name != "v2.0"
    unit = "samples/query" if legacy_ms else UNITS[scenario]
    if raw is None:
        return OfficialResult(key, None, unit)
    value = float(raw) / MS_TO_NS if unit == "ms" else float(raw)
    return OfficialResult(key, value, unit)


def summary_headline(summary: Path) -> str | None:
    """The headline percentile line LoadGen wrote in a summary (``90.0th percentile ...``)."""
    if not summary.is_file():
        return None
    for line in summary.read_text(errors="replace").splitlines():
        if "th percentile latency (ns)" in line and not line.startswith((" ", "*")):
            return line.strip()
    return None


def summary_headline_note(summary: Path, scenario: str) -> str | None:
    """Why the round's compliance scripts misread this summary (None when they read it)."""
    want = HEADLINE_SCRIPT_LINES.get(scenario)
    line = summary_headline(summary)
    if want is None or line is None or line.startswith(want):
        return None
    return (f"the round's compliance scripts (TEST01/TEST05 verify_performance.py, TEST04-A "
            f"verify_test4_performance.py) look for a line starting {want!r}; LoadGen 6.x wrote {line.split(':')[0].strip()!r}, "
            "so they read a score of 0 and print TEST FAIL; ssdbench reads the same percentile from the detail log's "
            "result_*_percentile_* field, which is LoadGen's own value of that line")  # fmt: skip


def _first_byte(hex_data: str) -> int | None:
    """numpy.frombuffer(bytes.fromhex(data), np.byte)[0] as a signed byte (None for empty data)."""
    raw = bytes.fromhex(hex_data)
    return None if not raw else (raw[0] - 256 if raw[0] > 127 else raw[0])


def official_verify_accuracy(reference_log: Path, test_log: Path) -> tuple[bool, str]:
    """(passed, the text verify_accuracy.py prints) for TEST01 (see the module doc)."""
    acc_data = json.loads(Path(reference_log).read_text())
    perf_data = json.loads(Path(test_log).read_text())
    results: dict[int, str] = {}
    duplicates = acc_mismatch = matched = perf_mismatch = missing = 0
    for sample in acc_data:
        idx, data = sample["qsl_idx"], sample["data"]
        if idx in results:
            duplicates += 1
            acc_mismatch += results[idx] != data
        else:
            results[idx] = data
    for sample in perf_data:
        idx, data = sample["qsl_idx"], _first_byte(sample["data"])
        if idx in results:
            matched += 1
            perf_mismatch += _first_byte(results[idx]) != data  # empty data on one side only differs too
        else:
            missing += 1
        results[idx] = sample["data"]
    lines = ["Verifying accuracy. This might take a while...", "Reading accuracy mode results...",
             "Reading performance mode results...", f"num_acc_log_entries = {len(acc_data)}",
             f"num_acc_log_duplicate_keys = {duplicates}", f"num_acc_log_data_mismatch = {acc_mismatch}",
             f"num_perf_log_entries = {len(perf_data)}", f"num_perf_log_qsl_idx_match = {matched}",
             f"num_perf_log_data_mismatch = {perf_mismatch}", f"num_missing_qsl_idxs = {missing}",
             "TEST FAIL\n" if perf_mismatch else "TEST PASS\n"]  # fmt: skip
    return perf_mismatch == 0, "\n".join(lines) + "\n"


def official_section(out_dir: Path, settings: dict) -> str:
    """report.md's section on the round's own tools: the checker's result of a performance run and,
    for SingleStream / MultiStream, the summary line the round's compliance scripts misread."""
    scenario, round_name = settings.get("scenario", ""), settings.get("round", "v2.0")
    detail_path = Path(out_dir) / "mlperf_log_detail.txt"
    if settings.get("mode") != "performance" or scenario not in UNITS or not detail_path.is_file():
        return ""
    try:
        result = official_result(read_detail_log(detail_path), round_name, scenario)
    except ValueError:
        return ""
    lines = ["", f"## The round's own tools ({round_name})", "",
             f"- submission checker's result: {result}"]  # fmt: skip
    if note := summary_headline_note(Path(out_dir) / "mlperf_log_summary.txt", scenario):
        lines.append(f"- compliance scripts: {note}")
    return "\n".join(lines) + "\n"


def official_line(out_dir: Path, scenario: str, round_name: str, mode: str) -> str | None:
    """One stdout line: the performance run's result as the round's checker reads it."""
    detail_path = Path(out_dir) / "mlperf_log_detail.txt"
    if mode != "performance" or scenario not in UNITS or not detail_path.is_file():
        return None
    return f"result as the round {round_name} checker reads it: {official_result(read_detail_log(detail_path), round_name, scenario)}"
