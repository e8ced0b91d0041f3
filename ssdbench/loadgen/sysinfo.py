"""The system description of an MLPerf inference submission (``systems/<system>.json``).

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

import json
from pathlib import Path
from typing import Any

from ssdbench.errors import CliError
from ssdbench.loadgen.rules import known_system_fields, system_fields
from ssdbench.sysinfo import machine_facts


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
        settings = json.loads(path.read_text())
        devices = str(settings.get("pool_devices") or settings.get("device") or "cpu")
        counts[str(folder)] = sum(d.strip().startswith("cuda") for d in devices.split(","))
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{folder}: {n}" for folder, n in counts.items())
        raise CliError(f"the runs used different numbers of accelerators ({listed}); one system, one count")
    return {"accelerators_per_node": next(iter(counts.values()))} if counts else {}
