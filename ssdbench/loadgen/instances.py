"""Multi-instance CPU serving: N model instances, each in its own process pinned to its own cores.

CPU submitters run Offline and Server this way: instead of one model using every core (whose
large-batch convolutions scale poorly and whose small ones leave cores idle), N independent
instances each own ``cores / N`` cores and run whole batches side by side. `split_cores` gives
each instance whole physical cores (a core's SMT siblings stay together, one package where
possible). `InstancePool` starts the processes (``spawn``), pins each
(``os.sched_setaffinity``) to its core set, sets its torch / backend threads to that many, builds
the backend there from plain arguments (a weights path, never a live model) and warms it up;
``predict`` is thread-safe: each SUT worker thread takes a free instance, sends its batch
(float32 numpy through a pipe) and receives the padded detections (numpy). The SUT then runs
``threads >= instances`` workers so every instance has a batch in flight.

An instance that dies or does not report ready, at start or later, is `InstanceFailed`: one line
naming the instance and its cores (exit status 2); a failed start stops every instance.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from multiprocessing.connection import wait as _wait

import numpy as np
import torch

from ssdbench.errors import CliError
from ssdbench.model.postprocess import PaddedDetections

READY_TIMEOUT_S = 900.0  # building + compiling + warming up an SSD1200 instance can take minutes
_STOP_S = 30.0  # a ready instance's time to leave after it is told to stop
_SYS_CPU = "/sys/devices/system/cpu"


class InstanceFailed(CliError):
    """A model instance died, broke its pipe or did not start: one line naming it and its cores."""


def available_cores() -> list[int]:
    """The cores this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def read_topology(cpus: list[int]) -> dict[int, tuple[int, int]] | None:
    """Logical CPU -> (physical package id, core id) from ``/sys``; None when any is unreadable."""
    topology = {}
    try:
        for cpu in cpus:
            base = f"{_SYS_CPU}/cpu{cpu}/topology"
            with open(f"{base}/physical_package_id") as f:
                package = int(f.read())
            with open(f"{base}/core_id") as f:
                topology[cpu] = (package, int(f.read()))
    except (OSError, ValueError):
        return None
    return topology


def _balanced(items: list, parts: int) -> list[list]:
    """``items`` in ``parts`` consecutive runs, the first ``len % parts`` one longer."""
    base, extra = divmod(len(items), parts)
    runs, start = [], 0
    for i in range(parts):
        n = base + (i < extra)
        runs.append(items[start:start + n])
        start += n
    return runs


def split_cores(instances: int, cores: list[int] | None = None) -> list[list[int]]:
    """``cores`` (default: this process's) in ``instances`` sets of whole physical cores.

    A physical core's SMT siblings go to the same instance; cores are taken in (package, core id)
    order, and when ``instances`` is a multiple of the packages each package is split on its own,
    so no instance spans two packages. Without a readable ``/sys`` topology the logical CPUs are
    split in contiguous runs. ValueError (naming ``--instances``) when there are fewer cores
    than instances.
    """
    cores = available_cores() if cores is None else sorted(cores)
    if instances < 1:
        raise ValueError(f"--instances must be >= 1, got {instances}")
    topology = read_topology(cores)
    if topology is None:
        if instances > len(cores):
            raise ValueError(f"--instances {instances} needs at least {instances} cores, this process has "
                             f"{len(cores)} ({cores})")  # fmt: skip
        return _balanced(cores, instances)
    siblings: dict[tuple[int, int], list[int]] = {}
    for cpu in cores:
        siblings.setdefault(topology[cpu], []).append(cpu)
    physical = sorted(siblings)  # (package, core id)
    if instances > len(physical):
        raise ValueError(f"--instances {instances} needs at least {instances} physical cores, this process "
                         f"has {len(physical)} ({len(cores)} logical CPUs: {cores})")  # fmt: skip
    packages = sorted({package for package, _ in physical})
    per_package = [[key for key in physical if key[0] == p] for p in packages]
    share = instances // len(packages)
    if instances % len(packages) == 0 and all(len(keys) >= share for keys in per_package):
        groups = [run for keys in per_package for run in _balanced(keys, share)]
    else:
        groups = _balanced(physical, instances)
    return [sorted(cpu for key in group for cpu in siblings[key]) for group in groups]


