"""A set of training runs as an MLPerf Training submission tree (ruleset 1.1.0), and its checks.

Layout the package checker and the result summarizer read (`mlperf_logging.package_checker`):

    OUT/results/<system>/ssd/result_0.txt ... result_{N-1}.txt   one MLPerf log per run
    OUT/systems/<system>.json                                     the system description

SSD needs 5 runs (`mlperf_logging.benchmark_meta`). The system description has the fields the
1.1.0 training rules require (`REQUIRED_FIELDS`, the system description checker's list): what
this machine can tell is filled in (`machine_facts`), the rest comes from ``--system-json``, and
the fields still missing are named in one error. Division and status come from the logs, the
submitter from ``--org``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ssdbench import sysinfo
from ssdbench.errors import CliError
from ssdbench.io import atomic_write_json, read_json
from ssdbench.sysinfo import as_strings

BENCHMARK = "ssd"
# mlperf_logging.system_desc_checker, training: every field is required
REQUIRED_FIELDS = (
    "submitter", "division", "status", "system_name", "number_of_nodes", "host_processors_per_node",
    "host_processor_model_name", "host_processor_core_count", "host_processor_vcpu_count",
    "host_processor_frequency", "host_processor_caches", "host_processor_interconnect",
    "host_memory_capacity", "host_storage_type", "host_storage_capacity", "host_networking",
    "host_networking_topology", "host_memory_configuration", "accelerators_per_node",
    "accelerator_model_name", "accelerator_host_interconnect", "accelerator_frequency",
    "accelerator_on-chip_memories", "accelerator_memory_configuration", "accelerator_memory_capacity",
    "accelerator_interconnect", "accelerator_interconnect_topology", "cooling", "hw_notes", "framework",
    "other_software_stack", "operating_system", "sw_notes",
)
# MLPerf log submission_status -> the system description's availability (the training rules' words)
STATUS = {"onprem": "Available on-premise", "cloud": "Available cloud", "preview": "Preview",
          "research": "Research, Development, or Internal (RDI)"}


# ---------------------------------------------------------------- the machine
def machine_facts() -> dict[str, str]:
    """The system description fields this machine can tell (`ssdbench.sysinfo`), as strings like
    the rules' examples; ``number_of_nodes`` is left to `system_description` (it depends on the runs)."""
    facts = as_strings(sysinfo.machine_facts())
    facts.pop("number_of_nodes", None)
    return facts


# ---------------------------------------------------------------- the runs
def _log_value(path: Path, key: str):
    """The value of the first `:::MLLOG` event ``key`` in a log (None when absent)."""
    for line in path.read_text(errors="replace").splitlines():
        if ":::MLLOG" in line and f'"key": "{key}"' in line:
            return json.loads(line.split(":::MLLOG", 1)[1]).get("value")
    return None


def run_log(run: str | os.PathLike) -> Path:
    """The MLPerf log of a run folder (or a log file given directly); CliError for a folder without
    one or a resumed run (its time to train spans several processes: not a valid MLPerf result)."""
    path = Path(run)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"run not found: {run}")
    if sorted(path.glob("mlperf_log.resume*.txt")):
        raise CliError(f"{run}: the run was resumed; its log is not one MLPerf run (train it again)")
    log = path / "mlperf_log.txt"
    if not log.is_file():
        raise CliError(f"{run}: no mlperf_log.txt in this folder")
    return log


def _world_size(run: str | os.PathLike) -> int:
    summary = Path(run) / "summary.json"
    try:
        return int(read_json(summary, "summary").get("world_size", 1))
    except (OSError, ValueError, TypeError):
        return 1


def _agreed(logs: list[Path], key: str) -> str:
    values = {str(_log_value(log, key)) for log in logs}
    if len(values) != 1:
        raise CliError(f"the runs' logs disagree on {key}: {', '.join(sorted(values))}")
    return values.pop()


def system_description(system: str, org: str, logs: list[Path], runs: list, given: dict) -> dict:
    """The system JSON: machine facts < ``given`` (``--system-json``) < what the logs and flags fix.

    CliError naming every required field still missing, or a ``given`` division or status that
    contradicts the logs."""
    division = _agreed(logs, "submission_division")
    status = STATUS.get(_agreed(logs, "submission_status"), _agreed(logs, "submission_status"))
    desc = {"hw_notes": "", "sw_notes": "", **machine_facts()}
    accelerators = int(desc.get("accelerators_per_node", "0") or 0)
    if all(_world_size(r) <= max(1, accelerators) for r in runs):
        desc["number_of_nodes"] = "1"  # every run fit on this machine
    for key, want in (("division", division), ("status", status)):
        if key in given and given[key] != want:
            raise CliError(f"--system-json: {key} {given[key]!r}, but the runs' logs say {want!r}")
    desc.update(given)
    desc.update({"submitter": org, "division": division, "status": status})
    desc.setdefault("system_name", system)
    missing = [f for f in REQUIRED_FIELDS if f not in desc or desc[f] is None]
    if missing:
        raise CliError(f"system description: give {', '.join(missing)} in --system-json "
                       "(they cannot be read from this machine)")
    return {f: desc[f] for f in REQUIRED_FIELDS} | {k: v for k, v in desc.items() if k not in REQUIRED_FIELDS}


def lay_out(out: str | os.PathLike, system: str, org: str, runs: list, given: dict | None = None) -> dict:
    """Write the tree (module docstring) from the run folders or logs ``runs``; returns
    {"results": folder, "files": [result files], "system_json": path, "division": ...}.
    The system's ssd folder is replaced; other systems in ``out`` are left alone."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", system):
        raise CliError(f"--system {system!r}: use letters, digits, '_', '.', '-' (it names a file)")
    logs = [run_log(r) for r in runs]
    desc = system_description(system, org, logs, runs, given or {})
    out = Path(out)
    results = out / "results" / system / BENCHMARK
    if results.exists():
        shutil.rmtree(results)
    results.mkdir(parents=True)
    files = []
    for i, log in enumerate(logs):
        files.append(results / f"result_{i}.txt")
        shutil.copyfile(log, files[-1])
    atomic_write_json(out / "systems" / f"{system}.json", desc)
    return {"results": results, "files": files, "system_json": out / "systems" / f"{system}.json",
            "division": desc["division"]}


def read_system_json(path: str | None) -> dict:
    """``--system-json`` as a dict ({} when not given)."""
    if not path:
        return {}
    data = read_json(path, "--system-json")
    if not isinstance(data, dict):
        raise CliError(f"--system-json {path}: expected a JSON object of system description fields")
    return {k: str(v) if isinstance(v, (int, float)) else v for k, v in data.items()}
