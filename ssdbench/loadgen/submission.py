"""An MLPerf inference submission: the tree (`build_submission`) and its system description
(`system_description`).

From ``ssdbench loadgen`` run folders (one performance and one accuracy run per scenario) and
``ssdbench compliance`` output folders, `build_submission` writes, in the layout of the round's submission checker
(tools/submission/submission-checker.py; truncation by tools/submission/truncate_accuracy_log.py)::

    OUT/<division>/<org>/systems/<system>.json
    OUT/<division>/<org>/code/ssd-resnet34/ssdbench/          README.md + the ssdbench sources
    OUT/<division>/<org>/measurements/<system>/ssd-resnet34/<Scenario>/
        mlperf.conf (the round's values), user.conf (this run's own), README.md (the commands),
        <system>_ssdbench_<Scenario>.json (the implementation description)
    OUT/<division>/<org>/results/<system>/ssd-resnet34/<Scenario>/performance/run_1/
        mlperf_log_summary.txt, mlperf_log_detail.txt
    OUT/<division>/<org>/results/<system>/ssd-resnet34/<Scenario>/accuracy/
        mlperf_log_summary.txt, mlperf_log_detail.txt, accuracy.txt (mAP= and hash=), mlperf_log_accuracy.json
    OUT/<division>/<org>/compliance/<system>/ssd-resnet34/<Scenario>/TEST01, TEST04-A, TEST04-B, TEST05

Accuracy logs (results and TEST01) are hashed (sha256 of the full file, the ``hash=`` line of
accuracy.txt) and, when larger than 10 KiB, truncated to their first and last 4 KiB with
``\n\n...\n\n`` between, as the truncation tool does. Keep the run folders: they hold the full logs.

The system description of an MLPerf inference submission (``systems/<system>.json``).

The required fields are the round's submission checker's (``SYSTEM_DESC_REQUIRED_FIELDS`` and, from
v1.0, ``SYSTEM_DESC_REQUIED_FIELDS_SINCE_V1`` in tools/submission/submission-checker.py;
`ssdbench.loadgen.rules.system_fields`). `ssdbench.sysinfo.machine_facts` reads what this machine
can tell (CPU model, sockets, cores, frequency, caches, memory, accelerators, OS, framework
versions); the submitter gives the rest (availability status, storage, networking, cooling, ...)
in a JSON file, whose values win. `system_description` names every field still missing in one error.
Machine facts the round's checker does not know (``host_processor_vcpu_count``: it would warn
"field ... is unknown") go into ``hw_notes`` instead; the optional power fields
(``SYSTEM_DESC_REQUIED_FIELDS_POWER``, `rules.SYSTEM_FIELDS_POWER`) are known and taken from the
submitter's JSON when given.
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdbench.checks import inside, safe_name
from ssdbench.errors import CliError
from ssdbench.io import atomic_write_json, atomic_write_text, read_json
from ssdbench.loadgen.compliance import MARKER
from ssdbench.loadgen.rules import (
    IMPLEMENTATION,
    MAX_ACCURACY_LOG_BYTES,
    MODEL_DIR,
    known_system_fields,
    system_fields,
)
from ssdbench.loadgen.settings import (
    COMPLIANCE_TESTS,
    SCENARIOS,
    RunSettings,
    get_round,
    round_conf,
    write_conf,
)
from ssdbench.sysinfo import machine_facts

VIEWABLE = 4096  # characters kept at each end of a truncated accuracy log


def hash_and_truncate(acc_dir: Path) -> str:
    """Append ``hash=<sha256>`` of the full accuracy log to accuracy.txt; truncate the log if large."""
    log = acc_dir / "mlperf_log_accuracy.json"
    digest = hashlib.sha256(log.read_bytes()).hexdigest()
    scored = acc_dir / "accuracy.txt"
    atomic_write_text(scored, scored.read_text(encoding="utf-8") + f"hash={digest}\n")
    if log.stat().st_size > MAX_ACCURACY_LOG_BYTES:
        text = log.read_text()
        atomic_write_text(log, text[:VIEWABLE] + "\n\n...\n\n" + text[-VIEWABLE:])
    return digest


def classify(folders) -> dict[str, dict[str, Path]]:
    """Scenario -> {"performance", "accuracy", "compliance"} -> folder; CliError for a stranger or a
    second folder of the same kind."""
    found: dict[str, dict[str, Path]] = {}
    for folder in map(Path, folders):
        if (folder / MARKER).is_file():
            scenario, kind = read_json(folder / MARKER, "compliance record").get("scenario"), "compliance"
        elif (folder / "settings.json").is_file():
            info = read_json(folder / "settings.json", "run settings")
            if info.get("audit_test"):
                raise CliError(f"{folder} is a {info['audit_test']} run; give its `ssdbench compliance` --out folder")
            scenario, kind = info.get("scenario"), info.get("mode")
            if kind not in ("performance", "accuracy"):
                raise CliError(f"{folder / 'settings.json'}: mode {kind!r} is neither performance nor accuracy")
        else:
            raise CliError(f"{folder} is neither an ssdbench loadgen run nor an ssdbench compliance folder")
        if scenario not in SCENARIOS:  # it becomes a folder name
            raise CliError(f"{folder}: scenario {scenario!r} is not one of {', '.join(SCENARIOS)}")
        slot = found.setdefault(scenario, {})
        if kind in slot:
            raise CliError(f"two {scenario} {kind} folders: {slot[kind]} and {folder}")
        slot[kind] = folder
    for scenario, slot in found.items():
        if "performance" not in slot:
            raise CliError(f"{scenario}: no performance run among the folders (only {', '.join(slot)})")
    return found


def _round_of(runs: dict[str, dict[str, Path]]) -> str:
    rounds = {read_json(f / "settings.json", "run settings").get("round", "v2.0")
              for slot in runs.values() for k, f in slot.items() if k != "compliance"}  # fmt: skip
    if len(rounds) != 1:
        raise CliError(f"the runs come from different rounds ({', '.join(sorted(rounds))}); one submission, one round")
    return rounds.pop()


@dataclass(frozen=True)
class Submitter:
    """Who submits which system, where: the names a submission tree is built under."""

    org: str  # --org: the submitter (a folder name)
    system: str  # --system: the system's name (systems/<system>.json)
    division: str  # closed | open
    category: str  # datacenter | edge | datacenter,edge


def build_submission(submitter: Submitter, folders, out: str | Path, system_json: str | Path | None = None,
                     round_name: str | None = None) -> tuple[Path, str]:  # fmt: skip
    """Write the tree under ``out``; returns (``out``, the round of the runs, which must be
    ``round_name`` when given). Raises CliError on bad input before writing anything."""
    org, system, division, category = submitter.org, submitter.system, submitter.division, submitter.category
    if division not in ("closed", "open"):
        raise CliError(f"--division must be closed or open, got {division!r}")
    runs = classify(folders)
    found = _round_of(runs)
    if round_name and round_name != found:
        raise CliError(f"--round {round_name}, but the runs were made under round {found}")
    round_name = found
    get_round(round_name).scenario_lists(category)  # ValueError for an unknown category
    given = read_json(Path(system_json), "system description") if system_json else {}
    used = accelerators_of_runs(folder for slot in runs.values() for folder in slot.values())
    desc = system_description(org, system, division, category, round_name, {**used, **given})
    safe_name(org, "--org")
    safe_name(system, "--system")
    base = inside(Path(out) / division / org, out, "--org")
    if base.exists():
        raise CliError(f"{base} exists; remove it or choose another --out")
    (base / "systems").mkdir(parents=True)
    atomic_write_json(base / "systems" / f"{system}.json", desc)
    _code(base / "code" / MODEL_DIR / IMPLEMENTATION)
    for scenario, slot in runs.items():
        _scenario(base, system, scenario, slot, round_name)
    return Path(out), round_name


def _copy(names, src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (src / name).is_file():
            raise CliError(f"{src} has no {name}")
        shutil.copy2(src / name, dst / name)


def _scenario(base: Path, system: str, scenario: str, slot: dict[str, Path], round_name: str) -> None:
    results = base / "results" / system / MODEL_DIR / scenario
    _copy(("mlperf_log_summary.txt", "mlperf_log_detail.txt"), slot["performance"], results / "performance" / "run_1")
    if "accuracy" in slot:
        _copy(("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json", "accuracy.txt"),
              slot["accuracy"], results / "accuracy")  # fmt: skip
        hash_and_truncate(results / "accuracy")
    _measurements(base / "measurements" / system / MODEL_DIR / scenario, system, scenario, slot, round_name)
    if "compliance" in slot:
        target = base / "compliance" / system / MODEL_DIR / scenario
        for test in COMPLIANCE_TESTS:
            if (slot["compliance"] / test).is_dir():
                shutil.copytree(slot["compliance"] / test, target / test)
        if (target / "TEST01" / "accuracy" / "mlperf_log_accuracy.json").is_file():
            hash_and_truncate(target / "TEST01" / "accuracy")


def _measurements(folder: Path, system: str, scenario: str, slot: dict[str, Path], round_name: str) -> None:
    folder.mkdir(parents=True)
    info = read_json(slot["performance"] / "settings.json", "run settings")
    settings = RunSettings.from_json(info)
    atomic_write_text(folder / "mlperf.conf", round_conf(round_name))
    write_conf(settings, str(folder / "user.conf"), only_user=True)
    sut = info["sut"]
    weights = info.get("weights")
    transforms = [t for t, on in (("space-to-depth first convolution (exactly equivalent)", sut["space_to_depth"]),
                                  ("ONNX export", sut["backend"] == "onnxruntime")) if on]  # fmt: skip
    input_types, weight_types = resolved_data_types(info)
    impl = {"input_data_types": input_types, "retraining": "no",
            "starting_weights_filename": Path(weights).name if weights not in (None, "None") else "none (random init)",
            "weight_data_types": weight_types, "weight_transformations": ", ".join(transforms) or "none",
            "ssdbench_model": sut["model"], "ssdbench_backend": sut["backend"], "dataset": info.get("data"),
            "dataset_images": info.get("qsl_count")}  # fmt: skip
    atomic_write_json(folder / f"{system}_{IMPLEMENTATION}_{scenario}.json", impl)
    lines = [f"# {scenario}: how these results were produced", "",
             f"ssdbench, round {round_name} rules, LoadGen settings in user.conf over the round's mlperf.conf.", ""]
    for kind in ("performance", "accuracy", "compliance"):
        if kind in slot:
            command = _command(slot[kind], kind)
            lines += [f"{kind} ({slot[kind]}):", "", "```", command, "```", ""]
    lines += _official_notes(slot, scenario, round_name)
    atomic_write_text(folder / "README.md", "\n".join(lines))


def _official_notes(slot: dict[str, Path], scenario: str, round_name: str) -> list[str]:
    """The round checker's result of the performance run; the summary line the round's compliance
    scripts misread (SingleStream / MultiStream); ssdbench's own TEST01 check, reported apart."""
    from ssdbench.loadgen.rules import official_result, read_detail_log, summary_headline_note

    perf = slot["performance"]
    result = official_result(read_detail_log(perf / "mlperf_log_detail.txt"), round_name, scenario)
    lines = ["## The round's own tools", "", f"- result as the round's submission checker reads it: {result}"]
    if note := summary_headline_note(perf / "mlperf_log_summary.txt", scenario):
        lines.append(f"- mlperf_log_summary.txt: {note}")
    checks = slot.get("compliance")
    if checks is not None and (checks / MARKER).is_file():
        for name, passed in read_json(checks / MARKER, "compliance record").get("ssdbench_checks", {}).items():
            lines.append(f"- {name}: {'PASS' if passed else 'FAIL'} (beyond MLPerf's scripts; the official TEST01 "
                         "result is TEST01/verify_accuracy.txt)")  # fmt: skip
    return lines + [""]


