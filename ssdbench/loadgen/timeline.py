"""A LoadGen run over time: each query's latency against its issue time, throughput per second,
and the moment a latency bound was first broken.

Sources, best first:
- LoadGen's trace, ``mlperf_log_trace.json`` (written when ``SSDBENCH_LOADGEN_TRACE=1``; LoadGen
  6.0.17 writes one Chrome-trace event per line, and the file as a whole is not valid JSON: some
  ``LogDetail`` lines carry doubled quotes, so it is read line by line). Each sample has a
  ``"Sample"`` begin event: ``ts`` (microseconds since the trace origin) is its query's scheduled
  time, ``args.complete_ns`` the nanoseconds from then to its completion, ``args.query_seq`` its
  query. A query's latency is its last sample's ``complete_ns``: these are the latencies LoadGen
  scores (their maximum, minimum and the count over the Server bound equal the detail log's
  ``result_max_latency_ns``, ``result_min_latency_ns`` and ``result_overlatency_query_count``;
  tests/test_timeline.py checks it on runs of all four scenarios).
- Otherwise the SUT's own timings (`sut.BatchingSUT`: IssueQuery call to QuerySamplesComplete,
  perf_counter), which miss LoadGen's scheduling delay.

The detail log itself holds no per-query times in LoadGen 6.0.17 (only the results above), and
the trace costs about 1.3 KB per sample, which is why it is off by default.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRACE_ENV = "SSDBENCH_LOADGEN_TRACE"  # "1": LoadGen writes mlperf_log_trace.json
TRACE_FILE = "mlperf_log_trace.json"
LATENCY_PNG, THROUGHPUT_PNG = "latency_timeline.png", "throughput_timeline.png"
_SAMPLE_BEGIN = '{"name":"Sample"'


def trace_enabled() -> bool:
    return os.environ.get(TRACE_ENV, "").strip() == "1"


@dataclass
class Timeline:
    """Per query (Offline: per sample): when it was issued and its latency; per sample: when it
    completed. Times in seconds from the first issue."""

    scenario: str
    source: str  # where the times come from, in words
    issue_s: np.ndarray  # (Q,)
    latency_ns: np.ndarray  # (Q,) int64
    done_s: np.ndarray  # (S,) completion time of every sample

    @property
    def per_sample(self) -> bool:
        """Offline is one query: its samples are the points (against their completion time)."""
        return self.scenario == "Offline"

    def x_s(self) -> np.ndarray:
        return self.issue_s + self.latency_ns / 1e9 if self.per_sample else self.issue_s


def read_trace(path: str | Path, scenario: str) -> Timeline:
    """The timeline in LoadGen's trace; ValueError naming the file when it has no sample events."""
    rows = []  # (ts_us, query_seq, complete_ns)
    with open(path) as f:
        for line in f:
            if line.startswith(_SAMPLE_BEGIN) and '"ph":"b"' in line:
                event = json.loads(line.rstrip().rstrip(","))
                rows.append((event["ts"], event["args"]["query_seq"], event["args"]["complete_ns"]))
    if not rows:
        raise ValueError(f"{path}: no LoadGen sample events (was the trace enabled?)")
    ts_us, query, complete = (np.asarray(c) for c in zip(*rows))
    t0 = ts_us.min()
    start_s, complete = (ts_us - t0) / 1e6, complete.astype(np.int64)
    done_s = start_s + complete / 1e9
    if scenario == "Offline":
        return Timeline(scenario, f"LoadGen trace ({TRACE_FILE})", start_s, complete, done_s)
    queries, first, inverse = np.unique(query, return_index=True, return_inverse=True)
    latency = np.zeros(len(queries), np.int64)
    np.maximum.at(latency, inverse, complete)  # a query ends with its last sample
    order = np.argsort(start_s[first], kind="stable")
    return Timeline(scenario, f"LoadGen trace ({TRACE_FILE})", start_s[first][order], latency[order], done_s)


def from_sut(query_spans_ns, sample_spans_ns, scenario: str) -> Timeline:
    """The timeline of the SUT's (issue, done) perf_counter_ns pairs per query and per sample."""
    samples = np.asarray(sample_spans_ns, np.int64).reshape(-1, 2)
    spans = samples if scenario == "Offline" else np.asarray(query_spans_ns, np.int64).reshape(-1, 2)
    t0 = spans[:, 0].min() if len(spans) else 0
    order = np.argsort(spans[:, 0], kind="stable")
    return Timeline(scenario, "the SUT's own timings (IssueQuery to QuerySamplesComplete)",
                    (spans[order, 0] - t0) / 1e9, spans[order, 1] - spans[order, 0], (samples[:, 1] - t0) / 1e9)


@dataclass
class BoundReport:
    """The queries over a latency bound."""

    bound_ns: int
    over: int  # queries over it
    total: int
    first_s: float | None  # issue time of the first query over it (Offline: completion time)
    first_index: int | None  # its position in issue order (0-based)
    first_latency_ns: int | None


def bound_report(timeline: Timeline, bound_ns: int) -> BoundReport:
    """Which queries took longer than ``bound_ns`` (LoadGen counts ``latency > bound``)."""
    over = np.flatnonzero(timeline.latency_ns > bound_ns)
    if not over.size:
        return BoundReport(int(bound_ns), 0, len(timeline.latency_ns), None, None, None)
    x = timeline.x_s()
    first = int(over[np.argmin(x[over])])
    return BoundReport(int(bound_ns), int(over.size), len(timeline.latency_ns), float(x[first]), first,
                       int(timeline.latency_ns[first]))


def throughput(timeline: Timeline, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(window centres s, completed samples per second in each window) over the run."""
    if not timeline.done_s.size:
        return np.zeros(0), np.zeros(0)
    end = max(float(timeline.done_s.max()), 1e-6)
    edges = np.linspace(0.0, end, max(2, min(bins, timeline.done_s.size // 2)) + 1)
    counts, _ = np.histogram(timeline.done_s, edges)
    return (edges[:-1] + edges[1:]) / 2, counts / np.diff(edges)
