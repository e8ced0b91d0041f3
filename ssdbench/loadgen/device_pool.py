"""The SUT's worker pool: one process per device (``--devices cuda:0,cuda:1 | cuda:all | cpu:N``),
the devices it runs on, and the worker's own side.

Devices (`parse_devices`, `pool_devices`): ``cpu:N`` is N CPU workers, each pinned to its own
whole cores (the same as ``--instances N``); ``cuda:K`` one worker on GPU K; ``cuda:all`` one per
visible GPU. CPU and CUDA workers are not mixed in one pool (their speeds differ by two orders of
magnitude; Offline would wait on the CPU's tail). The ``devices`` key is ``auto`` by default: one
device (``device``) in the SUT's own process, or ``cpu:instances`` when ``instances > 1``.

CPU submitters run Offline and Server this way: instead of one model using every core (whose
large-batch convolutions scale poorly and whose small ones leave cores idle), N independent
instances each own ``cores / N`` cores and run whole batches side by side; a node with several
GPUs runs one worker per GPU. `split_cores` gives each worker whole physical cores (a core's SMT
siblings stay together, one package where possible). `InstancePool` starts the processes
(`ssdbench.workers`: ``spawn``, ready handshake, death and timeout handling), each pins itself
(``os.sched_setaffinity``) to its core set, sets its torch / backend threads to that many, builds
the backend there on its device from plain arguments (a weights path, never a live model) and
warms it up (`serve`, the worker's side: it then answers requests until told to stop).

Samples go by index (`ssdbench.loadgen.samples`): ``predict_samples(indices)`` sends slot
numbers of the QSL's shared uint8 set; the worker normalises on its device (OpenVINO takes the
uint8 samples straight: its model normalises them, `ssdbench.infer.file_backends.uint8_input_model`) and answers
with only the valid detections. Every byte through the pipes is counted (``bytes_sent`` /
``bytes_received``). ``predict`` (float32 pixels) remains for callers without a shared set.

Dispatch, Offline (the default, pull): each SUT worker thread takes the next free worker (a queue
of idle ones), so a device receives a batch exactly when it finished its last one: Offline's
batches split across devices in proportion to their measured speed, a slow device takes fewer
(work stealing at batch granularity).

Dispatch, Server (`dispatch_least_loaded`): the SUT runs one batcher per device (``batchers`` of
`BatchingSUT`: D batches may form at once, each closed at the maximum batch size or at the batch
timeout after its own first sample, so the timeout applies per device), and each formed batch goes
to the worker with the fewest samples queued or in flight on it (ties: the lowest worker number),
where it waits its turn if that worker is busy. Every choice is kept in ``choices`` (the worker, the
loads it was chosen from). Per worker the pool records samples, batches, busy seconds and
completion times (`device_stats`).

A worker that dies, answers nothing within ``timeout_s`` (it is then terminated) or does not
report ready is `InstanceFailed`: one line naming the worker, its device and cores (exit status
2); a failed start stops every worker.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ssdbench.errors import CliError
from ssdbench.loadgen.samples import Normaliser, SampleReader, pack_detections, unpack_detections
from ssdbench.model.postprocess import PaddedDetections
from ssdbench.workers import (
    NotReady,
    Worker,
    WorkerDied,
    WorkerHung,
    first_messages,
    recv_message,
    send_message,
)


def cuda_count() -> int:
    """Visible CUDA devices (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _cpu_entry(entry: str, flag: str) -> list[str]:
    count = entry.partition(":")[2] or "1"
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{flag} {entry!r}: cpu:N needs a whole number of workers >= 1")
    cores = len(available_cores())
    if int(count) > cores:
        raise ValueError(f"{flag} {entry!r} asks for {count} CPU workers; this process has {cores} cores "
                         "(each worker needs at least one)")  # fmt: skip
    return ["cpu"] * int(count)


def _cuda_entry(entry: str, visible: int, flag: str) -> list[str]:
    index = entry.partition(":")[2] or "0"
    there = ", ".join(f"cuda:{k}" for k in range(visible)) or "none"
    if index == "all":
        if visible == 0:
            raise ValueError(f"{flag} {entry!r}: this machine has no CUDA device")
        return [f"cuda:{k}" for k in range(visible)]
    if not index.isdigit():
        raise ValueError(f"{flag} {entry!r} is not a device (cuda:N, cuda:all, cpu:N)")
    if int(index) >= visible:
        raise ValueError(f"{flag} asks for cuda:{int(index)}; this machine has {visible} CUDA "
                         f"device(s) ({there})")  # fmt: skip
    return [f"cuda:{int(index)}"]


def parse_devices(text: str, visible_cuda: int | None = None, flag: str = "--devices") -> list[str]:
    """``cuda:0,cuda:1`` / ``cuda:all`` / ``cpu:2`` -> one torch device name per worker.

    ValueError (one line naming ``flag``, what was asked and what exists) for an unknown entry, a
    GPU that is not there, a device named twice, or CPU and CUDA entries mixed.
    """
    visible = cuda_count() if visible_cuda is None else visible_cuda
    entries = [e.strip() for e in str(text).split(",")]
    if not text or any(not e for e in entries):
        raise ValueError(f"{flag} {text!r}: an empty entry (examples: cuda:0,cuda:1  cuda:all  cpu:2)")
    devices: list[str] = []
    for entry in entries:
        kind = entry.partition(":")[0]
        if kind == "cpu":
            devices += _cpu_entry(entry, flag)
        elif kind == "cuda":
            devices += _cuda_entry(entry, visible, flag)
        else:
            raise ValueError(f"{flag} {entry!r} is not a device (cuda:N, cuda:all, cpu:N)")
    if len({d.split(":")[0] for d in devices}) > 1:
        raise ValueError(f"{flag} {text!r} mixes CPU and CUDA workers; use one kind per pool")
    gpus = [d for d in devices if d != "cpu"]
    if len(set(gpus)) < len(gpus):
        twice = sorted({d for d in gpus if gpus.count(d) > 1})
        raise ValueError(f"{flag} {text!r} names {', '.join(twice)} more than once")
    return devices


def pool_devices(devices: str, instances: int, visible_cuda: int | None = None) -> list[str] | None:
    """The pool's devices from the ``devices`` and ``instances`` keys; None: no pool (one device
    in the SUT's process). ValueError when both ask for different CPU worker counts."""
    if devices in (None, "", "auto"):
        return ["cpu"] * instances if instances > 1 else None
    listed = parse_devices(devices, visible_cuda)
    if instances > 1 and listed != ["cpu"] * instances:
        raise ValueError(f"--instances {instances} and --devices {devices} disagree (--instances N is "
                         f"--devices cpu:N); give one of them")  # fmt: skip
    return listed


def describe_devices(devices: list[str] | None, single: str) -> str:
    """``cuda:0,cuda:1`` / ``cpu:2`` for settings and reports; ``single`` when there is no pool."""
    if not devices:
        return single
    if all(d == "cpu" for d in devices):
        return f"cpu:{len(devices)}"
    return ",".join(devices)


READY_TIMEOUT_S = 900.0  # building + compiling + warming up an SSD1200 instance can take minutes
CHOICES_KEPT = 100_000  # dispatch decisions kept for inspection (tests, debugging)
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


def worker_cores(devices: list[str], cores: list[int] | None = None) -> list[list[int]]:
    """Each worker's cores: whole physical cores per worker (`split_cores`); GPU workers that
    outnumber the cores share them all (they mostly wait on their device)."""
    cores = available_cores() if cores is None else sorted(cores)
    if any(d != "cpu" for d in devices):
        try:
            return split_cores(len(devices), cores)
        except ValueError:
            return [list(cores) for _ in devices]
    return split_cores(len(devices), cores)


@dataclass(frozen=True)
class WorkerRecipe:
    """What every pool worker builds and runs before it reports ready (picklable: it is sent to them)."""

    # Arguments of `ssdbench.infer.backends.make_backend` (names, paths); each worker's device replaces theirs.
    backend_kwargs: dict
    warmup: tuple[tuple[int, int], ...] = ()  # (batch size, iterations) pairs run before ready
    buckets: int | None = None  # the largest batch, for compile's padding buckets (`use_batch_buckets`)
    factory: Any = None  # a picklable module-level callable used instead of ``make_backend`` (tests)


class InstancePool:
    """One backend per device in pinned processes (module doc); ``predict`` like `Backend.predict`.

    recipe: the backend each worker builds and its warm-up (`WorkerRecipe`).
    instances: CPU workers when ``devices`` is not given (``--instances N`` = ``cpu:N``).
    devices: one torch device name per worker (`ssdbench.loadgen.device_pool.parse_devices`).
    timeout_s: seconds a worker may take to answer one batch before it is declared hung.

    Startup waits at most ``READY_TIMEOUT_S`` for every worker; a worker that reports an error,
    dies or does not report ready in time raises `InstanceFailed`, and so does any failure while
    starting (KeyboardInterrupt included) stop every worker before it propagates.
    """

    def __init__(self, recipe: WorkerRecipe, instances: int = 1, cores: list[list[int]] | None = None,
                 devices: list[str] | None = None, timeout_s: float | None = None):  # fmt: skip
        self.devices = list(devices) if devices else ["cpu"] * instances
        self.cores = cores or worker_cores(self.devices)
        self.timeout_s, self.store = timeout_s, None
        self._free: queue.Queue = queue.Queue()  # pull dispatch: idle workers' numbers
        self.least_loaded = False  # True: `dispatch_least_loaded`
        # least-loaded: (worker, loads it was chosen from), the latest CHOICES_KEPT (a long run makes millions)
        self.choices: deque[tuple[int, tuple[int, ...]]] = deque(maxlen=CHOICES_KEPT)
        self._workers: list[Worker] = []
        self.describe = []
        self._broken: set[int] = set()
        self._lock = threading.Lock()
        self.bytes_sent = self.bytes_received = self.samples_by_index = 0
        n = len(self.devices)
        self._load = [0] * n  # least-loaded: samples queued or in flight per worker
        self._turns = [threading.Lock() for _ in range(n)]  # least-loaded: one request per pipe at a time
        self.stats = [{"samples": 0, "batches": 0, "busy_s": 0.0, "done": []} for _ in range(n)]
        self.t_start, self._first_start = time.monotonic(), float("inf")
        try:
            self._start(recipe)
        except BaseException:
            self.close()
            raise

    def name(self, i: int) -> str:
        """``worker I of N on DEVICE (cores [...])``: how errors name worker ``i``."""
        return f"worker {i} of {len(self.cores)} on {self.devices[i]} (cores {self.cores[i]})"

    def _start(self, recipe: WorkerRecipe) -> None:
        for i, (core_set, device) in enumerate(zip(self.cores, self.devices)):
            worker = Worker(serve, (recipe, core_set, device), name=self.name(i))
            self._workers.append(worker)
            worker.start()
        describe: dict[int, dict] = {}
        try:
            for i, (status, payload) in first_messages(self._workers, READY_TIMEOUT_S):
                if status != "ready":
                    raise InstanceFailed(f"{self.name(i)} failed to start: {payload}")
                self._workers[i].ready = True
                describe[i] = {**payload, "device": self.devices[i], "cores": self.cores[i]}
        except NotReady as exc:
            raise InstanceFailed(f"{exc.worker.name} not ready after {READY_TIMEOUT_S:g} s "
                                 f"(loadgen.device_pool.READY_TIMEOUT_S)") from None  # fmt: skip
        except WorkerDied as exc:
            raise InstanceFailed(f"{exc.worker.name} died while starting{exc.worker.exit_text()}") from None
        self.describe = [describe[i] for i in range(len(self.cores))]
        self.t_start = time.monotonic()
        for i in range(len(self._workers)):
            self._free.put(i)

    def use_store(self, store) -> None:
        """Serve `predict_samples` from this `SharedSamples` (the QSL's loaded set)."""
        self.store = store

    def predict_samples(self, indices) -> PaddedDetections:
        """Loaded QSL samples by index -> padded detections: only slot numbers cross the pipe."""
        path, shape = self.store.handle()
        detections = self._round_trip(("slots", path, shape, self.store.slots(indices)), len(indices))
        with self._lock:
            self.samples_by_index += len(indices)
        return detections

    def predict(self, images: torch.Tensor) -> PaddedDetections:
        """Images (N, 3, S, S) float32 -> padded detections, on the next free worker."""
        pixels = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return self._round_trip(pixels, len(pixels))

    def _round_trip(self, message, n: int) -> PaddedDetections:
        """``message`` to a worker (`_take`: the next free one, or the least loaded) and its answer back.

        A worker goes back to the free ones only after a whole round trip; one whose pipe breaks
        (it died) or that gives no answer within ``timeout_s`` (it is terminated) is set aside and
        the call raises `InstanceFailed` naming it; once every worker is broken every call does.
        """
        i = self._take(n)
        start, answered = time.monotonic(), False
        try:
            (status, payload), sent, received = self._workers[i].ask(message, self.timeout_s)
            answered = True
        except WorkerHung:
            self._set_broken(i)
            raise InstanceFailed(f"{self.name(i)} gave no answer to a batch of {n} within {self.timeout_s:g} s "
                                 "(hung; stopped; predict_timeout_s / --predict-timeout)") from None  # fmt: skip
        except WorkerDied as exc:
            self._set_broken(i)
            raise InstanceFailed(f"{self.name(i)} stopped answering ({exc}){self._workers[i].exit_text()}") from None
        except BaseException:  # interrupted mid-round-trip: its next answer would be this batch's
            self._set_broken(i)
            raise
        finally:
            self._leave(i, n, answered)
        self._record(i, n, start, sent, received)
        if status != "ok":
            raise InstanceFailed(f"{self.name(i)} failed: {payload}")
        return unpack_detections(payload)

    def dispatch_least_loaded(self) -> None:
        """Send each batch to the least-loaded worker instead of the next free one (Server; module doc)."""
        self.least_loaded = True

    def _all_failed(self) -> InstanceFailed:
        return InstanceFailed(f"every pool worker has failed ({len(self._broken)} of {len(self.cores)})")

    def _take(self, n: int) -> int:
        """The worker for a batch of ``n``: the next free one, or (least-loaded) the one with the
        fewest samples queued or in flight, once it is its turn."""
        if not self.least_loaded:
            i = self._free.get()
            if i is None:  # every worker is broken: pass the word on to the next caller
                self._free.put(None)
                raise self._all_failed()
            return i
        with self._lock:
            live = [j for j in range(len(self._workers)) if j not in self._broken]
            if not live:
                raise self._all_failed()
            i = min(live, key=lambda j: (self._load[j], j))
            self.choices.append((i, tuple(self._load)))
            self._load[i] += n
        self._turns[i].acquire()
        if i in self._broken:  # it failed while this batch waited for it
            self._leave(i, n, False)
            raise InstanceFailed(f"{self.name(i)} failed before a batch of {n} queued on it could run")
        return i

    def _leave(self, i: int, n: int, answered: bool) -> None:
        """Worker ``i`` is done with a batch of ``n``: free again (pull: only after an answer)."""
        if not self.least_loaded:
            if answered:
                self._free.put(i)
            return
        with self._lock:
            self._load[i] -= n
        self._turns[i].release()

    def _record(self, i: int, n: int, start: float, sent: int, received: int) -> None:
        end = time.monotonic()
        with self._lock:
            self.bytes_sent += sent
            self.bytes_received += received
            stats = self.stats[i]
            stats["samples"] += n
            stats["batches"] += 1
            stats["busy_s"] += end - start
            stats["done"].append((end - self.t_start, n))
            self._first_start = min(self._first_start, start - self.t_start)

    def device_stats(self, wall_s: float | None = None) -> list[dict]:
        """Per worker: device, samples, batches, busy fraction and samples/s over ``wall_s``
        (default: from the first batch sent to the last answer, any worker), completion times (s
        since the first batch) with batch sizes."""
        last = max((t for s in self.stats for t, _ in s["done"]), default=0.0)
        first = min(self._first_start, last)
        wall = wall_s or max(last - first, 1e-9)
        return [{"worker": i, "device": self.devices[i], "cores": self.cores[i], "samples": s["samples"],
                 "batches": s["batches"], "busy_fraction": min(1.0, s["busy_s"] / wall),
                 "samples_per_s": s["samples"] / wall, "done": [(t - first, n) for t, n in s["done"]]}
                for i, s in enumerate(self.stats)]  # fmt: skip

    def reset_stats(self) -> None:
        """Start counting afresh (after warm-up, before LoadGen starts)."""
        with self._lock:
            for s in self.stats:
                s.update(samples=0, batches=0, busy_s=0.0, done=[])
            self.bytes_sent = self.bytes_received = self.samples_by_index = 0
            self.t_start, self._first_start = time.monotonic(), float("inf")

    def bytes_per_sample(self) -> float | None:
        """Pipe bytes (both ways) per sample sent by index; None before any."""
        if not self.samples_by_index:
            return None
        return (self.bytes_sent + self.bytes_received) / self.samples_by_index

    def _set_broken(self, i: int) -> None:
        with self._lock:
            self._broken.add(i)
            if len(self._broken) == len(self._workers):
                self._free.put(None)

    def close(self) -> None:
        """Stop every worker (idempotent): ready ones are asked to stop, the rest are terminated."""
        polite = [w.ready and i not in self._broken for i, w in enumerate(self._workers)]
        for worker, ask in zip(self._workers, polite):
            if ask:
                worker.ask_to_stop()
        for worker, ask in zip(self._workers, polite):
            worker.stop(_STOP_S if ask else 0.0)
        self._workers = []


def _start_worker(backend_kwargs: dict, cores: list[int], device: str, factory):
    """Pin, select the device, build the backend there."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    from ssdbench.infer.backends import BackendOptions

    if factory is None:
        from ssdbench.infer.backends import make_backend as factory
    options = replace(backend_kwargs.get("options") or BackendOptions(), device=device, threads=len(cores))
    return factory(**{**backend_kwargs, "options": options})


def _answer(backend, message, reader: SampleReader, normalise: Normaliser) -> tuple:
    """One request: ("slots", path, shape, slots) from the shared set, or float32 pixels. A
    backend that ``accepts_uint8`` (OpenVINO: normalisation compiled into the model) gets the
    shared uint8 samples as they are."""
    if isinstance(message, tuple) and message[0] == "slots":
        _, path, shape, slots = message
        images = reader.batch(path, shape, slots)
        if not getattr(backend, "accepts_uint8", False):
            images = normalise(images)
    else:
        images = torch.from_numpy(message).to(normalise.device)
    return pack_detections(backend.predict(images))


def serve(conn, recipe: WorkerRecipe, cores: list[int], device: str) -> None:
    """One worker (`ssdbench.workers.Worker` target): pin, build, warm up, then answer batches until it
    receives None (or EOF)."""
    try:
        backend = _start_worker(recipe.backend_kwargs, cores, device, recipe.factory)
        if recipe.buckets and hasattr(backend, "use_batch_buckets"):
            backend.use_batch_buckets(recipe.buckets)
        s = backend.input_size
        dtypes = (torch.float32, torch.uint8) if getattr(backend, "accepts_uint8", False) else (torch.float32,)
        for batch, iterations in recipe.warmup:
            for _, dtype in itertools.product(range(iterations), dtypes):  # both compiled models
                backend.predict(torch.zeros(batch, 3, s, s, dtype=dtype, device=device)).counts.cpu()
        send_message(conn, ("ready", backend.describe()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        send_message(conn, ("error", f"{type(exc).__name__}: {exc}"))
        return
    reader, normalise = SampleReader(), Normaliser(device)
    while True:
        try:
            message, _ = recv_message(conn)
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        try:
            send_message(conn, ("ok", _answer(backend, message, reader, normalise)))
        except BaseException as exc:  # noqa: BLE001
            send_message(conn, ("error", f"{type(exc).__name__}: {exc}"))
