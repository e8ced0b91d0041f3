"""Multi-instance CPU serving: N model instances, each in its own process pinned to its own cores.

CPU submitters run Offline and Server this way: instead of one model using every core (whose
large-batch convolutions scale poorly and whose small ones leave cores idle), N independent
instances each own ``cores / N`` cores and run whole batches side by side. `InstancePool` starts
the processes (``spawn``), pins each (``os.sched_setaffinity``) to a contiguous core set, sets its
torch / backend threads to that many, builds the backend there from plain arguments (a weights
path, never a live model) and warms it up; ``predict`` is thread-safe: each SUT worker thread
takes a free instance, sends its batch (float32 numpy through a pipe) and receives the padded
detections (numpy). The SUT then runs ``threads >= instances`` workers so every instance has a
batch in flight.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue

import numpy as np
import torch

from ssdbench.model.postprocess import PaddedDetections

READY_TIMEOUT_S = 900.0  # building + compiling + warming up an SSD1200 instance can take minutes


def available_cores() -> list[int]:
    """The cores this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def split_cores(instances: int, cores: list[int] | None = None) -> list[list[int]]:
    """``cores`` in ``instances`` contiguous sets as equal as possible; ValueError when too few."""
    cores = available_cores() if cores is None else list(cores)
    if instances < 1:
        raise ValueError(f"--instances must be >= 1, got {instances}")
    if instances > len(cores):
        raise ValueError(f"--instances {instances} needs at least {instances} cores, this process has "
                         f"{len(cores)} ({cores})")
    base, extra = divmod(len(cores), instances)
    sets, start = [], 0
    for i in range(instances):
        n = base + (i < extra)
        sets.append(cores[start:start + n])
        start += n
    return sets


def _serve(conn, backend_kwargs: dict, cores: list[int], warmup: list[tuple[int, int]], buckets: int | None) -> None:
    """One instance: pin, build, warm up, then answer batches until it receives None."""
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
        from ssdbench.infer.backends import make_backend

        backend = make_backend(**backend_kwargs, threads=len(cores))
        if buckets and hasattr(backend, "use_batch_buckets"):
            backend.use_batch_buckets(buckets)
        s = backend.input_size
        for batch, iterations in warmup:
            for _ in range(iterations):
                backend.predict(torch.zeros(batch, 3, s, s)).counts.cpu()
        conn.send(("ready", backend.describe()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while (batch := conn.recv()) is not None:
        try:
            dets = backend.predict(torch.from_numpy(batch))
            conn.send(("ok", tuple(t.cpu().numpy() for t in dets)))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class InstancePool:
    """``instances`` backends in pinned processes (module doc); ``predict`` like `Backend.predict`.

    backend_kwargs: arguments of `ssdbench.infer.backends.make_backend` (picklable: names, paths).
    warmup: (batch size, iterations) pairs each instance runs before it reports ready.
    buckets: the largest batch, for compile's padding buckets (`CompileBackend.use_batch_buckets`).
    """

    def __init__(self, backend_kwargs: dict, instances: int, cores: list[list[int]] | None = None,
                 warmup: list[tuple[int, int]] = (), buckets: int | None = None):  # fmt: skip
        self.cores = cores or split_cores(instances)
        ctx = mp.get_context("spawn")
        self._free: queue.Queue = queue.Queue()
        self._procs, self._conns, self.describe = [], [], []
        for core_set in self.cores:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, backend_kwargs, core_set, list(warmup), buckets),
                               daemon=True)  # fmt: skip
            proc.start()
            self._procs.append(proc)
            self._conns.append(parent)
        for conn, core_set in zip(self._conns, self.cores):
            if not conn.poll(READY_TIMEOUT_S):
                self.close()
                raise RuntimeError(f"model instance on cores {core_set} not ready after {READY_TIMEOUT_S:.0f} s")
            status, payload = conn.recv()
            if status != "ready":
                self.close()
                raise ValueError(f"model instance on cores {core_set} failed to start: {payload}")
            self.describe.append({**payload, "cores": core_set})
            self._free.put(conn)

    def predict(self, images: torch.Tensor) -> PaddedDetections:
        """Images (N, 3, S, S) -> padded detections, on the next free instance."""
        conn = self._free.get()
        try:
            conn.send(np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32))
            status, payload = conn.recv()
        finally:
            self._free.put(conn)
        if status != "ok":
            raise RuntimeError(f"model instance failed: {payload}")
        return PaddedDetections(*(torch.from_numpy(a) for a in payload))

    def close(self) -> None:
        """Stop every instance (idempotent)."""
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
        self._procs, self._conns = [], []
