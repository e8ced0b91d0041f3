"""Builders for a training run: datasets and loaders, network, optimiser, schedule, AMP, DDP.

`build_data` gives a `Data` (datasets, loaders, the numbers the schedule and the MLPerf log
need); `build_parts` gives the `train.loop.StepParts` one step touches and the bare network.
The pieces they build with live here too: `MLPerfSchedule`, the MLPerf learning-rate schedule
(linear warmup, then step decay, benchmark.md §6, as the reference's train.py sets it: see the
class), and synchronised BatchNorm over groups of ranks (MLPerf ``model_bn_span``: torch's
`SyncBatchNorm` on CUDA, our `GroupBatchNorm2d` on CPU, since torch's runs on GPUs only) with
`average_bn_stats`, which averages the running statistics over all ranks before each evaluation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from ssdbench.dist import Launch
from ssdbench.precision import AMP_DTYPES
from ssdbench.train.config import TrainConfig
from ssdbench.train.loop import StepParts

if TYPE_CHECKING:
    from ssdbench.data.loader import InputSettings

COCO_CATEGORIES = 80  # benchmark.md §5: COCO 2017 detection categories
# torch docs, CUDA graphs "Usage with DistributedDataParallel": capture DDP's all-reduce only
# after at least 11 eager iterations on a side stream.
DDP_GRAPH_WARMUP = 11


@dataclass
class Data:
    """Datasets and loaders of a run, with the numbers the schedule and the log need."""

    name: str  # MLPerf log dataset name: "coco2017" or "synthetic"
    train_set: object
    val_set: object
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    num_classes: int
    iters_per_epoch: int
    global_batch: int
    warmup_iters: int
    pipeline: object | None = None  # data.gpu_pipeline.DevicePipeline when input_pipeline=device

    def train_batches(self):
        """This epoch's training batches: the loader's, or device batches built from its bytes.

        Either way the position lives in ``train_loader.sampler`` (a `ShardedSampler`), which
        checkpoints save and resume restores.
        """
        if self.pipeline is None:
            return self.train_loader
        from ssdbench.data.gpu_pipeline import device_batches

        return device_batches(self.train_loader, self.pipeline)


def data_root(cfg: TrainConfig) -> Path:
    """`--data`, or the embedded synthetic dataset (generated into the cache on first use)."""
    if cfg.data:
        root = Path(cfg.data)
        if not root.is_dir():
            raise FileNotFoundError(f"--data: no dataset folder at {root}")
        return root
    from ssdbench.data.synth import default_dataset

    return default_dataset()


def dataset_name(cfg: TrainConfig, root: Path, train_set) -> str:
    """`--dataset-name`, else detected: "coco2017" when the training annotation file is COCO's
    (``instances_train2017.json`` with 80 categories; MLPerf's closed division needs this name),
    "synthetic" for the embedded dataset, else the data folder's name (logged as open division)."""
    if cfg.dataset_name:
        return cfg.dataset_name
    if (root / "ssdbench_synth.json").is_file():
        return "synthetic"
    ann = Path(train_set.ann_file)
    if ann.name == "instances_train2017.json" and train_set.num_classes - 1 == COCO_CATEGORIES:
        return "coco2017"
    return root.resolve().name or "dataset"


def build_data(cfg: TrainConfig, launch: Launch) -> Data:
    from ssdbench.data.coco import CocoDetection
    from ssdbench.data.loader import InputSettings, Shard, build_loader
    from ssdbench.model.specs import get_spec

    root = data_root(cfg)
    # crowd boxes are training targets unless exclude_crowd (the reference: utils.py:545-550)
    train_set = CocoDetection(root, cfg.train_split, exclude_crowd=cfg.exclude_crowd)
    val_set = CocoDetection(root, cfg.val_split)
    if train_set.num_classes != val_set.num_classes:
        raise ValueError(f"{root}: train has {train_set.num_classes - 1} categories, val {val_set.num_classes - 1}")
    size = get_spec(cfg.model).input_size
    # one shard and seed, input size and target count for the training and the validation input
    shard = Shard(launch.rank, launch.world_size, cfg.seed)
    inputs = InputSettings(size, cfg.max_objects, cfg.max_samples, shard)
    train_loader, pipeline = _train_input(cfg, launch, train_set, inputs)
    val_loader = build_loader(val_set, cfg.eval_batch_size or cfg.batch_size, train=False, inputs=inputs,
                              workers=cfg.workers)
    iters = len(train_loader)
    if iters == 0:
        raise ValueError(f"{root}: {len(train_set)} training images are fewer than one global batch "
                         f"({cfg.global_batch(launch.world_size)})")
    if cfg.steps_per_epoch:
        iters = min(iters, cfg.steps_per_epoch)
    return Data(dataset_name(cfg, root, train_set), train_set, val_set, train_loader, val_loader,
                train_set.num_classes, iters, cfg.global_batch(launch.world_size),
                cfg.warmup_iters(len(train_set), cfg.global_batch(launch.world_size)),
                pipeline)


def _train_input(cfg: TrainConfig, launch: Launch, train_set, inputs: InputSettings):
    """(training loader, DevicePipeline or None) for ``cfg.input_pipeline`` (cpu | device).

    device: the loader's workers only read JPEG bytes; `DevicePipeline` decodes and augments on
    the device with the CPU loader's per-sample draws (same seed), and encodes targets there too
    when the fast step will consume them.
    """
    from ssdbench.data.loader import build_loader

    if cfg.input_pipeline != "device":
        return build_loader(train_set, cfg.batch_size, train=True, inputs=inputs, workers=cfg.workers,
                            drop_last=cfg.drop_last), None
    from ssdbench.data.gpu_pipeline import DevicePipeline, build_byte_loader
    from ssdbench.model.encoder import Encoder

    loader = build_byte_loader(train_set, cfg.batch_size, True, inputs, cfg.workers, drop_last=cfg.drop_last)
    encoder = Encoder(cfg.model) if cfg.step == "fast" else None
    pipeline = DevicePipeline(inputs, launch.device, train=True, encoder=encoder)
    return loader, pipeline


def build_network(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    from ssdbench.model.ssd import build_model

    if cfg.backbone_weights is None and cfg.model != "ssd128_mini":
        warnings.warn("no --backbone-weights: training from a random trunk; the MLPerf quality target "
                      "(0.23 mAP) assumes torchvision's ImageNet resnet34 (benchmark.md §6)", stacklevel=2)
    return build_model(cfg.model, num_classes=num_classes, backbone_weights=cfg.backbone_weights,
                       allow_pickle=cfg.allow_pickle)


def build_parts(cfg: TrainConfig, launch: Launch, num_classes: int,
                iters_per_epoch: int, warmup_iters: int) -> tuple[StepParts, torch.nn.Module]:
    """(StepParts, the bare network). The step's model may be DDP-wrapped and compiled."""
    from ssdbench.model.encoder import Encoder

    device = launch.device
    net = build_network(cfg, num_classes)
    net = convert_sync_bn(net, bn_group(cfg.bn_span, launch.world_size), device)
    net = net.to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = net
    if launch.distributed:
        # broadcast_buffers=False: each rank keeps its own BN running stats; they are averaged
        # before every eval (benchmark.md §6) instead of being overwritten by rank 0's at every step.
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    fast = cfg.step == "fast"
    if cfg.compile and not fast:  # the fast step compiles encode + forward + loss itself
        model = torch.compile(model)
    optimizer = _optimizer(cfg, net, launch)
    schedule = MLPerfSchedule(iters_per_epoch, warmup_iters, cfg.warmup_factor,
                              cfg.decay_epochs, cfg.decay_factor, plateau=not cfg.restore_lr_after_warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype = AMP_DTYPES[cfg.precision]
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    parts = StepParts(model, optimizer, scheduler, Encoder(cfg.model), device, scaler, amp_dtype,
                      bool(cfg.channels_last))
    if fast:
        from ssdbench.train.fast_step import FastStep

        warmup = DDP_GRAPH_WARMUP if launch.distributed else 3
        parts.fast_step = FastStep(parts, cfg.compile, bool(cfg.cuda_graph), warmup)
    return parts, net


def _optimizer(cfg: TrainConfig, net: torch.nn.Module, launch: Launch) -> torch.optim.SGD:
    """benchmark.md §6 SGD. step=fast: `make_sgd` (fused, lr a device tensor the scheduler fills in place,
    so a captured CUDA graph sees every update); plain: a float lr."""
    lr = cfg.base_lr(launch.world_size)
    if cfg.step == "fast":
        from ssdbench.train.fast_step import make_sgd

        return make_sgd(net.parameters(), lr, cfg.momentum, cfg.weight_decay, launch.device)
    return torch.optim.SGD(net.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def set_determinism(cfg: TrainConfig) -> None:
    """``--deterministic``: deterministic kernels (bit-reproducible CPU runs); else cuDNN autotuning."""
    if cfg.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # CUDA determinism needs it
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


# ---------------------------------------------------------------- the learning-rate schedule
class MLPerfSchedule:
    """Learning-rate multiplier at global iteration `it` (0-based), for `LambdaLR`.

    Decay: x decay_factor for every boundary b with epoch >= b, epoch = it // iters_per_epoch
    counted from 0 (b = 40 starts after 40 completed epochs). Warmup (it < W): that times
    1 - (W - it) / (W x 2^f), f = warmup_factor (f = 0: linear from 0). After the warmup, with
    ``plateau``, the value of iteration W - 1 stays until an iteration at which a decay epoch
    starts; from there on the decayed base. A plain object (not a lambda) so that
    `LambdaLR.state_dict()` can save it.
    """

    def __init__(self, iters_per_epoch: int, warmup_iters: int, warmup_factor: float = 0.0,
                 decay_epochs=(40, 50), decay_factor: float = 0.1, plateau: bool = True):
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.decay_factor = float(decay_factor)
        self.plateau = bool(plateau)

    def _decay(self, it: int) -> float:
        epoch = it // self.iters_per_epoch
        return self.decay_factor ** sum(epoch >= b for b in self.decay_epochs)

    def _warm(self, it: int) -> float:
        w = self.warmup_iters
        return 1.0 - (w - it) / (w * 2.0 ** self.warmup_factor)

    def __call__(self, it: int) -> float:
        w = self.warmup_iters
        if it < w:
            return self._decay(it) * self._warm(it)
        if self.plateau and w > 0:
            # the last decay epoch started at or before `it`, at iteration b x iters_per_epoch
            starts = [b * self.iters_per_epoch for b in self.decay_epochs if b * self.iters_per_epoch <= it]
            if not starts or max(starts) < w:  # no decay since the warmup: its last lr stays
                return self._decay(w - 1) * self._warm(w - 1)
        return self._decay(it)


# ---------------------------------------------------------------- synchronised BatchNorm
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
