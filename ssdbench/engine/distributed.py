"""Small distributed helpers that work with and without an initialised process group.

Rank and world size come from the process group when there is one, otherwise from the launcher's
environment: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK, Slurm's `srun` sets SLURM_PROCID /
SLURM_NTASKS / SLURM_LOCALID. Without either, the process is rank 0 of 1. The object collectives
degrade to the single-process answer when no process group is initialised, so evaluation and
logging code calls them unconditionally.
"""

from __future__ import annotations

import os
from typing import Any

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


def barrier() -> None:
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