def _backend_descriptions(info: dict) -> list[dict]:
    """What the run's backend (or each of its instances) said it resolved to (settings.json)."""
    found = info.get("backend_config")
    pool = info.get("instances")
    items = [found] if isinstance(found, dict) else []
    if isinstance(pool, dict):
        items += [d for d in pool.values() if isinstance(d, dict)]
    elif isinstance(pool, list):
        items += [d for d in pool if isinstance(d, dict)]
    return items


def resolved_data_types(info: dict) -> tuple[str, str]:
    """(input_data_types, weight_data_types) as the run resolved them, never ``auto``: the dtype
    the backend reported (an INT8 quantized file: int8 weights and compute on fp32 input), else the
    SUT's dtype with ``auto`` resolved for the run's device (`ssdbench.precision`)."""
    from ssdbench.precision import resolve_precision

    described = _backend_descriptions(info)
    dtypes = sorted({str(d["dtype"]) for d in described if d.get("dtype") not in (None, "auto")})
    dtype = "/".join(dtypes) if dtypes else resolve_precision(info["sut"]["dtype"], info.get("device") or "cpu")
    if any(d.get("quantized") for d in described):
        return "fp32", "int8"  # the QDQ / FakeQuantize file takes the normalised fp32 image
    return dtype, dtype


