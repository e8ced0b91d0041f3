"""The rules of an ssd-resnet34 result, as the MLPerf Inference submission checker of the round
checks them (tools/submission/submission-checker.py on the round's branch; values in
`rounds.json`), and a little more. Each rule has an id; `ssdbench.loadgen.checker` walks a
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
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ssdbench.loadgen.detail_log import DetailLog
from ssdbench.loadgen.rounds import Round

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
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


