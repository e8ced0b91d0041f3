"""What this machine can say about itself, in the field names of MLPerf system descriptions.

Both submission trees need a ``systems/<system>.json``: the inference one (the submission
checker's required fields) and the training one (mlperf_logging's system description checker).
Their hardware and software fields share names; `machine_facts` fills those that can be read here
and leaves out what cannot (the submitter gives the rest in a JSON file):

- CPU: model, sockets, cores per socket, logical CPUs, frequency, caches (``lscpu``, else
  /proc/cpuinfo and sysfs);
- memory (/proc/meminfo), the disk of the working folder;
- accelerators visible to torch (without one the count is 0 and the accelerator fields are "N/A",
  as CPU submissions state them);
- operating system, framework and software versions.

Counts are ints; `as_strings` gives the all-string form of the training rules' examples.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

ACCELERATOR_FIELDS = (
    "accelerator_model_name", "accelerator_memory_capacity", "accelerator_frequency",
    "accelerator_host_interconnect", "accelerator_interconnect", "accelerator_interconnect_topology",
    "accelerator_memory_configuration", "accelerator_on-chip_memories",
)  # fmt: skip
SOFTWARE = ("ssdbench", "mlcommons-loadgen", "mlperf-logging", "numpy", "faster-coco-eval", "onnxruntime",
            "openvino")  # fmt: skip


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], check=True, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v.strip()}


def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo as one dict per logical CPU (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    return [{k.strip(): v.strip() for k, _, v in (line.partition(":") for line in b.splitlines())} for b in blocks]


def _sysfs_caches() -> str | None:
    """``L1d 48K, L1i 32K, L2 2048K, ...`` of CPU 0 from sysfs."""
    parts = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        parts.append(f"L{level}{suffix} {size}")
    return ", ".join(parts) or None


def _cpu_facts() -> dict[str, Any]:
    cpu, info = _lscpu(), _cpuinfo()
    first = info[0] if info else {}
    sockets = int(cpu.get("Socket(s)") or len({c.get("physical id", "0") for c in info}) or 1)
    cores = int(cpu.get("Core(s) per socket") or first.get("cpu cores") or 0)
    logical = int(cpu.get("CPU(s)") or len(info) or os.cpu_count() or 0)
    facts: dict[str, Any] = {
        "host_processor_model_name": cpu.get("Model name") or first.get("model name") or platform.processor(),
        "host_processors_per_node": sockets,
        "host_processor_core_count": cores or (logical // sockets if logical else None),
        "host_processor_vcpu_count": logical or None,
    }
    mhz = cpu.get("CPU max MHz") or cpu.get("CPU MHz") or first.get("cpu MHz")
    if mhz:
        facts["host_processor_frequency"] = f"{float(mhz):.0f} MHz"
    caches = [f"{k.split()[0]} {cpu[k]}" for k in ("L1d cache", "L1i cache", "L2 cache", "L3 cache") if k in cpu]
    facts["host_processor_caches"] = ", ".join(caches) or _sysfs_caches()
    return facts


def _memory_gb() -> str | None:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    except OSError:
        return None
    return f"{int(m.group(1)) / 1024**2:.0f} GB" if m else None


def _accelerator_facts() -> dict[str, Any]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return {"accelerators_per_node": 0, **dict.fromkeys(ACCELERATOR_FIELDS, "N/A")}
    props = torch.cuda.get_device_properties(0)
    return {"accelerators_per_node": count, "accelerator_model_name": props.name,
            "accelerator_memory_capacity": f"{props.total_memory / 1024**3:.0f} GB"}  # fmt: skip


def operating_system() -> str:
    try:
        m = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', Path("/etc/os-release").read_text(), re.MULTILINE)
        name = m.group(1) if m else platform.system()
    except OSError:
        name = platform.system()
    return f"{name} (kernel {platform.release()})"


def software() -> tuple[str, str]:
    """(framework, other_software_stack): torch (+ CUDA, cuDNN) and the installed packages of `SOFTWARE`."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    framework = f"PyTorch {torch.__version__}"
    if torch.version.cuda:
        framework += f", CUDA {torch.version.cuda}"
        if torch.backends.cudnn.is_available():
            framework += f", cuDNN {torch.backends.cudnn.version()}"
    parts = [f"Python {platform.python_version()}"]
    for dist in SOFTWARE:
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return framework, ", ".join(parts)


def machine_facts() -> dict[str, Any]:
    """The system-description fields this machine can tell; fields it cannot read are absent."""
    framework, others = software()
    facts = {"number_of_nodes": 1, **_cpu_facts(), "host_memory_capacity": _memory_gb(),
             "host_storage_capacity": f"{shutil.disk_usage(os.getcwd()).total / 1e9:.0f} GB",
             **_accelerator_facts(), "framework": framework, "other_software_stack": others,
             "operating_system": operating_system()}  # fmt: skip
    return {k: v for k, v in facts.items() if v not in (None, "")}


def as_strings(facts: dict[str, Any]) -> dict[str, str]:
    """Every value as a string (the training rules' system descriptions are all strings)."""
    return {k: str(v) for k, v in facts.items()}