def _command(folder: Path, kind: str) -> str:
    if kind == "compliance":
        record = read_json(folder / MARKER, "compliance record")
        acc = f" --accuracy-run {record['accuracy_run']}" if record.get("accuracy_run") else ""
        return f"ssdbench compliance all --run {record['performance_run']}{acc} --out {folder}"
    info = read_json(folder / "settings.json", "run settings")
    return info.get("command") or f"(run through the library; settings in {folder / 'settings.json'})"


def _code(folder: Path) -> None:
    """The ssdbench sources that produced the results, and how to run them."""
    import ssdbench

    package = Path(ssdbench.__file__).parent
    shutil.copytree(package, folder / "ssdbench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    version = getattr(ssdbench, "__version__", "")
    atomic_write_text(
        folder / "README.md",
        f"# ssdbench {version}\n\nSSD-ResNet34 (SSD-Large) under MLPerf LoadGen. The `ssdbench/` folder is the "
        "package that produced these results; install it with its dependencies (`pip install -e .` from its "
        "project) and run the commands in each measurements/<system>/ssd-resnet34/<Scenario>/README.md.\n"
    )


def system_description(org: str, system: str, division: str, category: str, round_name: str,
                       given: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The system JSON: the submission's identity, the machine's fields, then ``given`` on top.

    Raises CliError naming every required field that is still missing.
    """
    desc: dict[str, Any] = {"division": division, "submitter": org, "system_name": system,
                            "system_type": category, "hw_notes": "", "sw_notes": ""}  # fmt: skip
    desc.update(machine_facts())
    known = known_system_fields(round_name)
    unknown = {k: desc.pop(k) for k in list(desc) if k not in known}  # the machine's extras: into the notes
    extra = "; ".join(f"{k}: {v}" for k, v in unknown.items() if v not in (None, ""))
    if extra:
        desc["hw_notes"] = extra
    desc.update(given or {})
    missing = [k for k in system_fields(round_name) if k not in desc]
    if missing:
        raise CliError(f"the system description lacks required field(s) {', '.join(missing)}: give them in "
                       "--system-json FILE (a JSON object)")  # fmt: skip
    return desc


def accelerators_of_runs(folders) -> dict[str, Any]:
    """``{"accelerators_per_node": N}``: the GPUs the runs' SUT used (``pool_devices`` of their
    settings.json, else ``device``), not the ones this machine happens to show; {} without
    settings. CliError when the runs used different numbers (one system, one count)."""
    counts: dict[str, int] = {}
    for folder in folders:
        path = Path(folder) / "settings.json"
        if not path.is_file():
            continue
        settings = read_json(path, "run settings")
        devices = str(settings.get("pool_devices") or settings.get("device") or "cpu")
        counts[str(folder)] = sum(d.strip().startswith("cuda") for d in devices.split(","))
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{folder}: {n}" for folder, n in counts.items())
        raise CliError(f"the runs used different numbers of accelerators ({listed}); one system, one count")
    return {"accelerators_per_node": next(iter(counts.values()))} if counts else {}
