"""Human report of a LoadGen run: VALID/INVALID and why, throughput, latency percentiles, histogram.

Everything comes from LoadGen's ``mlperf_log_summary.txt`` (the official verdict) plus the
per-query latencies the SUT recorded (for the histogram; LoadGen's summary only has percentiles).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_METRIC_KEYS = ("Samples per second", "Completed samples per second", "QPS w/o loadgen overhead",
                "Scheduled samples per second")  # fmt: skip
_LATENCY = re.compile(r"^(Min|Max|Mean|[\d.]+ percentile) latency \(ns\)\s*:\s*(\d+)")
_HEADLINE = re.compile(r"^([\d.]+)(?:th)? percentile latency \(ns\)\s*:\s*(\d+)")


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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(summary: Summary, settings: dict, latencies_ns, batch_sizes) -> str:
    """Markdown report."""
    lines = [f"# SSD-Large LoadGen run: {summary.scenario} / {summary.mode}", "",
             f"**Result: {summary.result}**", ""]  # fmt: skip
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
    sut = settings.get("sut", {})
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(sut.items())),
              "LoadGen: " + ", ".join(f"{k}={v}" for k, v in sorted(settings.get("loadgen", {}).items())),
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


def write_report(out_dir: str | Path, settings: dict, latencies_ns, batch_sizes) -> Summary:
    """Parse the summary in ``out_dir``; write report.md and latency_histogram.png there."""
    out_dir = Path(out_dir)
    summary = parse_summary(out_dir / "mlperf_log_summary.txt")
    if settings.get("mode") == "accuracy":
        summary.result, summary.mode = ACCURACY_ONLY, summary.mode or "AccuracyOnly"
        summary.scenario = summary.scenario or settings.get("scenario", "")
        summary.reasons = ["accuracy mode: latencies are not a benchmark result; see accuracy.txt"]
    title = f"{summary.scenario} {summary.mode}: {summary.result}"
    bound = settings.get("loadgen", {}).get("target_latency") if summary.scenario == "Server" else None
    latency_histogram(latencies_ns, out_dir / "latency_histogram.png", title, bound)
    (out_dir / "report.md").write_text(render(summary, settings, latencies_ns, batch_sizes))
    return summary
