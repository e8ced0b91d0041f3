"""The system description of an MLPerf inference submission (``systems/<system>.json``).

The required fields are the round's submission checker's (``SYSTEM_DESC_REQUIRED_FIELDS`` and, from
v1.0, ``SYSTEM_DESC_REQUIED_FIELDS_SINCE_V1`` in tools/submission/submission-checker.py;
`ssdbench.loadgen.rules.system_fields`). `machine_fields` reads what this machine can tell (CPU
model, sockets, cores, frequency, caches, memory, accelerators, OS, framework versions); the
submitter gives the rest (availability status, storage, networking, cooling, ...) in a JSON file,
whose values win. `system_description` names every field still missing in one error.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from ssdbench.errors import CliError
from ssdbench.loadgen.rules import system_fields


def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    cpus = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            entry[key.strip()] = value.strip()
        cpus.append(entry)
    return cpus


def _memory_gb() -> str | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 ** 2:.0f} GB"
    except (OSError, ValueError, IndexError):
        pass
    return None


def _caches() -> str | None:
    """``L1d 48 KiB, L2 2 MiB, ...`` of CPU 0 from sysfs."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    parts = []
    for index in sorted(base.glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        parts.append(f"L{level}{suffix} {size}")
    return ", ".join(parts) or None


def _os_name() -> str:
    name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                name = f"{line.split('=', 1)[1].strip(chr(34))} (kernel {platform.release()})"
    except OSError:
        pass
    return name


def _versions() -> tuple[str, str]:
    """(framework, other software) version strings."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    framework = f"PyTorch {torch.__version__}"
    if torch.version.cuda:
        framework += f", CUDA {torch.version.cuda}"
    others = [f"Python {platform.python_version()}"]
    others += [f"{n} {v}" for n in ("ssdbench", "mlcommons-loadgen", "numpy", "onnxruntime") if (v := ver(n))]
    return framework, ", ".join(others)


def _cpu_fields() -> dict[str, Any]:
    cpus = _cpuinfo()
    if not cpus:
        return {"host_processor_model_name": platform.processor() or None,
                "host_processor_core_count": os.cpu_count()}  # fmt: skip
    sockets = {c.get("physical id", "0") for c in cpus}
    cores = cpus[0].get("cpu cores")
    fields: dict[str, Any] = {
        "host_processor_model_name": cpus[0].get("model name"),
        "host_processors_per_node": len(sockets),
        "host_processor_core_count": int(cores) if cores and cores.isdigit() else len(cpus) // len(sockets),
    }
    mhz = cpus[0].get("cpu MHz")
    if mhz:
        fields["host_processor_frequency"] = f"{float(mhz):.0f} MHz"
    return fields


def _accelerator_fields() -> dict[str, Any]:
    """Accelerators torch can see; "N/A" details on a CPU-only machine, as CPU submissions state them."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        none = "N/A"
        return {"accelerators_per_node": 0, "accelerator_model_name": none, "accelerator_memory_capacity": none,
                "accelerator_frequency": none, "accelerator_host_interconnect": none,
                "accelerator_interconnect": none, "accelerator_interconnect_topology": none,
                "accelerator_memory_configuration": none, "accelerator_on-chip_memories": none}  # fmt: skip
    props = torch.cuda.get_device_properties(0)
    return {"accelerators_per_node": count, "accelerator_model_name": props.name,
            "accelerator_memory_capacity": f"{props.total_memory / 1024 ** 3:.0f} GB"}  # fmt: skip


def machine_fields() -> dict[str, Any]:
    """What this machine can say about itself (fields it cannot read are absent)."""
    framework, others = _versions()
    fields = {"number_of_nodes": 1, **_cpu_fields(), **_accelerator_fields(), "framework": framework,
              "other_software_stack": others, "operating_system": _os_name()}  # fmt: skip
    if memory := _memory_gb():
        fields["host_memory_capacity"] = memory
    if caches := _caches():
        fields["host_processor_caches"] = caches
    return {k: v for k, v in fields.items() if v not in (None, "")}


def system_description(org: str, system: str, division: str, category: str, round_name: str,
                       given: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The system JSON: the submission's identity, the machine's fields, then ``given`` on top.

    Raises CliError naming every required field that is still missing.
    """
    desc: dict[str, Any] = {"division": division, "submitter": org, "system_name": system,
                            "system_type": category, "hw_notes": "", "sw_notes": ""}  # fmt: skip
    desc.update(machine_fields())
    desc.update(given or {})
    missing = [k for k in system_fields(round_name) if k not in desc]
    if missing:
        raise CliError(f"the system description lacks required field(s) {', '.join(missing)}: give them in "
                       "--system-json FILE (a JSON object)")  # fmt: skip
    return desc
