"""report.md of a LoadGen run and its pictures: the verdict and its reasons, latencies and the
histogram (`write_report`), the device pool's section (`write_device_report`) and the run over
time (`write_timeline`, from LoadGen's trace or the SUT's timings).

The verdict is LoadGen's ``mlperf_log_summary.txt``, overruled to INVALID when the detail log
holds an error message (the MLPerf submission checker rejects such a run, e.g. LoadGen 6.x's
``error_invalid_config`` for a second config file in a process) or shows a setting other than
the one ssdbench set (`Checks`). The report also lists the detail log's warnings and the round's
result rules the run does not meet (a submission of it would be rejected: min duration, seeds,
...). The histogram uses the per-query latencies the SUT recorded (LoadGen's summary only has
percentiles).

The device pool's part of report.md: per device the samples served, busy fraction and
samples/s, the pipe bytes per sample, and ``device_throughput.png`` (each device's samples/s
over the run, in time bins).

A LoadGen run over time: each query's latency against its issue time, throughput per second,
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

The "over time" part of a LoadGen run's report: two pictures and the bound's story.

`write_timeline(run_dir, scenario, sut)` reads the timeline (`read_trace`: LoadGen's trace
when there is one, else the SUT's timings), writes ``latency_timeline.png`` (each query's latency
against its issue time, the bound drawn, the first query over it marked, the p99 of each time
window) and ``throughput_timeline.png`` (completed samples per second over the run), and returns
the report.md lines that show them and name the moment the bound was first broken. The bound is
LoadGen's Server ``effective_target_latency_ns`` from the detail log; SingleStream, MultiStream
and Offline have none (their metric is a latency percentile or a throughput).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssdbench.io import atomic_write, atomic_write_text
from ssdbench.loadgen.rules import official_section, read_detail_log

_METRIC_KEYS = ("Samples per second", "Completed samples per second", "QPS w/o loadgen overhead",
                "Scheduled samples per second")  # fmt: skip
_LATENCY = re.compile(r"^(Min|Max|Mean|[\d.]+ percentile) latency \(ns\)\s*:\s*(\d+)")
_HEADLINE = re.compile(r"^([\d.]+)(?:th)? percentile latency \(ns\)\s*:\s*(\d+)")


@dataclass
class Checks:
    """What the detail log says beyond LoadGen's verdict (filled by `ssdbench.loadgen.run`)."""

    errors: list[str] = field(default_factory=list)  # detail-log error messages ("key: value")
    warnings: list[str] = field(default_factory=list)  # detail-log warning messages
    not_applied: list[str] = field(default_factory=list)  # effective_* values other than the ones set
    round: str = ""  # the MLPerf round whose rules were checked
    round_violations: list[str] = field(default_factory=list)  # its result rules this run misses
    peak_qps: float | None = None  # FindPeakPerformance (--find-peak): the highest VALID target_qps

    def invalid_reasons(self) -> list[str]:
        """Why the run is INVALID whatever LoadGen's summary says (empty when nothing is wrong)."""
        return ([f"detail log error: {e}" for e in self.errors]
                + [f"setting not applied: {p}" for p in self.not_applied])  # fmt: skip


@dataclass
class Summary:
    """The parts of ``mlperf_log_summary.txt`` the report needs."""

    scenario: str = ""
    mode: str = ""
    result: str = "UNKNOWN"  # VALID / INVALID
    reasons: list[str] = field(default_factory=list)  # why INVALID: failed checks + recommendations
    early_stopping: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # samples/s figures
    latencies_ms: dict[str, float] = field(default_factory=dict)  # "Min", "50.00 percentile", ...
    headline_ms: tuple[str, float] | None = None  # SingleStream/MultiStream metric (percentile, ms)
    loadgen_result: str = ""  # LoadGen's own verdict when the detail-log checks overrule it


