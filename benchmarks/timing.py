"""Timing shared by the benchmark scripts: warm-up, then synchronised wall-clock calls."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def _no_sync() -> None:
    return None


def sync_for(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for the queued work of ``device`` (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return _no_sync


def timed(fn: Callable[[], object], warmup: int, iters: int, sync: Callable[[], None] = _no_sync) -> list[float]:
    """Seconds per call of ``fn`` over ``iters`` calls after ``warmup`` untimed ones.

    ``sync`` runs before the clock starts and after each call, so asynchronous (CUDA) work is
    counted in the call that queued it.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times
