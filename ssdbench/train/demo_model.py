"""A trained demo model on demand: the `demo` preset trained once, kept in the cache folder.

Accuracy checks of reduced-precision and INT8 paths need a network that detects something (an
untrained one scores ~1e-5 mAP, where any quantization error is invisible). The repository ships
no checkpoint: `demo_checkpoint` trains ``ssd128_mini`` on the embedded synthetic dataset with
the demo preset (`train.config.PRESETS["demo"]`: what `ssdbench demo` trains, about 2.5 minutes
on 2 cores with native bf16; ``epochs`` shortens it, with the decay at 0.8 of the run as
`ssdbench demo --epochs` does) into ``$SSDBENCH_CACHE/demo-models/<key>`` and returns its last
checkpoint. The key (`cache_key`) hashes the resolved settings, the precision the preset's
``precision: auto`` means on this CPU (bf16 with native bf16, else fp32) and the torch version,
so a changed preset trains a new model instead of resuming an old one, and bf16- and
fp32-trained models never share a folder. A second call returns the finished run at once
(`run_training` does not train a finished folder again); an interrupted one resumes. While
another live process trains the same folder (its lock, `ssdbench.io.FolderLock`), a call waits
for it (up to ``LOCK_WAIT_S``) and returns its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ssdbench.io import FolderLockedError, cache_dir, read_json
from ssdbench.precision import default_precision
from ssdbench.train.config import TrainConfig, resolve_config

LOCK_WAIT_S = 900.0  # another process training the same demo model: wait this long for it ...
LOCK_POLL_S = 5.0  # ... looking every this many seconds
FINISHED = ("success", "finished")  # summary.json statuses of a run that trained all its epochs


def cache_key(cfg: TrainConfig) -> str:
    """The cache folder name of the demo model trained with ``cfg`` on this host's CPU:
    ``ssd128_mini-<epochs>ep-<precision>-<hash>`` (the precision as resolved for the CPU)."""
    precision = cfg.precision if cfg.precision != "auto" else default_precision("cpu")
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    digest = hashlib.sha1(json.dumps([settings, precision, torch.__version__], sort_keys=True,
                                     default=str).encode()).hexdigest()  # fmt: skip
    return f"{cfg.model}-{cfg.epochs}ep-{precision}-{digest[:12]}"


def demo_checkpoint(epochs: int | None = None, seed: int = 1, progress: bool = False) -> Path:
    """Path of the demo model's last checkpoint (trained here if missing); ``epochs`` None = the preset's.

    Shorter runs quantize worse: 14 epochs (mAP 0.182) kept 98.9% of the fp32 mAP under OpenVINO
    INT8, the preset's 22 (mAP 0.245) 100.5% (benchmarks/RESULTS.md).
    """
    overrides = {"seed": seed, "device": "cpu"}
    if epochs is not None:
        overrides.update(epochs=epochs, decay_epochs=(max(1, round(epochs * 0.8)),))
    folder = cache_dir("demo-models", cache_key(resolve_config("demo", None, overrides)))
    deadline, waiting = time.monotonic() + LOCK_WAIT_S, False
    while True:
        try:
            return _train(folder, overrides, progress)
        except FolderLockedError as exc:
            if time.monotonic() >= deadline:
                raise FolderLockedError(f"{exc} (waited {LOCK_WAIT_S:g} s for it)") from None
            if not waiting:
                print(f"waiting for another process to finish the demo model in {folder}", file=sys.stderr,
                      flush=True)  # fmt: skip
                waiting = True
            time.sleep(LOCK_POLL_S)


def _train(folder: Path, overrides: dict, progress: bool) -> Path:
    """The finished checkpoint in ``folder``, trained (or resumed) first when there is none;
    FolderLockedError while another process trains it."""
    from ssdbench.train.trainer import run_training

    last = folder / "checkpoints" / "last.pt"
    if _finished(folder) and last.is_file():
        return last
    cfg = resolve_config("demo", None, {**overrides, "out": str(folder)})
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores - cfg.workers))  # one core per data worker, as `ssdbench demo`
    try:
        summary = run_training(cfg, progress=progress)
    finally:
        torch.set_num_threads(threads)
    if summary.get("status") not in FINISHED or not last.is_file():
        raise RuntimeError(f"the demo model's training in {folder} did not finish; call again to resume it")
    return last


def _finished(folder: Path) -> bool:
    """True when ``folder``'s summary.json records a run that ended by itself: a killed or failed run
    ("failed", "interrupted") also writes one, and resuming it is what finishes the model."""
    try:
        status = read_json(folder / "summary.json", "summary").get("status")
    except (OSError, ValueError, AttributeError):
        return False
    return status in FINISHED
