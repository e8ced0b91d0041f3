"""Training checkpoints, in one place: what a checkpoint holds, its files, and resuming from it.

Layout under ``<run>/checkpoints/``: ``epoch_0003.pt`` after each epoch, ``step_0000123.pt`` when a
run is interrupted mid-epoch (SIGTERM/SIGINT), ``last`` (a text file holding the newest file's
name) and ``last.pt`` (a symbolic link to it, for ``ssdbench eval --weights``). Every file is
written through `ssdbench.io.atomic_write` (a temporary name, flushed to disk, then `os.replace`), so
a crash never leaves a truncated checkpoint and ``last`` always names a complete file; a failed
write (full disk) raises `ssdbench.io.WriteError` naming the file and the cause, removes the
temporary file and leaves the previous checkpoints and ``last`` as they were. The `KEEP` newest
files besides the one just written are kept; older ones are deleted.

Resuming (`find_resume`) takes the file ``last`` names, else the newest checkpoint file, and if
that one does not load (damaged on disk, copied half), says so by name and falls back to the
next newest: a run folder whose ``last`` pointer was deleted still resumes.

A checkpoint is a dict (`training_payload`): ``model`` (the bare network's state dict;
`model.weights` reads it), ``optimizer``, ``scheduler`` (LambdaLR state), ``scaler`` (GradScaler
state or None), ``state`` (`train.loop.TrainState` fields), ``sampler`` (`ShardedSampler` state:
epoch and position), ``rng`` (one entry per rank: torch, CUDA, numpy and Python generator
states), ``config`` (`TrainConfig.to_dict()`), ``world_size``, ``categories`` (the training set's
category ids in label order, or None). `restore_training` puts all of it
back; `load_optimizer_state` keeps a fast step's device learning-rate tensor while doing so.

Resuming with other settings than the run started with is refused by name (`check_changes`), or,
accepted (``--accept-changes``), applied truthfully: `hyperparameters` snapshots the freshly
built optimizer and schedule values before the restore and `restore_hyperparameters` puts them
back afterwards (see `resume_changes` for which keys are compared).
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ssdbench import dist as D
from ssdbench.io import atomic_write, atomic_write_text
from ssdbench.model.weights import WeightsError, load_file, unreadable_reason
from ssdbench.train.config import TrainConfig
from ssdbench.train.loop import StepParts, TrainState

KEEP = 2  # checkpoint files kept besides the newest (older ones are deleted)
_KERNEL_FLAGS = ("fused", "foreach", "capturable")  # how this run steps, not state to restore


# ---------------------------------------------------------------- files
def save_checkpoint(folder: str | Path, name: str, payload: dict) -> Path:
    """Write `payload` to ``folder/name`` atomically, point ``last`` at it, prune old files."""
    folder = Path(folder)
    path = atomic_write(folder / name, lambda tmp: _write_payload(payload, tmp))
    _point_last(folder, name)
    _prune(folder, name)
    return path


def _write_payload(payload: dict, tmp: Path) -> None:
    """torch.save into ``tmp`` and flush it to disk. torch reports a failed write as RuntimeError
    ("unexpected pos ..."); the OSError behind it (ENOSPC, EFBIG, EROFS) is raised instead."""
    with open(tmp, "wb") as f:
        try:
            torch.save(payload, f)
        except RuntimeError as exc:
            cause = _os_error(exc)
            if cause is None:
                raise
            raise cause from None
        f.flush()
        os.fsync(f.fileno())


def _os_error(exc: BaseException | None) -> OSError | None:
    """The first OSError in ``exc``'s chain of causes, or None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _point_last(folder: Path, name: str) -> None:
    atomic_write_text(folder / "last", name + "\n")
    try:
        atomic_write(folder / "last.pt", lambda tmp: os.symlink(name, tmp))
    except OSError:  # file systems without symlinks: the text pointer is enough
        pass


