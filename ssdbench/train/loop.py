"""The training loop proper: one step, one epoch, and the counters a checkpoint saves.

Everything around it (building parts, resume, eval, logs) lives in `train.trainer`; this file
only moves batches through the network and the optimiser. Batches are dicts with ``images``
(N, 3, S, S) float, ``boxes`` (N, M, 4) ltrb normalised and ``labels`` (N, M) int64 (0 = padding).
The learning-rate schedule the scheduler follows is `train.build.MLPerfSchedule`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ssdbench.model.loss import ssd_loss
from ssdbench.precision import autocast


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step."""


@dataclass
class StepParts:
    """What one training step touches. `model` may be DDP-wrapped and/or compiled."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    encoder: object  # ssdbench.model.encoder.Encoder: (boxes, labels) -> (loc_targets, labels)
    device: torch.device
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    amp_dtype: torch.dtype | None = None  # None = fp32
    channels_last: bool = False
    loss_fn: Callable = ssd_loss  # (locs, scores, loc_targets, labels) -> scalar, benchmark.md §3
    # `train.fast_step.FastStep` (config step=fast): called instead of `train_step`; it owns the
    # same model, optimizer (tensor lr), scheduler and loss_fn. None = the plain step.
    fast_step: Callable | None = None


@dataclass
class TrainState:
    """Progress counters saved in checkpoints. `epoch` = completed epochs."""

    epoch: int = 0
    step: int = 0  # global optimiser steps
    epoch_step: int = 0  # steps done inside the current (unfinished) epoch
    train_time_s: float = 0.0  # run_start..now summed over resumed segments (MLPerf clock)
    eval_history: list = field(default_factory=list)  # [{"epoch", "map", "stats"}]
    reached_target: bool = False
    segments: int = 0  # how many times this run was started (1 = never resumed)
    # Evaluations whose COCO score was still being computed when the checkpoint was written
    # (`train.async_eval`): [{"epoch": int, "results": float64 tensor (K, 7)}]; scored on resume.
    pending_evals: list = field(default_factory=list)
    eval_wait_s: float = 0.0  # seconds training waited for evaluation (inference, BN averaging, scores)
    score_wait_s: float = 0.0  # ... of which waiting for COCO scores (sync: all of it; async: the last)
    score_s: float = 0.0  # seconds the recorded COCO scores took to compute (in the background or not)


def train_step(parts: StepParts, batch: dict) -> torch.Tensor:
    """One optimiser step on `batch`; returns the detached loss (a device scalar, no host sync)."""
    images = batch["images"].to(parts.device, non_blocking=True)
    if parts.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    boxes = batch["boxes"].to(parts.device, non_blocking=True)
    labels = batch["labels"].to(parts.device, non_blocking=True)
    loc_targets, box_labels = parts.encoder(boxes, labels)  # (N, B, 4), (N, B)
    with autocast(parts.device, parts.amp_dtype):
        locs, scores = parts.model(images)
    loss = parts.loss_fn(locs, scores, loc_targets, box_labels)  # ssd_loss: float32 under autocast
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        loss.backward()
        parts.optimizer.step()
    parts.scheduler.step()
    return loss.detach()


def step_function(parts: StepParts) -> Callable[[dict], torch.Tensor]:
    """What `train_one_epoch` calls per batch: ``parts.fast_step``, else `train_step` on `parts`.

    A fast step computes its own loss; one whose ``loss_fn`` is not ``parts.loss_fn`` would
    silently train on another loss, so it is refused (ValueError).
    """
    if parts.fast_step is None:
        return lambda batch: train_step(parts, batch)
    fast_loss = getattr(parts.fast_step, "loss_fn", None)
    if fast_loss != parts.loss_fn:
        raise ValueError(f"StepParts.loss_fn is {_name(parts.loss_fn)} but the fast step computes "
                         f"{_name(fast_loss)}; build FastStep(parts)")
    return parts.fast_step


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _window_loss(losses: list[torch.Tensor], first_step: int, flags: tuple[bool, bool],
                 reduce) -> tuple[float, tuple[bool, bool]]:
    """(mean loss of the window over all ranks, (any rank asked to stop, any rank saw the
    target reached)), in one all-reduce.

    One host sync per window (not per step). Raises NonFiniteLossError naming the first bad step
    on every rank when any rank saw a NaN/inf loss, so all ranks stop together.
    """
    values = torch.stack(losses).float().cpu()
    finite = torch.isfinite(values)
    bad_local = -1 if bool(finite.all()) else int((~finite).nonzero()[0])
    total, count, bad_any, stop_any, target_any = reduce(
        [float(values[finite].sum()), float(len(values)), float(bad_local >= 0), *map(float, flags)])
    if bad_any:
        where = (f"step {first_step + bad_local} (loss {values[bad_local].item()})" if bad_local >= 0
                 else f"a step in {first_step}..{first_step + len(values) - 1} on another rank")
        raise NonFiniteLossError(f"non-finite loss at {where}; stopping")
    return total / max(count, 1.0), (stop_any > 0, target_any > 0)


SIGNAL, TARGET = "signal", "target"  # why `train_one_epoch` stopped early ("" = the epoch ended)


def _never() -> bool:
    return False


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class EpochHooks:
    """What `train_one_epoch` calls back: ``reduce`` sums host values over the ranks (identity
    alone), ``on_window(record)`` gets each logged window, ``should_stop()`` (a signal) and
    ``target_reached()`` (an evaluation scored in the background reached the quality target) are
    polled, ``heartbeat()`` is called after every step (`dist.Watchdog.beat`)."""

    reduce: Callable[[list[float]], list[float]]
    on_window: Callable[[dict], None] | None = None
    should_stop: Callable[[], bool] = _never
    heartbeat: Callable[[], None] = _nothing
    target_reached: Callable[[], bool] = _never


def train_one_epoch(parts: StepParts, loader, state: TrainState, log_every: int, hooks: EpochHooks,
                    max_steps: int | None = None) -> str:
    """Train until the loader ends (or `max_steps` steps this epoch); returns why it stopped early:
    `SIGNAL` (``hooks.should_stop()``), `TARGET` (``hooks.target_reached()``) or "" (the epoch ended).

    `loader` yields the epoch's remaining batches (resume already skipped the done ones).
    Every `log_every` steps ``hooks.on_window(record)`` gets {step, epoch, loss, lr, img_s, time},
    the loss averaged over the window and the ranks. ``should_stop()`` and ``target_reached()`` are
    polled at window ends (all ranks agree through ``hooks.reduce``, so every rank stops at the
    same step) and after every step when running alone.
    """
    parts.model.train()
    step = step_function(parts)
    losses, images, t0 = [], 0, time.perf_counter()
    alone = not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1)

    def polled() -> tuple[bool, bool]:
        return hooks.should_stop(), hooks.target_reached()

    for batch in loader:
        if max_steps is not None and state.epoch_step >= max_steps:
            break
        if batch["images"].shape[0] == 0:  # every image of it was a bad sample (each one warned)
            _skip_empty_batch(state, alone)
            continue
        losses.append(step(batch))  # a device tensor: read once per window, not per step
        images += batch["images"].shape[0]
        state.step += 1
        state.epoch_step += 1
        hooks.heartbeat()
        if len(losses) == log_every:
            flags = _end_window(parts, state, losses, images, t0, hooks, polled)
            losses, images, t0 = [], 0, time.perf_counter()
            if any(flags):
                return _reason(flags)
        elif alone and any(polled()):
            break
    if losses:
        _end_window(parts, state, losses, images, t0, hooks, lambda: (False, False))
    return _reason(polled()) if alone else ""


def _skip_empty_batch(state: TrainState, alone: bool) -> None:
    """A batch without a readable image: no step (the network cannot run on zero images); its
    place in the epoch counts as consumed, so a resume does not read it again. Under several
    ranks the others would wait in the gradient all-reduce: an error naming it instead."""
    where = f"batch {state.epoch_step + 1} of epoch {state.epoch + 1}"
    if not alone:
        raise ValueError(f"every image of {where} on this rank was a bad sample; run `ssdbench data check`")
    state.epoch_step += 1
    warnings.warn(f"skipped {where}: every image in it was a bad sample (no training step)", RuntimeWarning,
                  stacklevel=3)


def _reason(flags: tuple[bool, bool]) -> str:
    stop, target = flags
    return SIGNAL if stop else TARGET if target else ""


def _end_window(parts, state, losses, images, t0, hooks: EpochHooks, polled) -> tuple[bool, bool]:
    """Log one window; returns (any rank asked to stop, any rank saw the target reached)."""
    first_step = state.step - len(losses) + 1  # steps are numbered from 1 in messages and logs
    loss, flags = _window_loss(losses, first_step, polled(), hooks.reduce)
    if hooks.on_window is not None:
        elapsed = max(time.perf_counter() - t0, 1e-9)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        lr = float(parts.optimizer.param_groups[0]["lr"])  # a device tensor with step=fast: one read
        hooks.on_window({"step": state.step, "epoch": state.epoch + 1, "loss": loss, "lr": lr,
                   "img_s": images * world / elapsed})
    return flags
