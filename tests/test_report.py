"""The human report of a LoadGen run (`ssdbench.loadgen.report`): parsing LoadGen's summary."""

from __future__ import annotations

from ssdbench.loadgen.report import parse_summary


def test_report_parses_an_invalid_summary(tmp_path):
    path = tmp_path / "mlperf_log_summary.txt"
    path.write_text(
        "SUT name : PySUT\nScenario : SingleStream\nMode     : PerformanceOnly\n"
        "90.0th percentile latency (ns) : 2346285\nResult is : INVALID\n"
        "  Min duration satisfied : NO\n  Min queries satisfied : Yes\n  Early stopping satisfied: Yes\n"
        "Recommendations:\n * Decrease the expected latency so the loadgen pre-generates more queries.\n"
        "Early Stopping Result:\n * Processed at least 64 queries (121).\n"
        " * Not enough queries processed for 99.0th percentile\n early stopping estimate (would need to process at\n"
        " least 662 total queries).\n\n"
        "================================================\nAdditional Stats\n"
        "================================================\nQPS w/o loadgen overhead        : 432.94\n"
        "50.00 percentile latency (ns)   : 2000000\n"
    )
    s = parse_summary(path)
    assert (s.scenario, s.result) == ("SingleStream", "INVALID")
    assert s.reasons == ["Min duration satisfied: NO",
                         "Decrease the expected latency so the loadgen pre-generates more queries."]
    assert s.headline_ms == ("p90", 2.346285) and s.latencies_ms == {"50.00 percentile": 2.0}
    assert s.metrics == {"QPS w/o loadgen overhead": 432.94}
    assert s.early_stopping == ["Processed at least 64 queries (121).",
                                ("Not enough queries processed for 99.0th percentile early stopping estimate "
                                 "(would need to process at least 662 total queries).")]
