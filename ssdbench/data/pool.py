"""Worker processes for the dataset tools (`synth`, `check`): one pool, results in input order."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator


def process_pool(workers: int):
    """Context manager: a Pool of ``workers`` processes (fork where available, else spawn), or
    None for ``workers <= 1`` (work in this process). Leaving it terminates the workers, also on
    errors and Ctrl-C."""
    if workers <= 1:
        return contextlib.nullcontext()
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers)


def pool_map(pool, fn: Callable, items: Iterable, chunksize: int) -> Iterator:
    """``fn`` over ``items``, in order: in the pool's workers, or here when ``pool`` is None."""
    return pool.imap(fn, items, chunksize=chunksize) if pool is not None else map(fn, items)
