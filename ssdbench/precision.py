"""Compute precision: dtype names, autocast and the default precision of a device, once for
training, evaluation and inference.

``auto`` picks bf16 where the hardware computes it natively and fp32 elsewhere:

- CUDA: bf16 (every GPU the presets target has bf16 tensor cores);
- CPU: bf16 when the cores have AMX-BF16 or AVX512-BF16 (flags ``amx_bf16`` / ``avx512_bf16`` of
  ``/proc/cpuinfo``), fp32 otherwise, because bf16 emulated on plain AVX2/AVX-512 is slower than
  fp32. (torch's ``get_cpu_capability()`` names only the vector ISA, e.g. ``AVX512``, never bf16.)
  Where ``/proc/cpuinfo`` is absent (not Linux) the answer is fp32.

``SSDBENCH_CPU_BF16=0`` (or ``1``) overrides the CPU detection, e.g. to compare both on one machine.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # None = no autocast
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flag names (Linux)


def autocast(device: torch.device | str, dtype: torch.dtype | str | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op for None / fp32."""
    if isinstance(dtype, str):
        dtype = AMP_DTYPES[dtype]
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first processor in ``cpuinfo`` (empty where the file is absent)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_cpu_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16); see the module doc."""
    forced = os.environ.get("SSDBENCH_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _detect_bf16(cpuinfo)


@functools.cache
def _detect_bf16(cpuinfo: str) -> bool:
    return bool(cpu_flags(cpuinfo) & set(NATIVE_BF16_FLAGS))


def default_precision(device: torch.device | str) -> str:
    """``auto`` resolved for ``device``: bf16 on CUDA and on CPUs with native bf16, else fp32."""
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16"
    return "bf16" if kind == "cpu" and native_cpu_bf16() else "fp32"


def resolve_precision(name: str | None, device: torch.device | str) -> str:
    """``name`` with ``auto``/None resolved by `default_precision`; ValueError for an unknown name."""
    if name in (None, "auto"):
        return default_precision(device)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype (precision) {name!r}; choose one of auto, {', '.join(DTYPES)}")
    return name
