"""A trained demo model on demand: the `demo` preset trained once, kept in the cache folder.

Accuracy checks of reduced-precision and INT8 paths need a network that detects something (an
untrained one scores ~1e-5 mAP, where any quantization error is invisible). The repository ships
no checkpoint: `demo_checkpoint` trains ``ssd128_mini`` on the embedded synthetic dataset with
the demo preset (`train.config.PRESETS["demo"]`: what `ssdbench demo` trains, about 2.5 minutes
on 2 cores with native bf16; ``epochs`` shortens it, with the decay at 0.8 of the run as
`ssdbench demo --epochs` does) into ``$SSDBENCH_CACHE/demo-models/<key>`` and returns its last
checkpoint. The key hashes the resolved settings and the torch version, so a changed
preset trains a new model instead of resuming an old one. A second call returns the finished run
at once (`run_training` does not train a finished folder again); an interrupted one resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ssdbench.io import cache_dir
from ssdbench.train.config import resolve_config


def demo_checkpoint(epochs: int | None = None, seed: int = 1, progress: bool = False) -> Path:
    """Path of the demo model's last checkpoint (trained here if missing); ``epochs`` None = the preset's.

    Shorter runs quantize worse: 14 epochs (mAP 0.182) kept 98.9% of the fp32 mAP under OpenVINO
    INT8, the preset's 22 (mAP 0.245) 100.5% (benchmarks/RESULTS.md).
    """
    from ssdbench.train.trainer import run_training

    overrides = {"seed": seed, "device": "cpu"}
    if epochs is not None:
        overrides.update(epochs=epochs, decay_epochs=(max(1, round(epochs * 0.8)),))
    cfg = resolve_config("demo", None, overrides)
    settings = {k: v for k, v in asdict(cfg).items() if k != "out"}
    key = hashlib.sha1(json.dumps([settings, torch.__version__], sort_keys=True, default=str).encode())
    folder = cache_dir("demo-models", f"ssd128_mini-{cfg.epochs}ep-{key.hexdigest()[:12]}")
    last = folder / "checkpoints" / "last.pt"
    if (folder / "summary.json").is_file() and last.is_file():
        return last
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores - cfg.workers))  # one core per data worker, as `ssdbench demo`
    try:
        cfg = resolve_config("demo", None, {**overrides, "out": str(folder)})
        summary = run_training(cfg, progress=progress)
    finally:
        torch.set_num_threads(threads)
    if summary.get("status") == "interrupted" or not last.is_file():
        raise RuntimeError(f"the demo model's training in {folder} did not finish; call again to resume it")
    return last
