"""Builders for a training run: datasets and loaders, network, optimiser, schedule, AMP, DDP."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import TrainConfig
from .launch import Launch, bn_group, convert_sync_bn
from .train import MLPerfSchedule, StepParts

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def data_root(cfg: TrainConfig) -> Path:
    """`--data`, or the embedded synthetic dataset (generated into the cache on first use)."""
    if cfg.data:
        root = Path(cfg.data)
        if not root.is_dir():
            raise FileNotFoundError(f"--data: no dataset folder at {root}")
        return root
    from ssdbench.data.synth import default_dataset

    return default_dataset()


def dataset_name(cfg: TrainConfig, root: Path) -> str:
    if cfg.dataset_name:
        return cfg.dataset_name
    return "synthetic" if (root / "ssdbench_synth.json").is_file() else "coco2017"


def build_data(cfg: TrainConfig, launch: Launch) -> Data:
    from ssdbench.data.coco import CocoDetection
    from ssdbench.data.loader import build_loader
    from ssdbench.model.specs import get_spec

    root = data_root(cfg)
    train_set, val_set = CocoDetection(root, cfg.train_split), CocoDetection(root, cfg.val_split)
    if train_set.num_classes != val_set.num_classes:
        raise ValueError(f"{root}: train has {train_set.num_classes - 1} categories, val {val_set.num_classes - 1}")
    size = get_spec(cfg.model).input_size
    common = dict(size=size, rank=launch.rank, world_size=launch.world_size, seed=cfg.seed,
                  workers=cfg.workers, max_objects=cfg.max_objects)
    train_loader = build_loader(train_set, cfg.batch_size, train=True, max_samples=cfg.max_samples, **common)
    val_loader = build_loader(val_set, cfg.eval_batch_size or cfg.batch_size, train=False, **common)
    iters = len(train_loader)
    if iters == 0:
        raise ValueError(f"{root}: {len(train_set)} training images are fewer than one global batch "
                         f"({cfg.global_batch(launch.world_size)})")
    if cfg.steps_per_epoch:
        iters = min(iters, cfg.steps_per_epoch)
    return Data(dataset_name(cfg, root), train_set, val_set, train_loader, val_loader, train_set.num_classes,
                iters, cfg.global_batch(launch.world_size), cfg.warmup_iters(iters))


def build_network(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    from ssdbench.model.ssd import build_model

    if cfg.backbone_weights is None and cfg.model != "ssd128_mini":
        warnings.warn("no --backbone-weights: training from a random trunk; the MLPerf quality target "
                      "(0.23 mAP) assumes torchvision's ImageNet resnet34 (SPEC §6)", stacklevel=2)
    return build_model(cfg.model, num_classes=num_classes, backbone_weights=cfg.backbone_weights)


def build_parts(cfg: TrainConfig, launch: Launch, num_classes: int,
                iters_per_epoch: int) -> tuple[StepParts, torch.nn.Module]:
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
        # before every eval (SPEC §6) instead of being overwritten by rank 0's at every step.
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.base_lr(launch.world_size),
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    schedule = MLPerfSchedule(iters_per_epoch, cfg.warmup_iters(iters_per_epoch), cfg.warmup_factor,
                              cfg.decay_epochs, cfg.decay_factor)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    amp_dtype = AMP_DTYPES[cfg.precision]
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    parts = StepParts(model, optimizer, scheduler, Encoder(cfg.model), device, scaler, amp_dtype,
                      cfg.channels_last)
    return parts, net


def summary_line(state, cfg: TrainConfig) -> str:
    """One line: the MLPerf score of the run."""
    text = f"time to train {state.train_time_s / 60:.2f} min, {state.epoch} epochs"
    if state.eval_history:
        best = state.eval_history[-1]
        text += f", last mAP {best['map']:.4f} at epoch {best['epoch']}"
    if cfg.target_map is not None:
        text += f", target {cfg.target_map} " + ("reached" if state.reached_target else "not reached")
    return text
