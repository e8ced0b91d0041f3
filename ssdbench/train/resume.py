"""Resuming with other settings than the run started with: refused by name, or applied truthfully.

A checkpoint records the config it was written with (``payload["config"]``). When a resumed
command resolves to different values, `resume_changes` lists them and `check_changes` refuses
the resume, naming each key with its old and new value, unless the caller accepts them
(``ssdbench train --accept-changes``). Accepted changes are then really applied: the restored
optimizer and scheduler would otherwise keep the checkpoint's learning rate, momentum, weight
decay and schedule (`LambdaLR.load_state_dict` restores the `MLPerfSchedule` fields), so
`hyperparameters` snapshots the freshly built values before the restore and
`restore_hyperparameters` puts them back afterwards, with the learning rate the new schedule gives
at the current step. config.json then records what runs from there on, and metrics.jsonl gets a
``{"kind": "resume", "step", "changes"}`` record saying from which step.

Not compared (`OPERATIONAL`): keys that change how the run is executed or where it writes, not
what it computes (the run folder, data-loader workers, log interval, timeouts, device names:
a device change that alters the maths shows up as step / precision / channels_last).
`FIXED` keys cannot change on resume at all: the weights or the sampler position would not fit.
"""

from __future__ import annotations

import torch

from ssdbench.train.config import TrainConfig

OPERATIONAL = frozenset({
    "preset", "out", "resume", "workers", "log_every", "dist_timeout_s", "device", "eval_batch_size",
    "extra", "allow_pickle", "submission_org", "submission_platform", "submission_status",
    # used only to initialise a fresh run; a resumed run takes every weight from its checkpoint
    "backbone_weights",
    "tensorboard",  # what is logged, not how the run trains
})  # fmt: skip
FIXED = ("model", "batch_size")  # the network's shapes; the sampler's position counts batches
_GROUP_KEYS = ("initial_lr", "momentum", "weight_decay", "dampening", "nesterov")


def _plain(value):
    """Lists as tuples (a JSON or torch round trip may turn one into the other)."""
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def resume_changes(saved: dict, cfg: TrainConfig) -> dict[str, tuple]:
    """{key: (checkpoint's value, this run's value)} for every compared key that differs.

    Keys the checkpoint does not record (written by an older version) are not compared.
    """
    changes = {}
    for key, value in cfg.to_dict().items():
        if key in OPERATIONAL or key not in saved:
            continue
        if _plain(saved[key]) != _plain(value):
            changes[key] = (saved[key], value)
    return changes


def describe_changes(changes: dict[str, tuple]) -> str:
    """``lr 0.02 -> 1000000.0, epochs 2 -> 3``."""
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def check_changes(changes: dict[str, tuple], accept: bool, checkpoint) -> None:
    """ValueError naming the changed keys unless ``accept``; FIXED keys are refused always."""
    if not changes:
        return
    fixed = {k: v for k, v in changes.items() if k in FIXED}
    if fixed:
        raise ValueError(f"{checkpoint} cannot be resumed with a changed {describe_changes(fixed)}; "
                         "start a new run (--no-resume or another --out)")
    if not accept:
        raise ValueError(f"{checkpoint} was trained with other settings: {describe_changes(changes)}; "
                         "pass --accept-changes to apply them from this step on, or rerun with the "
                         "original values (--no-resume or another --out starts over)")


def hyperparameters(parts) -> dict:
    """The optimizer and schedule values of freshly built `StepParts`, for `restore_hyperparameters`."""
    scheduler = parts.scheduler
    return {
        "groups": [{k: g[k] for k in _GROUP_KEYS if k in g} for g in parts.optimizer.param_groups],
        "base_lrs": list(scheduler.base_lrs),
        "lambdas": [dict(vars(fn)) for fn in scheduler.lr_lambdas],
    }


def restore_hyperparameters(parts, fresh: dict) -> list[float]:
    """Put `hyperparameters` back after a restore; set each group's lr to the new schedule's value
    at the restored step (a tensor lr is filled in place). Returns the learning rates set."""
    scheduler, optimizer = parts.scheduler, parts.optimizer
    scheduler.base_lrs = list(fresh["base_lrs"])
    for fn, values in zip(scheduler.lr_lambdas, fresh["lambdas"]):
        vars(fn).update(values)
    rates = []
    for group, values, base, fn in zip(optimizer.param_groups, fresh["groups"], scheduler.base_lrs,
                                       scheduler.lr_lambdas):
        group.update(values)
        rate = base * fn(scheduler.last_epoch)
        if isinstance(group["lr"], torch.Tensor):
            with torch.no_grad():
                group["lr"].fill_(rate)
        else:
            group["lr"] = rate
        rates.append(float(rate))
    scheduler._last_lr = list(rates)  # what get_last_lr() reports
    return rates
