"""Synchronised BatchNorm over groups of ranks (MLPerf ``model_bn_span``) and BN averaging.

On CUDA torch's `SyncBatchNorm`; on CPU (gloo) our `GroupBatchNorm2d`, since torch's runs on
GPUs only. `average_bn_stats` averages the running statistics over all ranks before each
evaluation (docs/benchmark.md §6).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


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
    """benchmark.md §6: average BatchNorm running mean/var over all ranks before evaluation."""
    if world_size <= 1 or not dist.is_initialized():
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            for buf in (module.running_mean, module.running_var):
                dist.all_reduce(buf)
                buf.div_(world_size)
