"""The devices of the SUT's worker pool: ``--devices cuda:0,cuda:1 | cuda:all | cpu:N``.

One worker process per entry (`ssdbench.loadgen.instances.InstancePool`). ``cpu:N`` is N CPU
workers, each pinned to its own whole cores (the same as ``--instances N``); ``cuda:K`` one
worker on GPU K; ``cuda:all`` one per visible GPU. CPU and CUDA workers are not mixed in one
pool (their speeds differ by two orders of magnitude; Offline would wait on the CPU's tail).

The ``devices`` key is ``auto`` by default: one device (``device``) in the SUT's own process,
or ``cpu:instances`` when ``instances > 1``.
"""

from __future__ import annotations

import os

import torch


def cuda_count() -> int:
    """Visible CUDA devices (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cpu_entry(entry: str, flag: str) -> list[str]:
    count = entry.partition(":")[2] or "1"
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{flag} {entry!r}: cpu:N needs a whole number of workers >= 1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if int(count) > cores:
        raise ValueError(f"{flag} {entry!r} asks for {count} CPU workers; this process has {cores} cores "
                         "(each worker needs at least one)")  # fmt: skip
    return ["cpu"] * int(count)


def _cuda_entry(entry: str, visible: int, flag: str) -> list[str]:
    index = entry.partition(":")[2] or "0"
    there = ", ".join(f"cuda:{k}" for k in range(visible)) or "none"
    if index == "all":
        if visible == 0:
            raise ValueError(f"{flag} {entry!r}: this machine has no CUDA device")
        return [f"cuda:{k}" for k in range(visible)]
    if not index.isdigit():
        raise ValueError(f"{flag} {entry!r} is not a device (cuda:N, cuda:all, cpu:N)")
    if int(index) >= visible:
        raise ValueError(f"{flag} asks for cuda:{int(index)}; this machine has {visible} CUDA "
                         f"device(s) ({there})")  # fmt: skip
    return [f"cuda:{int(index)}"]


def parse_devices(text: str, visible_cuda: int | None = None, flag: str = "--devices") -> list[str]:
    """``cuda:0,cuda:1`` / ``cuda:all`` / ``cpu:2`` -> one torch device name per worker.

    ValueError (one line naming ``flag``, what was asked and what exists) for an unknown entry, a
    GPU that is not there, a device named twice, or CPU and CUDA entries mixed.
    """
    visible = cuda_count() if visible_cuda is None else visible_cuda
    entries = [e.strip() for e in str(text).split(",")]
    if not text or any(not e for e in entries):
        raise ValueError(f"{flag} {text!r}: an empty entry (examples: cuda:0,cuda:1  cuda:all  cpu:2)")
    devices: list[str] = []
    for entry in entries:
        kind = entry.partition(":")[0]
        if kind == "cpu":
            devices += _cpu_entry(entry, flag)
        elif kind == "cuda":
            devices += _cuda_entry(entry, visible, flag)
        else:
            raise ValueError(f"{flag} {entry!r} is not a device (cuda:N, cuda:all, cpu:N)")
    if len({d.split(":")[0] for d in devices}) > 1:
        raise ValueError(f"{flag} {text!r} mixes CPU and CUDA workers; use one kind per pool")
    gpus = [d for d in devices if d != "cpu"]
    if len(set(gpus)) < len(gpus):
        twice = sorted({d for d in gpus if gpus.count(d) > 1})
        raise ValueError(f"{flag} {text!r} names {', '.join(twice)} more than once")
    return devices


def pool_devices(devices: str, instances: int, visible_cuda: int | None = None) -> list[str] | None:
    """The pool's devices from the ``devices`` and ``instances`` keys; None: no pool (one device
    in the SUT's process). ValueError when both ask for different CPU worker counts."""
    if devices in (None, "", "auto"):
        return ["cpu"] * instances if instances > 1 else None
    listed = parse_devices(devices, visible_cuda)
    if instances > 1 and listed != ["cpu"] * instances:
        raise ValueError(f"--instances {instances} and --devices {devices} disagree (--instances N is "
                         f"--devices cpu:N); give one of them")  # fmt: skip
    return listed


def describe_devices(devices: list[str] | None, single: str) -> str:
    """``cuda:0,cuda:1`` / ``cpu:2`` for settings and reports; ``single`` when there is no pool."""
    if not devices:
        return single
    if all(d == "cpu" for d in devices):
        return f"cpu:{len(devices)}"
    return ",".join(devices)