def parse_summary(path: str | Path) -> Summary:
    """Parse LoadGen's summary file; FileNotFoundError when LoadGen did not write it."""
    text = Path(path).read_text()
    summary, section = Summary(), None
    for raw in text.splitlines():
        line = raw.strip()
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("Scenario", "Mode"):
            setattr(summary, key.lower(), value)
        elif key == "Result is":
            summary.result, section = value, "checks"
        elif line.startswith("Recommendations"):
            section = "recommendations"
        elif line.startswith("Early Stopping Result"):
            section = "early"
        elif line.startswith("====="):
            section = None
        elif section == "checks" and value.upper() == "NO":
            summary.reasons.append(f"{key}: NO")
        elif section in ("recommendations", "early") and line:
            _add_bullet(summary.reasons if section == "recommendations" else summary.early_stopping, line)
        _parse_numbers(summary, line, key, value)
    return summary


def _add_bullet(items: list[str], line: str) -> None:
    """LoadGen wraps long bullets ("* ...") onto lines without a star: join them back."""
    if line.startswith("*") or not items:
        items.append(line.lstrip("* "))
    else:
        items[-1] += " " + line


def _parse_numbers(summary: Summary, line: str, key: str, value: str) -> None:
    if key in _METRIC_KEYS:
        summary.metrics[key] = float(value)
    if match := _LATENCY.match(line):
        summary.latencies_ms[match.group(1)] = int(match.group(2)) / 1e6
    elif match := _HEADLINE.match(line):
        summary.headline_ms = (f"p{float(match.group(1)):g}", int(match.group(2)) / 1e6)


