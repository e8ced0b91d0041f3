"""Process-group setup for training: torchrun or Slurm `srun`, DDP, sync-BN groups, a watchdog.

Launchers (README "Launching"): plain ``python -m ssdbench train`` is rank 0 of 1; ``torchrun``
sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; ``srun`` sets SLURM_PROCID /
SLURM_NTASKS / SLURM_LOCALID and our batch script exports MASTER_ADDR / MASTER_PORT (the first
node of the allocation). Rank lookup itself lives in `engine.distributed`.

Failure handling: the process group has a timeout (`dist_timeout_s`), so a collective waiting
for a dead peer raises instead of hanging; gloo also fails fast when a peer's socket closes. A
`Watchdog` thread ends a rank whose training loop makes no progress for a bounded time (a hang
outside collectives, e.g. a stuck data worker).
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from . import distributed as D


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


def pick_device(name: str, local_rank: int) -> torch.device:
    """`auto` = the local rank's GPU when CUDA is available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
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


def init_distributed(device_name: str = "auto", timeout_s: float = 300.0) -> Launch:
    """Initialise the process group when the launcher asks for more than one process.

    Backend: NCCL on CUDA, gloo on CPU. Rank / world size come from torchrun or Slurm variables.
    """
    rank, world, local = D.env_rank(), D.env_world_size(), D.get_local_rank()
    device = pick_device(device_name, local)
    if world > 1 and not dist.is_initialized():
        _default_master_env(world)
        # NCCL: abort hung collectives instead of waiting forever (bounded failure time).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return Launch(rank, world, local, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- sync-BN over groups of ranks
def bn_group(bn_span: int, world_size: int):
    """Process group of the `bn_span` consecutive ranks this rank normalises with (None = local).

    Every rank must create every group (a torch.distributed rule), in the same order.
    """
    if bn_span <= 1 or world_size <= 1:
        return None
    if world_size % bn_span:
        raise ValueError(f"bn_span={bn_span} must divide the world size {world_size}")
    mine = None
    for start in range(0, world_size, bn_span):
        group = dist.new_group(list(range(start, start + bn_span)))
        if start <= dist.get_rank() < start + bn_span:
            mine = group
    return mine


class GroupBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics span a process group; works on CPU (gloo) and GPU.

    torch's SyncBatchNorm runs on GPUs only, so CPU runs use this one. Training forward: per-channel
    sum, sum of squares and count are all-reduced (autograd-aware, so gradients flow through the
    statistics as in one big batch); eval forward is plain BatchNorm with the running stats.
    Variance is E[x^2] - E[x]^2 (biased for normalising, unbiased for the running stats).
    """

    process_group = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.process_group is None:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float32, device=x.device)
        xf = x.float()
        stats = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count])
        stats = all_reduce(stats, group=self.process_group)
        c = x.shape[1]
        n = stats[-1]
        mean, var = stats[:c] / n, (stats[c:2 * c] / n - (stats[:c] / n) ** 2).clamp(min=0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
        shape = (1, c, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return (y * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


def convert_sync_bn(model: nn.Module, group, device: torch.device) -> nn.Module:
    """BatchNorm -> torch SyncBatchNorm (CUDA) or GroupBatchNorm2d (CPU) over `group`."""
    if group is None:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, group)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            bn = GroupBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine)
            bn.load_state_dict(child.state_dict())
            bn.process_group = group
            setattr(model, name, bn)
        else:
            convert_sync_bn(child, group, device)
    return model


@torch.no_grad()
def average_bn_stats(model: nn.Module, world_size: int) -> None:
    """SPEC §6: average BatchNorm running mean/var over all ranks before evaluation."""
    if world_size <= 1 or not dist.is_initialized():
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            for buf in (module.running_mean, module.running_var):
                dist.all_reduce(buf)
                buf.div_(world_size)


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
