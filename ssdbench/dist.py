"""Where a process runs: ranks, device choice, the process group, collectives, a watchdog.

Launchers (README "Launching"): plain ``python -m ssdbench train`` is rank 0 of 1; ``torchrun``
sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; Slurm's ``srun`` sets
SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and our batch script exports MASTER_ADDR /
MASTER_PORT (the first node of the allocation). Without a launcher the process is rank 0 of 1.

The object collectives degrade to the single-process answer when no process group is
initialised, so evaluation and logging code calls them unconditionally.

Failure handling: the process group has a timeout, so a collective waiting for a dead peer
raises instead of hanging; gloo also fails fast when a peer's socket closes. A `Watchdog` thread
ends a rank whose loop makes no progress for a bounded time (a hang outside collectives, e.g. a
stuck data worker).
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# (torchrun name, Slurm name) per quantity; torchrun wins when both are set, as it does when a
# Slurm job step runs torchrun.
_ENV = {
    "rank": ("RANK", "SLURM_PROCID"),
    "world_size": ("WORLD_SIZE", "SLURM_NTASKS"),
    "local_rank": ("LOCAL_RANK", "SLURM_LOCALID"),
}


def _env_int(quantity: str, default: int) -> int:
    for name in _ENV[quantity]:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    return default


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def env_rank() -> int:
    """Global rank named by the launcher (torchrun or Slurm); 0 without one."""
    return _env_int("rank", 0)


def env_world_size() -> int:
    """Number of processes named by the launcher; 1 without one."""
    return _env_int("world_size", 1)


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else env_rank()


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else env_world_size()


def get_local_rank() -> int:
    """Rank within the node (selects the GPU); 0 without a launcher."""
    return _env_int("local_rank", 0)


def is_main() -> bool:
    """True on the process that prints, writes files and logs (global rank 0)."""
    return get_rank() == 0


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order; ``[obj]`` without a process group."""
    if not is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's ``obj`` on rank ``dst`` (None elsewhere); ``[obj]`` without a process group.

    Uses all_gather_object under NCCL, whose gather_object needs per-rank device setup the caller
    may not have done; the objects here (detections of an eval shard) are small either way.
    """
    if not is_initialized() or dist.get_world_size() == 1:
        return [obj]
    if dist.get_backend() == "nccl":
        gathered = all_gather_object(obj)
        return gathered if dist.get_rank() == dst else None
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank; ``obj`` itself without a process group."""
    if not is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ---------------------------------------------------------------- process group
@dataclass
class Launch:
    """Where this process sits: global rank, world size, local rank, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str | None = "auto", local_rank: int | None = None, flag: str = "--device") -> torch.device:
    """The torch device for a ``--device`` value: ``auto`` (or None) = the local rank's GPU when
    CUDA is available, else the CPU; ``cuda`` without an index = the local rank's GPU.

    Raises ValueError naming ``flag`` for a name torch does not know or CUDA that is not there.
    """
    local_rank = get_local_rank() if local_rank is None else local_rank
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{flag} {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def _default_master_env(world_size: int) -> None:
    """Single-node launches without torchrun (e.g. one-node srun) need an address to rendezvous."""
    if world_size > 1 and "MASTER_ADDR" not in os.environ:
        if int(os.environ.get("SLURM_NNODES", "1")) > 1:
            raise ValueError("multi-node srun needs MASTER_ADDR (the batch script in recipes/ sets it)")
        os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ.setdefault("MASTER_PORT", "29500")


def local_launch(device_name: str | None = "auto") -> Launch:
    """This process's place as the launcher names it (rank, world size, local rank) and its device
    (`pick_device`: errors name --device), before any process group is joined."""
    local = get_local_rank()
    return Launch(env_rank(), env_world_size(), local, pick_device(device_name, local))


def join_group(launch: Launch, timeout_s: float = 300.0) -> Launch:
    """Initialise the process group when the launcher asks for more than one process.

    Backend: NCCL on CUDA, gloo on CPU. Rank / world size come from torchrun or Slurm variables.
    """
    if launch.world_size > 1 and not dist.is_initialized():
        _default_master_env(launch.world_size)
        # NCCL: abort hung collectives instead of waiting forever (bounded failure time).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        backend = "nccl" if launch.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return launch


def init_distributed(device_name: str = "auto", timeout_s: float = 300.0) -> Launch:
    """`local_launch` then `join_group`: the device picked and the process group joined."""
    return join_group(local_launch(device_name), timeout_s)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum small host values over ranks (one collective); identity without a process group."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- watchdog
class Watchdog:
    """Ends the process when `beat()` is not called for `timeout_s` seconds (outside `paused()`).

    A peer rank that died leaves the others blocked; collectives time out by themselves, this
    catches the rest. Exit status 3 with a one-line message, so launchers see a failure.
    """

    def __init__(self, timeout_s: float, rank: int = 0, poll_s: float = 1.0):
        self.timeout_s, self.rank, self.poll_s = timeout_s, rank, poll_s
        self._last = time.monotonic()
        self._paused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ssdbench-watchdog", daemon=True)

    def start(self) -> Watchdog:
        if self.timeout_s > 0:
            self._thread.start()
        return self

    def beat(self) -> None:
        self._last = time.monotonic()

    @contextmanager
    def paused(self):
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self.beat()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            idle = time.monotonic() - self._last
            if not self._paused and idle > self.timeout_s:
                print(f"rank {self.rank}: no training progress for {idle:.0f} s "
                      "(a peer rank probably failed); exiting", file=sys.stderr, flush=True)
                os._exit(3)