def latency_histogram(latencies_ns, path: str | Path, title: str, bound_ms: float | None = None) -> None:
    """PNG histogram of per-query latencies (ms) with p50/p90/p99 and the latency bound marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    ms = np.asarray(latencies_ns, np.float64) / 1e6
    fig, ax = plt.subplots(figsize=(7, 4))
    if ms.size:
        ax.hist(ms, bins=min(60, max(5, ms.size // 5)), color="#4a7ab5")
        for q, style in ((50, "-"), (90, "--"), (99, ":")):
            v = np.percentile(ms, q)
            ax.axvline(v, color="k", linestyle=style, linewidth=1, label=f"p{q} = {v:.2f} ms")
        if bound_ms is not None:
            ax.axvline(bound_ms, color="#c03030", linewidth=1.5, label=f"bound {bound_ms:g} ms")
        ax.legend()
    ax.set_xlabel("query latency measured by the SUT (ms)")
    ax.set_ylabel("queries")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


def _checks_lines(checks: Checks | None) -> list[str]:
    """The detail-log and round sections of the report."""
    if checks is None:
        return []
    lines = []
    if checks.peak_qps is not None:
        peak = (f"FindPeakPerformance: peak target_qps = {checks.peak_qps:g}: the highest rate whose p99 latency "
                "met the bound in LoadGen's search (it does not ask for early stopping); confirm it with a "
                "performance run at --qps of that value")
        lines += ["", peak]
    lines += ["", f"Detail log: {len(checks.errors)} error(s), {len(checks.warnings)} warning(s)"]
    lines += [f"- error: {e}" for e in checks.errors] + [f"- warning: {w}" for w in checks.warnings]
    lines += [f"- setting not applied: {p}" for p in checks.not_applied]
    if checks.round:
        if checks.round_violations:
            lines += ["", f"Round {checks.round} rules not met (a submission of this run would be rejected):"]
            lines += [f"- {v}" for v in checks.round_violations]
        else:
            lines += ["", f"Round {checks.round} rules: met (seeds, duration, query counts, latency)"]
    return lines


def render(summary: Summary, settings: dict, latencies_ns, batch_sizes, checks: Checks | None = None) -> str:
    """Markdown report."""
    lines = [f"# SSD-Large LoadGen run: {summary.scenario} / {summary.mode}", "",
             f"**Result: {summary.result}**", ""]  # fmt: skip
    if summary.loadgen_result:
        lines += [f"(LoadGen's summary says {summary.loadgen_result}; the detail log overrules it)", ""]
    if summary.result == ACCURACY_ONLY:
        lines += summary.reasons + [""]
    elif summary.result != "VALID":
        lines += ["Why:"] + [f"- {r}" for r in summary.reasons or ["(LoadGen gave no reason)"]] + [""]
    if summary.early_stopping:
        lines += ["Early stopping:"] + [f"- {r}" for r in summary.early_stopping] + [""]
    lines += ["| metric | value |", "|---|---|"]
    if summary.headline_ms:
        lines.append(f"| {summary.headline_ms[0]} latency (metric) | {summary.headline_ms[1]:.3f} ms |")
    lines += [f"| {k} | {v:.2f} |" for k, v in summary.metrics.items()]
    lines += [f"| {k} latency | {v:.3f} ms |" for k, v in summary.latencies_ms.items()]
    if len(batch_sizes):
        lines.append(f"| mean batch size | {float(np.mean(batch_sizes)):.2f} |")
    lines.append(f"| latencies timed by the SUT (histogram) | {len(latencies_ns)} |")
    lines += _checks_lines(checks)
    sut = settings.get("sut", {})
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(sut.items())),
              "LoadGen: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.get("loadgen", {}).items())),
              f"Round: {settings.get('round', '')}, seeds: "
              + ", ".join(f"{k}={v}" for k, v in settings.get("seeds", {}).items()),
              "", ("Files: mlperf_log_summary.txt, mlperf_log_detail.txt, mlperf_log_accuracy.json, "
                   "settings.conf, settings.json, latency_histogram.png")]  # fmt: skip
    return "\n".join(lines) + "\n"


def short_text(summary: Summary) -> str:
    """Few lines for stdout."""
    lines = [f"Result: {summary.result}"]
    if summary.result != "VALID":
        lines += [f"  - {r}" for r in summary.reasons]
    if summary.headline_ms:
        lines.append(f"{summary.headline_ms[0]} latency: {summary.headline_ms[1]:.3f} ms")
    lines += [f"{k}: {v:.2f}" for k, v in summary.metrics.items()]
    lat = summary.latencies_ms
    if lat:
        pairs = (f"{k.replace(' percentile', '')}={v:.2f}" for k, v in lat.items())
        lines.append("latency ms: " + ", ".join(pairs))
    return "\n".join(lines)


ACCURACY_ONLY = "ACCURACY-ONLY"  # accuracy runs have no performance verdict


def write_report(out_dir: str | Path, settings: dict, latencies_ns, batch_sizes,
                 checks: Checks | None = None) -> Summary:  # fmt: skip
    """Parse the summary in ``out_dir``; write report.md and latency_histogram.png there.

    ``checks`` (the detail log's errors and effective values) turn the result INVALID when they
    find anything wrong, with the reasons first.
    """
    out_dir = Path(out_dir)
    summary = parse_summary(out_dir / "mlperf_log_summary.txt")
    if settings.get("mode") == "accuracy":
        summary.result, summary.mode = ACCURACY_ONLY, summary.mode or "AccuracyOnly"
        summary.scenario = summary.scenario or settings.get("scenario", "")
        summary.reasons = ["accuracy mode: latencies are not a benchmark result; see accuracy.txt"]
    invalid = checks.invalid_reasons() if checks is not None else []
    if invalid:
        summary.loadgen_result, summary.result = summary.result, "INVALID"
        summary.reasons = invalid + [r for r in summary.reasons if summary.loadgen_result != ACCURACY_ONLY]
    title = f"{summary.scenario} {summary.mode}: {summary.result}"
    bound = settings.get("loadgen", {}).get("target_latency") if summary.scenario == "Server" else None
    latency_histogram(latencies_ns, out_dir / "latency_histogram.png", title, bound)
    text = render(summary, settings, latencies_ns, batch_sizes, checks)
    atomic_write_text(out_dir / "report.md", text + official_section(out_dir, settings))
    return summary


DEVICE_PICTURE = "device_throughput.png"


def device_lines(stats: list[dict], bytes_per_sample: float | None, scenario: str) -> list[str]:
    """Markdown lines of the per-device section."""
    total = sum(s["samples"] for s in stats) or 1
    dispatch = ("one batcher per device (its own batch timeout), each batch to the least-loaded device"
                if scenario == "Server" else "each device takes the next batch when it is free")
    lines = ["", "## Devices", "",
             (f"{len(stats)} worker(s), one per device; samples go by index (shared uint8 set), "
              f"{dispatch}."), "",
             "| worker | device | cores | samples | share | batches | busy | samples/s |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for s in stats:
        cores = f"{s['cores'][0]}-{s['cores'][-1]}" if len(s["cores"]) > 1 else str(s["cores"][0])
        lines.append(f"| {s['worker']} | {s['device']} | {cores} | {s['samples']} | "
                     f"{100 * s['samples'] / total:.0f}% | {s['batches']} | {100 * s['busy_fraction']:.0f}% | "
                     f"{s['samples_per_s']:.2f} |")  # fmt: skip
    if bytes_per_sample is not None:
        lines += ["", f"Pipe bytes per sample (indices out, valid detections back): {bytes_per_sample:.0f}"]
    if scenario in ("SingleStream", "MultiStream"):
        lines += ["", f"{scenario} has one query in flight: it runs on one device at a time."]
    lines += ["", f"Per-device throughput over the run: {DEVICE_PICTURE}"]
    return lines


def device_throughput_picture(stats: list[dict], path: str | Path, bins: int = 20) -> None:
    """Each device's samples/s over the run (completions in ``bins`` equal time bins)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    end = max((t for s in stats for t, _ in s["done"]), default=0.0) or 1.0
    width = end / bins
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for s in stats:
        counts = [0] * bins
        for t, n in s["done"]:
            counts[min(int(t / width), bins - 1)] += n
        ax.step([width * (k + 1) for k in range(bins)], [c / width for c in counts], where="pre",
                label=f"{s['worker']}: {s['device']}")  # fmt: skip
    ax.set_xlabel("seconds since the first batch")
    ax.set_ylabel("samples/s")
    ax.set_title("per-device throughput")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)


