"""The round's rules for an ssd-resnet34 result, LoadGen's detail log they are checked on
(`read_detail_log`), and the values and verdicts of the round's own MLPerf tools (`official_result`).

The rules of an ssd-resnet34 result, as the MLPerf Inference submission checker of the round
checks them (tools/submission/submission-checker.py on the round's branch; values in
`rounds.json`), and a little more. Each rule has an id; `ssdbench.loadgen.submission_check` walks a
submission tree with them, `ssdbench.loadgen.run` checks each run's detail log with
`run_rule_violations` for its report:

- ``files``: every required file and folder (``systems/<system>.json``, per scenario
  ``measurements/.../{mlperf.conf,user.conf,README.md,<system>_<impl>_<Scenario>.json}``,
  ``code/<model>/<impl>``, ``results/.../performance/run_1/{summary,detail}``,
  ``results/.../accuracy/{summary,detail,accuracy.txt,mlperf_log_accuracy.json}``);
- ``system``: the system description's required fields, submitter, division, status, type;
- ``scenarios``: the round's required scenarios of the system's category (closed division);
- ``valid`` / ``detail-errors``: LoadGen's ``result_validity`` VALID and no error message;
- ``seeds``, ``sample-count``, ``min-duration``, ``min-queries`` (with Offline's 24,576 samples),
  ``early-stopping``, ``latency``, ``percentile``, ``samples-per-query``: the round's result rules
  from the detail log's ``effective_*`` values (`run_rule_violations`);
- ``accuracy``: ``mAP=`` and ``hash=`` lines, mAP >= the round's target (closed division);
- ``truncation``: accuracy logs at most 10 KiB (truncated by the submission rule);
- ``closed-model``: a closed result must be ssd1200_r34 on the 5,000 COCO val 2017 images;
- ``compliance``: TEST01 / TEST04-A / TEST04-B / TEST05 present (closed division) and passing,
  each run's detail log showing its audit settings took effect.

``waive`` turns the named rules (only ``min-duration`` and ``min-queries``, which CI-sized runs
cannot meet) into printed notes instead of violations.

LoadGen's ``mlperf_log_detail.txt``: one ``:::MLLOG {json}`` line per message.

Each message has ``key``, ``value`` and ``metadata.is_error`` / ``metadata.is_warning``. The MLPerf
submission checker (tools/submission/submission-checker.py, branch r2.0: ``MLPerfLog`` of
log_parser.py) takes the first message of a key and treats any error message as an invalid
result; so does ssdbench (`ssdbench.loadgen.report`, `ssdbench.loadgen.submission_check`).

The values and verdicts of the round's own MLPerf tools, as they would print them.

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
  percentile from the detail log (`ssdbench.loadgen.compliance.METRICS`); the note says so wherever
  such a verdict is shown.
- `official_verify_accuracy`: TEST01's ``verify_accuracy.py`` (default ``--dtype byte``, the
  in-memory mode ``run_verification.py`` calls): per performance-mode response, the first
  element of its data against the accuracy-mode response of the same sample; its output lines,
  ending in ``TEST PASS`` or ``TEST FAIL``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssdbench.io import read_json
from ssdbench.loadgen.settings import Round

WAIVABLE = ("min-duration", "min-queries")
MAX_ACCURACY_LOG_BYTES = 10 * 1024  # submission-checker.py MAX_ACCURACY_LOG_SIZE
MODEL_DIR = "ssd-resnet34"  # the benchmark's directory name (the checker maps it to ssd-large)
IMPLEMENTATION = "ssdbench"
PERF_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
ACC_FILES = (*PERF_FILES, "accuracy.txt", "mlperf_log_accuracy.json")
MEASURE_FILES = ("mlperf.conf", "user.conf", "README.md")
SYSTEM_FIELDS = (
    "division", "submitter", "status", "system_name", "number_of_nodes", "host_processor_model_name",
    "host_processors_per_node", "host_processor_core_count", "host_memory_capacity", "host_storage_capacity",
    "host_storage_type", "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity",
    "framework", "operating_system",
)  # fmt: skip
SYSTEM_FIELDS_SINCE_V1 = (
    "system_type", "other_software_stack", "host_processor_frequency", "host_processor_caches",
    "host_memory_configuration", "host_processor_interconnect", "host_networking", "host_networking_topology",
    "accelerator_frequency", "accelerator_host_interconnect", "accelerator_interconnect",
    "accelerator_interconnect_topology", "accelerator_memory_configuration", "accelerator_on-chip_memories",
    "cooling", "hw_notes", "sw_notes",
)  # fmt: skip
SYSTEM_FIELDS_POWER = (
    "power_management", "filesystem", "boot_firmware_version", "management_firmware_version", "other_hardware",
    "number_of_type_nics_installed", "nics_enabled_firmware", "nics_enabled_os", "nics_enabled_connected",
    "network_speed_mbit", "power_supply_quantity_and_rating_watts", "power_supply_details", "disk_drives",
    "disk_controllers",
)  # fmt: skip  (submission-checker.py SYSTEM_DESC_REQUIED_FIELDS_POWER: known, required with power results)
IMPL_FIELDS = ("input_data_types", "retraining", "starting_weights_filename", "weight_data_types",
               "weight_transformations")  # fmt: skip
STATUSES = ("available", "preview", "rdi")
CLOSED_MODEL = "ssd1200_r34"  # SSD-ResNet34 1200x1200, the closed division's model (benchmark.md §7)


@dataclass(frozen=True)
class Violation:
    """One broken rule: its id, the file or folder, and what is wrong."""

    rule: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message} [{self.rule}]" if self.where else f"{self.message} [{self.rule}]"


@dataclass
class CheckResult:
    """Violations (the tree fails when there is any) and waived ones (printed, not failing)."""

    violations: list[Violation] = field(default_factory=list)
    waived: list[Violation] = field(default_factory=list)
    results: dict[str, float] = field(default_factory=dict)  # "<system>/<Scenario>" -> the checker's result
    units: dict[str, str] = field(default_factory=dict)  # "<system>/<Scenario>" -> its unit and field
    warnings: list[str] = field(default_factory=list)  # printed, not failing (as the round's checker warns)

    @property
    def ok(self) -> bool:
        return not self.violations


def system_fields(round_name: str) -> tuple[str, ...]:
    """The system description's required fields in ``round_name`` (more since v1.0)."""
    return SYSTEM_FIELDS + (() if round_name in ("v0.5", "v0.7") else SYSTEM_FIELDS_SINCE_V1)


