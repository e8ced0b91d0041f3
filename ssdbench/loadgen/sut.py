"""LoadGen system under test (SUT): a dynamic batcher in front of a detector backend.

LoadGen's issue callback only enqueues samples. ``threads`` workers take turns forming a batch:
a batch leaves when it holds ``max_batch_size`` samples or when its first sample has waited
``batch_timeout_us`` (Offline's single huge query therefore splits into full batches at once).
Server over a pool of D devices runs D batchers (``batchers``): D batches form at once, each with
its own timeout, and each goes to the least-loaded device (`ssdbench.loadgen.device_pool`).
While one worker runs its batch, the next one forms and copies the following batch; on CUDA the
copy goes host -> pinned staging buffer -> device on a side stream, so it overlaps compute. The
staging buffers are a small shared pool (`MAX_STAGING`), held only while a copy is queued: the
seed's 128-thread TPU preset would otherwise pin 128 batch-sized buffers.

Responses follow benchmark.md §7: per sample a contiguous float32 (K, 7) array of
``[qsl_idx, ymin, xmin, ymax, xmax, score, label]`` with normalised coordinates (note: y before
x, unlike our ltrb boxes) and labels 1..80. LoadGen copies the bytes inside
`QuerySamplesComplete`, so the arrays only need to live until that call returns.

A batch still running after ``predict_timeout_s`` (a model that hangs) fails the run: a watchdog
thread answers it and every later sample at once with empty responses, so LoadGen reaches the end
of its schedule instead of waiting forever, and ``error`` says which batch timed out. The stuck
worker thread cannot be stopped from Python; it is a daemon and does not keep the process alive.

``predict(batch)`` takes float32 (N, 3, S, S) on the device and returns a `PaddedDetections`
(`ssdbench.model.postprocess`, fields read by name): boxes (N, D, 4) ltrb normalised, labels
(N, D), scores (N, D), counts (N,), each image's valid detections first.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from ssdbench.errors import CliError
from ssdbench.model.postprocess import PaddedDetections


@dataclass
class _Query:
    """One IssueQuery call: its latency ends when its last sample completes."""

    t_issue: int  # perf_counter_ns
    remaining: int


@dataclass
class _Item:
    id: int  # LoadGen's response id
    index: int  # QSL index
    query: _Query
    t_enqueue: float = field(default_factory=time.perf_counter)


class OverloadError(RuntimeError):
    """Server arrivals outpace the model: the run cannot be VALID and would drain for hours."""


_STOP = object()
STOP_JOIN_S = 1.0  # how long `stop` waits for a worker after a timeout (a hung one stays behind)
MAX_STAGING = 4  # pinned staging buffers (each max_batch x 3 x S x S float32: 69 MB at 4 x 1200^2)


def check_detections(dets) -> PaddedDetections:
    """``dets`` itself when it is a `PaddedDetections`; else TypeError stating the contract."""
    if not isinstance(dets, PaddedDetections):
        raise TypeError(f"predict must return a PaddedDetections (boxes, labels, scores, counts by name), "
                        f"got {type(dets).__name__}")
    return dets


def detections_to_responses(index: np.ndarray, dets: PaddedDetections) -> list[np.ndarray]:
    """Padded detections -> per-sample float32 (K, 7) arrays [idx, ymin, xmin, ymax, xmax, score, label].

    index (N,) QSL indices; dets: boxes (N, D, 4) ltrb normalised, labels and scores (N, D), counts (N,).
    """
    boxes, scores, labels, counts = (_numpy(x) for x in (dets.boxes, dets.scores, dets.labels, dets.counts))
    out = []
    for j in range(len(index)):
        k = int(counts[j])
        arr = np.empty((k, 7), np.float32)
        arr[:, 0] = index[j]
        arr[:, 1:5] = boxes[j, :k][:, [1, 0, 3, 2]]  # ltrb -> (ymin, xmin, ymax, xmax)
        arr[:, 5] = scores[j, :k]
        arr[:, 6] = labels[j, :k]
        out.append(arr)
    return out


def _empty(items: list) -> list[np.ndarray]:
    """No detections for each item: what a failed batch answers."""
    return [np.empty((0, 7), np.float32) for _ in items]


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return (x.float() if x.is_floating_point() else x).cpu().numpy()
    return np.asarray(x)


class HostToDevice:
    """Stages a batch of numpy samples on the device; per worker thread.

    CUDA: samples are packed into a pinned buffer (max_batch, 3, S, S) and copied on a side stream;
    the compute stream waits for that copy only, so other workers' compute overlaps it. CPU: a
    plain stacked tensor.
    """

    def __init__(self, device: torch.device, max_batch: int, sample_shape: tuple[int, ...]):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.stream = torch.cuda.Stream(device)
            self.pinned = torch.empty((max_batch, *sample_shape), dtype=torch.float32, pin_memory=True)
            self.copied = None  # event of the last copy out of `pinned`

    def __call__(self, samples: list[np.ndarray]) -> torch.Tensor:
        if not self.cuda:
            return torch.from_numpy(np.stack(samples))
        if self.copied is not None:
            self.copied.synchronize()  # the previous copy must leave `pinned` before we refill it
        host = self.pinned[: len(samples)]
        for j, sample in enumerate(samples):
            host[j].copy_(torch.from_numpy(sample))
        with torch.cuda.stream(self.stream):
            batch = host.to(self.device, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record(self.stream)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.stream)
        batch.record_stream(compute)  # allocated on the copy stream, used on the compute stream
        return batch


@dataclass(frozen=True)
class Batching:
    """How `BatchingSUT` forms its batches and how long it lets them and its samples wait."""

    max_batch_size: int = 8  # a batch leaves when it holds this many samples ...
    batch_timeout_us: int = 2000  # ... or when its first sample has waited this long
    threads: int = 1  # worker threads: batches in flight
    predict_timeout_s: float | None = None  # seconds a batch may run before the run fails (None: no limit)
    # Seconds a sample may wait in the queue before the run fails as overloaded (Server: arrivals
    # outpace the model; None: no limit). Answered like a timeout, so a Server run at a rate the
    # system cannot serve ends at its schedule's end instead of draining for hours.
    max_queue_wait_s: float | None = None
    # How many batches may form at once, each with its own timeout from its own first sample
    # (Server over a pool of D devices: D, the batch timeout applies per device; worker thread k
    # gathers for batcher k mod D). 1: one batch forms at a time.
    batchers: int = 1


class BatchingSUT:
    """Dynamic-batching SUT; `construct()` registers it with LoadGen.

    predict: callable on float32 (N, 3, S, S) device batches (see module doc).
    qsl: a `SampleLibrary` (``get(index)`` -> float32 (3, S, S), ``sample_shape``).
    batching: the batcher's knobs and time limits (`Batching`; the module doc says why).
    predict_samples: callable on an int64 array of QSL indices -> `PaddedDetections`, used instead
      of staging pixels for ``predict`` (a device pool reading the QSL's shared set by index).
    """

    def __init__(self, predict, qsl, batching: Batching = Batching(), device: str | torch.device = "cpu",
                 predict_samples=None):  # fmt: skip
        max_batch_size, batch_timeout_us, threads = batching.max_batch_size, batching.batch_timeout_us, batching.threads
        predict_timeout_s, max_queue_wait_s, batchers = (batching.predict_timeout_s, batching.max_queue_wait_s,
                                                         batching.batchers)  # fmt: skip
        if max_batch_size < 1 or threads < 1 or batch_timeout_us < 0 or not 1 <= batchers <= threads:
            raise ValueError("max_batch_size and threads must be >= 1, batch_timeout_us >= 0, batchers 1..threads")
        if predict_timeout_s is not None and not predict_timeout_s > 0:
            raise ValueError(f"predict_timeout_s must be > 0, got {predict_timeout_s}")
        self.predict, self.qsl, self.predict_samples = predict, qsl, predict_samples
        self.max_batch_size, self.timeout = int(max_batch_size), batch_timeout_us / 1e6
        self.device = torch.device(device)
        self.queue: queue.Queue = queue.Queue()
        self._gather_locks = [threading.Lock() for _ in range(int(batchers))]  # one per batcher
        self._stats_lock = threading.Lock()
        self.query_latencies_ns: list[int] = []  # per IssueQuery call, completion order
        self.sample_latencies_ns: list[int] = []  # per sample: its query's issue -> its response
        self.query_spans_ns: list[tuple[int, int]] = []  # per query: (issue, done) perf_counter_ns
        self.sample_spans_ns: list[tuple[int, int]] = []  # per sample: (its query's issue, its response)
        self.batch_sizes: list[int] = []
        self.issued: Counter = Counter()  # response id -> times issued
        self.responded: Counter = Counter()  # response id -> times answered
        self.error: BaseException | None = None
        self._staging: queue.Queue = queue.Queue()  # idle HostToDevice feeders
        self._staging_made = 0
        self.predict_timeout_s = predict_timeout_s
        self._inflight: dict[object, tuple[float, list[_Item]]] = {}  # token -> (start, items)
        self._timed_out, self._stopping = threading.Event(), threading.Event()
        self._worker_failed = threading.Event()  # a pool worker failed: answer the rest at once
        self._workers = [threading.Thread(target=self._work, args=(self._gather_locks[i % len(self._gather_locks)],),
                                          name=f"sut-worker-{i}", daemon=True) for i in range(int(threads))]  # fmt: skip
        for w in self._workers:
            w.start()
        self._watchdog = None
        self.max_queue_wait_s = max_queue_wait_s
        if predict_timeout_s is not None or max_queue_wait_s is not None:
            self._watchdog = threading.Thread(target=self._watch, name="sut-watchdog", daemon=True)
            self._watchdog.start()

    # ---- LoadGen callbacks ----
    def issue_queries(self, samples) -> None:
        """Enqueue one query's samples; never blocks on inference."""
        query = _Query(time.perf_counter_ns(), len(samples))
        with self._stats_lock:
            for s in samples:
                self.issued[s.id] += 1
        for s in samples:
            self.queue.put(_Item(s.id, s.index, query))

    def flush_queries(self) -> None:
        """Nothing is held back beyond the batch timeout, so there is nothing to flush."""

    def construct(self):
        import mlperf_loadgen as lg

        return lg.ConstructSUT(self.issue_queries, self.flush_queries)

    # ---- workers ----
    def _gather(self, gather_lock: threading.Lock) -> list[_Item] | None:
        """Block for a first sample, then take more until the batch is full or its timeout passes
        (one batch at a time per ``gather_lock``: its batcher)."""
        with gather_lock:
            first = self.queue.get()
            if first is _STOP:
                return None
            items = [first]
            deadline = first.t_enqueue + self.timeout
            while len(items) < self.max_batch_size:
                try:
                    remaining = deadline - time.perf_counter()
                    item = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self.queue.put(_STOP)  # leave it for this worker's next round
                    break
                items.append(item)
            return items

    def _work(self, gather_lock: threading.Lock) -> None:
        while (items := self._gather(gather_lock)) is not None:
            token = object()
            with self._stats_lock:
                self._inflight[token] = (time.monotonic(), items)
            arrays = None
            try:
                # after a timeout or a failed pool worker every sample is answered empty
                if not self._timed_out.is_set() and not self._worker_failed.is_set():
                    arrays = self._run_batch(items)
            except BaseException as exc:  # noqa: BLE001 - LoadGen must still get every response
                self._note_error(exc)
            with self._stats_lock:
                ours = self._inflight.pop(token, None) is not None  # False: the watchdog answered it
            if ours:
                self._complete(items, arrays if arrays is not None else _empty(items))
                if arrays is not None:
                    with self._stats_lock:
                        self.batch_sizes.append(len(items))

    def _note_error(self, exc: BaseException) -> None:
        """Keep the first error; a failed pool worker (a CliError naming its device) ends the run
        early and its line beats the watchdog's generic timeout, which it explains."""
        if isinstance(exc, CliError):
            self._worker_failed.set()
            if self.error is None or isinstance(self.error, TimeoutError):
                self.error = exc
                return
        self.error = self.error or exc

    def _watch(self) -> None:
        """Fail the run when a batch outlives ``predict_timeout_s``; then answer everything at once."""
        limit = float(self.predict_timeout_s or "inf")
        while not self._stopping.wait(min(limit / 4, 0.5)):
            self._check_backlog()
            now = time.monotonic()
            with self._stats_lock:
                late = [(t, items) for t, items in self._inflight.values() if now - t > limit]
                if late and not self._timed_out.is_set():
                    self.error = self.error or TimeoutError(
                        f"a batch of {len(late[0][1])} sample(s) got no answer from the model within "
                        f"{limit:g} s (predict_timeout_s / --predict-timeout); the model hangs or is far "
                        "slower than expected")
                    self._timed_out.set()
                if self._timed_out.is_set():
                    stuck = [items for t, items in self._inflight.values()]
                    self._inflight.clear()
                else:
                    stuck = []
            for items in stuck:
                self._complete(items, _empty(items))
            if self._timed_out.is_set():
                self._drain()

    def _check_backlog(self) -> None:
        """Give up (as after a timeout) when the oldest queued sample waited over ``max_queue_wait_s``."""
        if self.max_queue_wait_s is None or self._timed_out.is_set():
            return
        with self.queue.mutex:
            oldest = next((it for it in self.queue.queue if isinstance(it, _Item)), None)
            queued = len(self.queue.queue)
        waited = time.perf_counter() - oldest.t_enqueue if oldest is not None else 0.0
        if waited > self.max_queue_wait_s:
            with self._stats_lock:
                self.error = self.error or OverloadError(
                    f"the system cannot keep up with the arrival rate: a sample waited {waited:.1f} s in the "
                    f"queue (limit {self.max_queue_wait_s:g} s), {queued} queued; lower target_qps (--qps)")
                self._timed_out.set()

    def _drain(self) -> None:
        """After a timeout: answer every queued sample empty (the workers may all be stuck)."""
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self.queue.put(_STOP)
                return
            self._complete([item], _empty([item]))

    def _to_device(self, samples: list[np.ndarray]) -> torch.Tensor:
        """Stage through a pooled feeder; it goes back as soon as the copy is queued."""
        try:
            feeder = self._staging.get_nowait()
        except queue.Empty:
            with self._stats_lock:
                make = self._staging_made < MAX_STAGING
                self._staging_made += make
            feeder = (HostToDevice(self.device, self.max_batch_size, self.qsl.sample_shape) if make
                      else self._staging.get())  # fmt: skip
        try:
            return feeder(samples)
        finally:
            self._staging.put(feeder)

    def _run_batch(self, items: list[_Item]) -> list[np.ndarray]:
        """The model's responses to one batch (float32 (K, 7) per sample)."""
        index = np.array([it.index for it in items], np.int64)
        if self.predict_samples is not None:
            return detections_to_responses(index, check_detections(self.predict_samples(index)))
        batch = self._to_device([self.qsl.get(int(i)) for i in index])
        with torch.inference_mode():
            dets = check_detections(self.predict(batch))
        return detections_to_responses(index, dets)

    def _complete(self, items: list[_Item], arrays: list[np.ndarray]) -> None:
        import mlperf_loadgen as lg

        responses = [lg.QuerySampleResponse(it.id, a.ctypes.data, a.nbytes) for it, a in zip(items, arrays)]
        lg.QuerySamplesComplete(responses)  # LoadGen copies the bytes here; `arrays` lives until now
        now = time.perf_counter_ns()
        with self._stats_lock:
            for it in items:
                self.responded[it.id] += 1
                self.sample_latencies_ns.append(now - it.query.t_issue)
                self.sample_spans_ns.append((it.query.t_issue, now))
                it.query.remaining -= 1
                if it.query.remaining == 0:
                    self.query_latencies_ns.append(now - it.query.t_issue)
                    self.query_spans_ns.append((it.query.t_issue, now))

    # ---- teardown and checks ----
    def stop(self) -> None:
        """Stop the workers (after LoadGen returned: every query is answered by then). After a
        timeout a hung worker is left behind (a daemon thread) instead of being waited for."""
        self._stopping.set()
        for _ in self._workers:
            self.queue.put(_STOP)
        for w in self._workers:
            w.join(STOP_JOIN_S if self._timed_out.is_set() else None)
        if self._watchdog is not None:
            self._watchdog.join()

    def response_problems(self) -> str | None:
        """None when every issued id got exactly one response; else a description."""
        lost = [i for i in self.issued if self.responded[i] < self.issued[i]]
        extra = [i for i in self.responded if self.responded[i] > self.issued.get(i, 0)]
        if not lost and not extra:
            return None
        return f"{len(lost)} queries never answered, {len(extra)} answered more than once"