def _serve(conn, backend_kwargs: dict, cores: list[int], warmup: list[tuple[int, int]], buckets: int | None,
           factory=None) -> None:  # fmt: skip
    """One instance: pin, build, warm up, then answer batches until it receives None (or EOF)."""
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
        if factory is None:
            from ssdbench.infer.backends import make_backend as factory

        backend = factory(**backend_kwargs, threads=len(cores))
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
    while True:
        try:
            batch = conn.recv()
        except EOFError:  # the parent is gone
            return
        if batch is None:
            return
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
    factory: a picklable module-level callable used instead of ``make_backend`` (tests).

    Startup waits at most ``READY_TIMEOUT_S`` for every instance; an instance that reports an
    error, dies or does not report ready in time raises `InstanceFailed`, and so does any failure
    while starting (KeyboardInterrupt included) stop every instance before it propagates.
    """

    def __init__(self, backend_kwargs: dict, instances: int, cores: list[list[int]] | None = None,
                 warmup: list[tuple[int, int]] = (), buckets: int | None = None, factory=None):  # fmt: skip
        self.cores = cores or split_cores(instances)
        self._free: queue.Queue = queue.Queue()
        self._procs, self._conns, self.describe = [], [], []
        self._ready: set[int] = set()  # instances that reported ready (they obey a stop message)
        self._broken: set[int] = set()
        self._lock = threading.Lock()
        try:
            self._start(backend_kwargs, list(warmup), buckets, factory)
        except BaseException:
            self.close()
            raise

    def name(self, i: int) -> str:
        """``model instance I of N (cores [...])``: how errors name instance ``i``."""
        return f"model instance {i} of {len(self.cores)} (cores {self.cores[i]})"

    def _start(self, backend_kwargs, warmup, buckets, factory) -> None:
        ctx = mp.get_context("spawn")
        for core_set in self.cores:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, backend_kwargs, core_set, warmup, buckets, factory),
                               daemon=True)  # fmt: skip
            self._procs.append(proc)
            self._conns.append(parent)
            try:
                proc.start()
            finally:
                child.close()  # only the instance holds its end: its death is EOF here, not silence
        pending = dict(enumerate(self._conns))
        describe: dict[int, dict] = {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while pending:
            left = deadline - time.monotonic()
            done = _wait(list(pending.values()), timeout=left) if left > 0 else []
            if not done:
                i = min(pending)
                raise InstanceFailed(f"{self.name(i)} not ready after {READY_TIMEOUT_S:g} s "
                                     f"(loadgen.instances.READY_TIMEOUT_S)")  # fmt: skip
            for i in [i for i, conn in pending.items() if conn in done]:
                try:
                    status, payload = pending.pop(i).recv()
                except (EOFError, OSError):
                    raise InstanceFailed(f"{self.name(i)} died while starting{self._exit_text(i)}") from None
                if status != "ready":
                    raise InstanceFailed(f"{self.name(i)} failed to start: {payload}")
                self._ready.add(i)
                describe[i] = {**payload, "cores": self.cores[i]}
        self.describe = [describe[i] for i in range(len(self.cores))]
        for conn in self._conns:
            self._free.put(conn)

    def _exit_text(self, i: int) -> str:
        """`` (exit code N)`` once instance ``i``'s process has ended, else empty."""
        proc = self._procs[i]
        proc.join(timeout=5)
        return "" if proc.exitcode is None else f" (exit code {proc.exitcode})"

    def predict(self, images: torch.Tensor) -> PaddedDetections:
        """Images (N, 3, S, S) -> padded detections, on the next free instance.

        An instance goes back to the free ones only after a whole round trip; one whose pipe
        breaks (it died) is set aside and the call raises `InstanceFailed` naming it; once every
        instance is broken every call does.
        """
        conn = self._free.get()
        if conn is None:  # every instance is broken: pass the word on to the next caller
            self._free.put(None)
            raise InstanceFailed(f"every model instance has failed ({len(self._broken)} of {len(self.cores)})")
        i = self._conns.index(conn)
        try:
            conn.send(np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32))
            status, payload = conn.recv()
        except (EOFError, OSError) as exc:
            self._set_broken(i)
            raise InstanceFailed(f"{self.name(i)} stopped answering ({type(exc).__name__}: {exc})"
                                 f"{self._exit_text(i)}") from None  # fmt: skip
        except BaseException:  # interrupted mid-round-trip: its next answer would be this batch's
            self._set_broken(i)
            raise
        self._free.put(conn)
        if status != "ok":
            raise InstanceFailed(f"{self.name(i)} failed: {payload}")
        return PaddedDetections(*(torch.from_numpy(a) for a in payload))

    def _set_broken(self, i: int) -> None:
        with self._lock:
            self._broken.add(i)
            if len(self._broken) == len(self._conns):
                self._free.put(None)

    def close(self) -> None:
        """Stop every instance (idempotent): ready ones are asked to stop, the rest are terminated."""
        for i, conn in enumerate(self._conns):
            if i in self._ready and i not in self._broken:
                try:
                    conn.send(None)
                except (OSError, ValueError):
                    pass
        for i, proc in enumerate(self._procs):
            if proc.pid is None:  # never started
                continue
            if i in self._ready and i not in self._broken:
                proc.join(timeout=_STOP_S)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