def known_system_fields(round_name: str) -> tuple[str, ...]:
    """Every field the round's checker knows; it warns "field X is unknown" for any other
    (``check_system_desc_id``: v0.5/v0.7 know the v1.0 fields, later rounds the power fields)."""
    if round_name in ("v0.5", "v0.7"):
        return SYSTEM_FIELDS + SYSTEM_FIELDS_SINCE_V1
    return SYSTEM_FIELDS + SYSTEM_FIELDS_SINCE_V1 + SYSTEM_FIELDS_POWER


def run_rule_violations(detail: DetailLog, rnd: Round, scenario: str, accuracy: bool = False,
                        seeds: dict[str, int] | None = None, where: str = "") -> list[Violation]:  # fmt: skip
    """The round's result rules a run misses, from its detail log's ``effective_*`` values.

    ``seeds``: the seeds the run must show (default the round's; TEST05 has its own). Accuracy
    runs are held only to the seeds (the round's checker checks none of these for them).
    """
    rules, out = rnd.rules, []

    def bad(rule: str, message: str) -> None:
        out.append(Violation(rule, where, message))

    for key, want in (seeds or rnd.seeds).items():
        if detail.get(f"effective_{key}") != want:
            bad("seeds", f"effective_{key} is {detail.get(f'effective_{key}')}, round {rnd.name} needs {want}")
    if accuracy:
        return out
    count = detail.get("effective_performance_sample_count", 0)
    if count < rules["performance_sample_count"]:
        bad("sample-count", f"performance sample count {count} < {rules['performance_sample_count']}")
    duration = detail.get("effective_min_duration_ms", 0)
    if duration < rules["min_duration_ms"]:
        bad("min-duration", f"min_duration {duration} ms < {rules['min_duration_ms']} ms")
    _query_rules(detail, rules, scenario, bad)
    _latency_rules(detail, rules, scenario, bad)
    return out