def _prune(folder: Path, keep_name: str) -> None:
    """Delete all but the `KEEP` newest checkpoint files besides ``keep_name`` (by mtime)."""
    files = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime)
    files = [p for p in files if not p.is_symlink() and p.name != keep_name and not p.name.startswith(".")]
    for old in files[:-KEEP] if KEEP else files:
        old.unlink(missing_ok=True)


def last_checkpoint(folder: str | Path) -> Path | None:
    """The file ``folder/last`` names, or None when there is no complete checkpoint."""
    pointer = Path(folder) / "last"
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    return path if path.is_file() else None


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The checkpoint files of ``folder``, the one ``last`` names first, then newest first."""
    folder = Path(folder)
    files = sorted((p for p in folder.glob("*.pt") if p.is_file() and not p.is_symlink()
                    and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime, reverse=True)
    last = last_checkpoint(folder)
    return ([last] if last in files else []) + [p for p in files if p != last]


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain Python objects only);
    ValueError naming the file when it is damaged."""
    path = Path(path)
    try:  # only tensors and plain Python values inside: safe to read with weights_only=True
        return load_file(path, allow_pickle=None, what="checkpoint")
    except FileNotFoundError:  # "checkpoint not found: PATH"
        raise
    except WeightsError as exc:  # "PATH: why"
        raise ValueError(f"checkpoint {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any other failure too means the file is unusable
        raise ValueError(f"checkpoint {path}: {unreadable_reason(path, exc)}") from None


def load_training_checkpoint(path: str | Path) -> dict:
    """`load_checkpoint` of a file to resume: ValueError also when it is no training checkpoint."""
    payload = load_checkpoint(path)
    missing = [k for k in ("model", "state", "sampler", "rng") if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise ValueError(f"checkpoint {path} is not a training checkpoint of ssdbench (no {', '.join(missing)})")
    return payload


def find_resume(resume: str, run_dir: str | Path) -> tuple[Path, dict] | None:
    """(checkpoint file, its payload) a run resumes from, for ``TrainConfig.resume``; None: fresh.

    ``never``: None. ``auto`` or a run folder: the newest checkpoint of ``run_dir`` that loads
    (`checkpoint_files` order; a damaged one is named on stderr and skipped; ValueError when
    checkpoint files exist and none loads). Otherwise ``resume`` names a checkpoint file, which
    must exist and load.
    """
    if resume == "never":
        return None
    if resume == "auto" or Path(resume).is_dir():
        return _newest_good(Path(run_dir) / "checkpoints")
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint or run folder at {path}")
    return path, load_training_checkpoint(path)


def _newest_good(folder: Path) -> tuple[Path, dict] | None:
    files, damaged = checkpoint_files(folder), []
    for path in files:
        try:
            payload = load_training_checkpoint(path)
        except ValueError as exc:
            damaged.append(str(exc))
            print(f"warning: {exc}; trying the previous checkpoint", file=sys.stderr, flush=True)
            continue
        if damaged:
            print(f"resuming from {path.name}, the newest checkpoint that loads", file=sys.stderr, flush=True)
        return path, payload
    if damaged:
        raise ValueError(f"no checkpoint of {folder} loads ({len(damaged)} damaged: {damaged[0]}); "
                         "start over with --no-resume or another --out")
    return None


# ---------------------------------------------------------------- payload
@dataclass(frozen=True)
class RunObjects:
    """The live objects of a run that a training checkpoint is taken of."""

    net: torch.nn.Module  # the bare network (not DDP)
    parts: StepParts
    state: TrainState
    sampler: object  # the training `ShardedSampler`, saved at state.epoch_step x cfg.batch_size samples
    cfg: TrainConfig
    categories: list | None = None  # the training set's category ids in label order


def training_payload(run: RunObjects, world_size: int, rngs: list[dict]) -> dict:
    """The checkpoint dict (keys in the module docstring) of ``run``; ``rngs``: every rank's
    `rng_state()`, in rank order."""
    net, parts, state, sampler, cfg = run.net, run.parts, run.state, run.sampler, run.cfg
    return {
        "model": net.state_dict(), "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        "state": asdict(state), "sampler": sampler.state_dict(consumed=state.epoch_step * cfg.batch_size),
        "rng": rngs, "config": cfg.to_dict(), "world_size": world_size,
        # the training set's category ids in label order (label k = categories[k - 1]): `eval`
        # warns when a dataset orders its categories otherwise (every label would be misread)
        "categories": run.categories,
    }


def save_training(folder: str | Path, name: str, run: RunObjects, launch: D.Launch) -> Path | None:
    """Checkpoint ``run`` as ``folder/name``. Collective: every rank calls it and contributes its
    generator states; rank 0 writes. Returns the file on rank 0, None elsewhere."""
    rngs = D.all_gather_object(rng_state())
    if not launch.is_main:
        return None
    return save_checkpoint(folder, name, training_payload(run, launch.world_size, rngs))


# ---------------------------------------------------------------- restore
def resume_state(payload: dict | None) -> TrainState:
    """The progress counters of a checkpoint (fresh ones without), ``segments`` counting this start."""
    state = TrainState(**payload["state"]) if payload else TrainState()
    state.segments += 1
    return state


def restore_training(payload: dict, net: torch.nn.Module, parts: StepParts, sampler, rank: int,
                     world_size: int, source: str | Path = "checkpoint") -> None:
    """Put a `training_payload` back: weights, optimizer (tensor lr kept), scheduler, scaler,
    sampler position and this rank's generator states. ``source`` names the file in errors.

    Raises ValueError when the checkpoint was written with another number of ranks (the sampler
    shards and per-rank generator states would not match).
    """
    if payload.get("world_size") != world_size:
        raise ValueError(f"checkpoint {source} was written with {payload.get('world_size')} "
                         f"ranks, this run has {world_size}")
    net.load_state_dict(payload["model"])
    load_optimizer_state(parts.optimizer, payload["optimizer"])  # keeps a fast step's device lr tensor
    parts.scheduler.load_state_dict(payload["scheduler"])
    if parts.scaler is not None and payload.get("scaler"):
        parts.scaler.load_state_dict(payload["scaler"])
    sampler.load_state_dict(payload["sampler"])
    set_rng_state(payload["rng"][rank])


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict` that keeps tensor learning rates in their original tensors.

    Loading replaces each group's ``lr`` with the checkpoint's (a CPU tensor after
    ``map_location="cpu"``); a fused step and a captured CUDA graph read the original device
    tensor, so its value is copied in and the original object is put back. A float lr stays a
    float (a step=fast checkpoint resumed with step=plain). The kernel flags (`_KERNEL_FLAGS`)
    stay this run's.
    """
    before = [{k: g[k] for k in ("lr", *_KERNEL_FLAGS) if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, old in zip(optimizer.param_groups, before):
        group.update({k: old[k] for k in _KERNEL_FLAGS if k in old})
        lr = old["lr"]
        if isinstance(lr, torch.Tensor):
            with torch.no_grad():
                lr.copy_(torch.as_tensor(group["lr"], dtype=lr.dtype))
            group["lr"] = lr
        else:
            group["lr"] = float(group["lr"])


def rng_state() -> dict:
    """This process's generator states (torch CPU, CUDA when used, numpy, Python)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array as a tensor: checkpoints stay readable with torch.load(weights_only=True)
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- a resumed config's changes
# A checkpoint records the config it was written with (``payload["config"]``). Accepted changes are
# really applied: the restored optimizer and scheduler would otherwise keep the checkpoint's learning
# rate, momentum, weight decay and schedule (`LambdaLR.load_state_dict` restores the `MLPerfSchedule`
# fields). config.json then records what runs from there on, and metrics.jsonl gets a
# ``{"kind": "resume", "step", "changes"}`` record saying from which step.
# Not compared (`OPERATIONAL`): keys that change how the run is executed or where it writes, not what
# it computes (the run folder, data-loader workers, log interval, timeouts, device names: a device
# change that alters the maths shows up as step / precision / channels_last). `FIXED` keys cannot
# change on resume at all: the weights or the sampler position would not fit.
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
