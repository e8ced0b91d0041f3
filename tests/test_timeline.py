"""LoadGen over time (`ssdbench.loadgen.report`): the trace against the detail
log, the pictures of all four scenarios, the moment a Server bound was first broken."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from loadgen_fixtures import loadgen_env, one_detection

from ssdbench.loadgen import settings as S
from ssdbench.loadgen.report import TRACE_ENV, bound_report, from_sut, read_trace, throughput
from ssdbench.loadgen.rules import read_detail_log
from ssdbench.loadgen.run import RunInputs, run_loadgen

RUNS = {  # CI-sized settings (see tests/test_run.py)
    "SingleStream": {"min_duration": 200, "min_query_count": 70},
    "MultiStream": {"min_duration": 200, "min_query_count": 100, "samples_per_query": 2, "max_batch_size": 2},
    "Server": {"min_duration": 300, "min_query_count": 150, "target_qps": 400, "target_latency": 2000,
               "max_batch_size": 8, "batch_timeout_us": 1000},
    "Offline": {"min_duration": 100, "min_query_count": 64, "target_qps": 2000},
}  # fmt: skip


@pytest.fixture(scope="module")
def lg_env(tmp_path_factory):
    yield from loadgen_env(tmp_path_factory, "timeline", val_images=8, seed=0, background_bias=3.0)


def fast_predict(batch):
    time.sleep(0.0005)
    return one_detection(len(batch))


def _latency_events(trace: Path) -> list[tuple[float, int]]:
    """(ts µs, issue_delay + issue_to_done ns) of LoadGen's per-query "Latency" counter events: an
    independent reading of the trace (the timeline reads the "Sample" events)."""
    events = []
    for line in trace.read_text().splitlines():
        if line.startswith('{"name":"Latency"'):
            e = json.loads(line.rstrip(","))
            events.append((e["ts"], e["args"]["issue_delay"] + e["args"]["issue_to_done"]))
    return events


@pytest.mark.parametrize("scenario", list(RUNS))
def test_pictures_for_every_scenario_trace_matches_detail_log(lg_env, tmp_path, scenario, monkeypatch):
    monkeypatch.setenv(TRACE_ENV, "1")
    data, _ = lg_env
    out = tmp_path / "out"
    flags = {**RUNS[scenario], "threads": 2, "warmup": 0}
    run = run_loadgen(S.resolve(scenario, "performance", "cpu", flags=flags), out,
                      RunInputs(data=data, predict=fast_predict), verbose=False)
    for name in ("latency_timeline.png", "throughput_timeline.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "## Over time" in report and "LoadGen trace" in report and "(latency_timeline.png)" in report
    timeline = read_trace(out / "mlperf_log_trace.json", scenario)
    detail = read_detail_log(out / "mlperf_log_detail.txt")
    assert timeline.latency_ns.max() == detail.get("result_max_latency_ns")
    assert timeline.latency_ns.min() == detail.get("result_min_latency_ns")
    samples = len(run.sut.sample_latencies_ns)
    assert timeline.done_s.size == samples
    if scenario != "Offline":
        assert timeline.latency_ns.size == detail.get("result_query_count") == len(run.sut.query_latencies_ns)
        assert np.all(np.diff(timeline.issue_s) >= 0) and timeline.issue_s[0] == 0
    centres, rate = throughput(timeline)  # equal windows from 0 to the last completion
    width = 2 * centres[0]
    assert np.sum(rate) * width == pytest.approx(samples)  # every sample counted once


def test_server_bound_first_broken_matches_the_trace_and_detail_log(lg_env, tmp_path, monkeypatch):
    """A stand-in network that turns slow after 60 calls breaks a 20 ms bound: the report names
    the first query over it, as LoadGen's own per-query counters in the trace show it, and counts
    as many over-bound queries as the detail log."""
    monkeypatch.setenv(TRACE_ENV, "1")
    data, _ = lg_env
    calls, lock = [0], threading.Lock()

    def slowing_predict(batch):
        with lock:
            calls[0] += 1
            slow = calls[0] > 60
        time.sleep(0.03 if slow else 0.0005)
        return one_detection(len(batch))

    flags = {"min_duration": 400, "min_query_count": 200, "target_qps": 300, "target_latency": 20,
             "max_batch_size": 1, "threads": 1, "warmup": 0}
    out = tmp_path / "out"
    run_loadgen(S.resolve("Server", "performance", "cpu", flags=flags), out,
                RunInputs(data=data, predict=slowing_predict), verbose=False)
    detail = read_detail_log(out / "mlperf_log_detail.txt")
    bound_ns = detail.get("effective_target_latency_ns")
    assert bound_ns == 20_000_000
    report = bound_report(read_trace(out / "mlperf_log_trace.json", "Server"), bound_ns)
    assert report.over == detail.get("result_overlatency_query_count") > 0
    events = _latency_events(out / "mlperf_log_trace.json")
    t0 = min(ts for ts, _ in events)
    first_ts = min(ts for ts, latency in events if latency > bound_ns)
    assert report.first_s == pytest.approx((first_ts - t0) / 1e6, abs=1e-9)
    assert sum(latency > bound_ns for _, latency in events) == report.over
    text = (out / "report.md").read_text()
    assert f"first broken at {report.first_s:.3f} s" in text
    assert f"result_overlatency_query_count = {report.over})" in text


def test_without_trace_the_sut_timings_are_used(lg_env, tmp_path, monkeypatch):
    monkeypatch.delenv(TRACE_ENV, raising=False)
    data, _ = lg_env
    out = tmp_path / "out"
    flags = {**RUNS["Server"], "threads": 2, "warmup": 0, "target_latency": 0.001}  # every query over
    run = run_loadgen(S.resolve("Server", "performance", "cpu", flags=flags), out,
                      RunInputs(data=data, predict=fast_predict), verbose=False)
    assert not (out / "mlperf_log_trace.json").exists()
    text = (out / "report.md").read_text()
    assert "the SUT's own timings" in text and f"{TRACE_ENV}=1" in text
    n = len(run.sut.query_latencies_ns)
    assert f"{n} of {n} queries over it" in text and "first broken at 0.000 s" in text
    assert (out / "latency_timeline.png").is_file() and (out / "throughput_timeline.png").is_file()


def test_from_sut_and_bound_report_by_hand():
    queries = [(1_000, 3_000), (5_000, 20_000), (2_000, 2_500)]  # (issue, done) ns, not in order
    timeline = from_sut(queries, queries, "Server")
    np.testing.assert_allclose(timeline.issue_s, [0, 1e-6, 4e-6])
    np.testing.assert_array_equal(timeline.latency_ns, [2_000, 500, 15_000])
    report = bound_report(timeline, 1_000)
    assert (report.over, report.first_index, report.first_latency_ns) == (2, 0, 2_000)
    assert bound_report(timeline, 2_000).first_index == 2  # LoadGen counts latency > bound
    assert bound_report(timeline, 15_000).first_s is None
