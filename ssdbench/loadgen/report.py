"""Human report of a LoadGen run: VALID/INVALID and why, throughput, latency percentiles, histogram.

The verdict is LoadGen's ``mlperf_log_summary.txt``, overruled to INVALID when the detail log
holds an error message (the MLPerf submission checker rejects such a run, e.g. LoadGen 6.x's
``error_invalid_config`` for a second config file in a process) or shows a setting other than
the one ssdbench set (`Checks`). The report also lists the detail log's warnings and the round's
result rules the run does not meet (a submission of it would be rejected: min duration, seeds,
...). The histogram uses the per-query latencies the SUT recorded (LoadGen's summary only has
percentiles).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssdbench.loadgen.official import official_section

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
    fig.savefig(path, dpi=100)
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
    (out_dir / "report.md").write_text(text + official_section(out_dir, settings))
    return summary