def _query_rules(detail: DetailLog, rules: dict, scenario: str, bad) -> None:
    """Query counts (not under early stopping, as the round's checker) and Offline's samples."""
    if scenario not in rules["early_stopping"]:
        need, got = rules["min_query_count"].get(scenario), detail.get("effective_min_query_count", 0)
        if need and got < need:
            bad("min-queries", f"min_query_count {got} < {need}")
    spq = detail.get("effective_samples_per_query", 0)
    if scenario == "Offline" and spq < rules["offline_min_samples_per_query"]:
        bad("min-queries", f"Offline query of {spq} samples < {rules['offline_min_samples_per_query']}")
    if scenario == "MultiStream" and rules["multistream_samples_per_query"] not in (None, spq):
        bad("samples-per-query", f"MultiStream samples per query {spq}, the round needs "
            f"{rules['multistream_samples_per_query']}")  # fmt: skip


def _latency_rules(detail: DetailLog, rules: dict, scenario: str, bad) -> None:
    """Early stopping met, latency percentile and bound."""
    early = scenario in rules["early_stopping"]
    if early and detail.get("early_stopping_met") is not True:
        bad("early-stopping", f"early stopping not met: {detail.get('early_stopping_result', '(no result)')}")
    want = rules["latency_percentile"].get(scenario)
    got = detail.get("effective_target_latency_percentile")
    if want is not None and (got is None or abs(float(got) - want) > 1e-9):
        bad("percentile", f"latency percentile {got}, the round needs {want}")
    bound = rules["latency_bound_ns"].get(scenario)
    if bound is None:
        return
    if early:  # the bound early stopping was checked against (submission-checker.py v2.0)
        latency, what = detail.get("effective_target_latency_ns", 0), "target latency"
    else:
        key = "per_query_latency_ns" if scenario == "MultiStream" else "latency_ns"
        latency, what = detail.get(f"result_99.00_percentile_{key}", 0), "p99 latency"
    if latency > bound:
        bad("latency", f"{what} {latency} ns > bound {bound} ns")


def accuracy_lines(path: Path) -> tuple[float | None, str | None]:
    """(mAP in percent, hash) from an accuracy.txt (None for a missing line)."""
    value = digest = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if value is None and (m := re.match(r"^mAP=([\d.]+)", line)):
            value = float(m.group(1))
        if digest is None and (m := re.match(r"^hash=([\w\d]+)$", line)):
            digest = m.group(1)
    return value, digest


def read_json_file(path: Path) -> dict | None:
    """A JSON object, or None when the file is not valid JSON."""
    try:
        data = read_json(path, "JSON file")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


MARKER = ":::MLLOG"


@dataclass
class DetailLog:
    """The messages of one detail log, in file order."""

    path: Path
    messages: list[dict] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of the first message with ``key`` (``default`` when there is none)."""
        for message in self.messages:
            if message.get("key") == key:
                return message.get("value")
        return default

    def __contains__(self, key: str) -> bool:
        return any(message.get("key") == key for message in self.messages)

    def _flagged(self, flag: str) -> list[str]:
        return [f"{m.get('key')}: {m.get('value')}" for m in self.messages if m.get("metadata", {}).get(flag)]

    @property
    def errors(self) -> list[str]:
        """``key: value`` of every error message (e.g. ``error_invalid_config: Multiple conf files ...``)."""
        return self._flagged("is_error")

    @property
    def warnings(self) -> list[str]:
        """``key: value`` of every warning message (e.g. the audit.config notice)."""
        return self._flagged("is_warning")

    @property
    def peak_qps(self) -> float | None:
        """The target_qps LoadGen's FindPeakPerformance mode settled on (None in other modes)."""
        prefix = "FindPeakPerformance: Found peak performance field: "
        for message in self.messages:
            value = str(message.get("value", ""))
            if message.get("key") == "generic_message" and value.startswith(prefix):
                return float(value[len(prefix):])
        return None

    @property
    def found_audit_config(self) -> bool:
        """Whether LoadGen read an audit.config (its warning says so)."""
        return any("audit.config" in w.lower() for w in self.warnings)


def read_detail_log(path: str | Path) -> DetailLog:
    """Parse a detail log; FileNotFoundError when missing, ValueError naming a malformed line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoadGen detail log not found: {path}")
    log = DetailLog(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.startswith(MARKER):
                continue
            try:
                log.messages.append(json.loads(line[len(MARKER):]))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{lineno}: malformed {MARKER} line") from None
    return log


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
    acc_data = read_json(reference_log, "accuracy log")
    perf_data = read_json(test_log, "accuracy log")
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