def append_to_report(folder: str | Path, lines: list[str]) -> None:
    """``lines`` added at the end of ``folder/report.md`` (the file replaced whole, atomically)."""
    path = Path(folder) / "report.md"
    atomic_write_text(path, path.read_text(encoding="utf-8") + "\n".join(lines) + "\n")


def write_device_report(folder: str | Path, stats: list[dict], bytes_per_sample: float | None,
                        scenario: str) -> None:  # fmt: skip
    """Append the section to ``folder/report.md`` and draw the picture there."""
    folder = Path(folder)
    append_to_report(folder, device_lines(stats, bytes_per_sample, scenario))
    device_throughput_picture(stats, folder / DEVICE_PICTURE)


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def _window_p99(timeline: Timeline, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(window centres, p99 latency ms of the points issued in each window with >= 5 points)."""
    x, ms = timeline.x_s(), timeline.latency_ns / 1e6
    if x.size < 10:
        return np.zeros(0), np.zeros(0)
    edges = np.linspace(0.0, max(float(x.max()), 1e-6), bins + 1)
    which = np.clip(np.digitize(x, edges) - 1, 0, bins - 1)
    keep = [b for b in range(bins) if (which == b).sum() >= 5]
    return (np.asarray([(edges[b] + edges[b + 1]) / 2 for b in keep]),
            np.asarray([np.percentile(ms[which == b], 99) for b in keep]))


def latency_picture(timeline: Timeline, path: str | Path, title: str, bound: BoundReport | None) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x, ms = timeline.x_s(), timeline.latency_ns / 1e6
    over = np.zeros(x.size, bool) if bound is None else timeline.latency_ns > bound.bound_ns
    ax.scatter(x[~over], ms[~over], s=4, color="#4a7ab5", label="sample" if timeline.per_sample else "query")
    if over.any():
        ax.scatter(x[over], ms[over], s=5, color="#d04040", label=f"over the bound ({int(over.sum())})")
    centres, p99 = _window_p99(timeline)
    if centres.size:
        ax.plot(centres, p99, color="k", linewidth=1, label="p99 per window")
    if bound is not None:
        ax.axhline(bound.bound_ns / 1e6, color="#c03030", linewidth=1.2, linestyle="--",
                   label=f"bound {bound.bound_ns / 1e6:g} ms")
        if bound.first_s is not None:
            ax.axvline(bound.first_s, color="#c03030", linewidth=1, linestyle=":",
                       label=f"first broken at {bound.first_s:.3f} s")
    ax.set_xlabel("sample completed at (s)" if timeline.per_sample else "query issued at (s)")
    ax.set_ylabel("latency (ms)")
    if ms.size and ms.max() > 50 * max(float(np.median(ms)), 1e-3):
        ax.set_yscale("log")  # a run that broke its bound: keep the bound and the fast queries readable
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)
    return Path(path)


def throughput_picture(timeline: Timeline, path: str | Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.0))
    centres, rate = throughput(timeline)
    if centres.size:
        ax.step(centres, rate, where="mid", color="#2f7d4f", label="completed samples/s per window")
        span = float(timeline.done_s.max())
        ax.axhline(timeline.done_s.size / span if span > 0 else 0, color="k", linestyle="--", linewidth=1,
                   label=f"mean {timeline.done_s.size / max(span, 1e-9):.1f} samples/s")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("samples/s")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)
    return Path(path)


def load_timeline(run_dir: Path, scenario: str, sut=None) -> Timeline | None:
    """LoadGen's trace when it holds sample events, else the SUT's timings, else None."""
    trace = run_dir / TRACE_FILE
    if trace.is_file() and trace.stat().st_size > 0:
        try:
            return read_trace(trace, scenario)
        except ValueError:
            pass
    spans = getattr(sut, "query_spans_ns", None)
    if spans:
        return from_sut(spans, sut.sample_spans_ns, scenario)
    return None


def server_bound(detail, scenario: str) -> int | None:
    """LoadGen's Server latency bound (ns) from the detail log; None in the other scenarios."""
    if scenario != "Server" or detail is None:
        return None
    value = detail.get("effective_target_latency_ns")
    return int(value) if value else None


def bound_lines(bound: BoundReport | None, detail) -> list[str]:
    if bound is None:
        return ["- This scenario has no per-query latency bound (its metric is a percentile or a throughput)."]
    limit = f"{bound.bound_ns / 1e6:g} ms"
    logged = detail.get("result_overlatency_query_count") if detail is not None else None
    check = f" (detail log: result_overlatency_query_count = {logged})" if logged is not None else ""
    if bound.first_s is None:
        return [f"- Latency bound {limit}: never broken; 0 of {bound.total} queries over it{check}."]
    first = (f"- Latency bound {limit}: **first broken at {bound.first_s:.3f} s** into the run (query "
             f"{bound.first_index + 1} in issue order, {bound.first_latency_ns / 1e6:.3f} ms); "
             f"{bound.over} of {bound.total} queries over it{check}.")
    return [first]


def write_timeline(run_dir: str | Path, scenario: str, sut=None, title: str = "") -> list[str]:
    """Write the two pictures into ``run_dir``; the report.md section (no lines without a timeline)."""
    run_dir = Path(run_dir)
    timeline = load_timeline(run_dir, scenario, sut)
    if timeline is None:
        return []
    detail_path = run_dir / "mlperf_log_detail.txt"
    detail = read_detail_log(detail_path) if detail_path.is_file() else None
    bound_ns = server_bound(detail, scenario)
    bound = bound_report(timeline, bound_ns) if bound_ns else None
    title = title or f"{scenario}"
    latency_picture(timeline, run_dir / LATENCY_PNG, f"{title}: latency over time", bound)
    throughput_picture(timeline, run_dir / THROUGHPUT_PNG, f"{title}: throughput over time")
    source = timeline.source if "trace" in timeline.source else (
        f"{timeline.source}; {TRACE_ENV}=1 makes LoadGen write its own per-query times ({TRACE_FILE})")
    return (["", "## Over time", "", f"Times from {source}.", ""] + bound_lines(bound, detail)
            + ["", f"![latency over time]({LATENCY_PNG})", "", f"![throughput over time]({THROUGHPUT_PNG})"])
