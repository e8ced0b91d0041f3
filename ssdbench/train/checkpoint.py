"""Training checkpoints: written atomically, found again through a `last` pointer.

Layout under ``<run>/checkpoints/``: ``epoch_0003.pt`` after each epoch, ``step_000123.pt`` when a
run is interrupted mid-epoch (SIGTERM/SIGINT), ``last`` (a text file holding the newest file's
name) and ``last.pt`` (a symbolic link to it, for ``ssdbench eval --weights``). Each file is first
written to a temporary name and then renamed (`os.replace`), so a crash never leaves a truncated
checkpoint and ``last`` always names a complete file.

A checkpoint is a dict: ``model`` (our state dict; `model.weights` reads it), ``optimizer``,
``scheduler``, ``scaler``, ``state`` (TrainState fields), ``sampler``, ``rng`` (one entry per rank:
torch, CUDA, numpy and Python generator states), ``config``, ``world_size``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

KEEP = 2  # checkpoint files kept besides the newest (older ones are deleted)


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _point_last(folder: Path, name: str) -> None:
    _atomic_write_bytes(folder / "last", lambda p: p.write_text(name + "\n"))
    link_tmp = folder / f".last.pt.tmp-{os.getpid()}"
    try:
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        os.symlink(name, link_tmp)
        os.replace(link_tmp, folder / "last.pt")
    except OSError:  # file systems without symlinks: the text pointer is enough
        if link_tmp.is_symlink():
            link_tmp.unlink()


def _prune(folder: Path, keep_name: str) -> None:
    files = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime)
    files = [p for p in files if not p.is_symlink() and p.name != keep_name]
    for old in files[:-KEEP] if KEEP else files:
        old.unlink(missing_ok=True)


def save_checkpoint(folder: str | Path, name: str, payload: dict) -> Path:
    """Write `payload` to ``folder/name`` atomically and point ``last`` at it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    _atomic_write_bytes(path, lambda p: torch.save(payload, p))
    _point_last(folder, name)
    _prune(folder, name)
    return path


def last_checkpoint(folder: str | Path) -> Path | None:
    """The file ``folder/last`` names, or None when there is no complete checkpoint."""
    pointer = Path(folder) / "last"
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    return path if path.is_file() else None


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by `save_checkpoint` (tensors and plain Python objects only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Only tensors and plain Python values inside: safe to read with weights_only=True.
    return torch.load(path, map_location="cpu", weights_only=True)


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
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
