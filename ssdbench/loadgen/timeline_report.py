"""The "over time" part of a LoadGen run's report: two pictures and the bound's story.

`write_timeline(run_dir, scenario, sut)` reads the timeline (`loadgen.timeline`: LoadGen's trace
when there is one, else the SUT's timings), writes ``latency_timeline.png`` (each query's latency
against its issue time, the bound drawn, the first query over it marked, the p99 of each time
window) and ``throughput_timeline.png`` (completed samples per second over the run), and returns
the report.md lines that show them and name the moment the bound was first broken. The bound is
LoadGen's Server ``effective_target_latency_ns`` from the detail log; SingleStream, MultiStream
and Offline have none (their metric is a latency percentile or a throughput).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssdbench.loadgen.detail_log import read_detail_log
from ssdbench.loadgen.timeline import (
    LATENCY_PNG,
    THROUGHPUT_PNG,
    TRACE_ENV,
    TRACE_FILE,
    BoundReport,
    Timeline,
    bound_report,
    from_sut,
    read_trace,
    throughput,
)


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
    fig.savefig(path, dpi=90)
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
    fig.savefig(path, dpi=90)
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
