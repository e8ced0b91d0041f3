"""`ssdbench loadgen` end to end: the four LoadGen scenarios on CPU, failed runs, one-line errors.

Runs use ssd128_mini on a 12-image synthetic val set with CI-sized LoadGen settings (min duration
0.2-0.5 s, a few hundred queries: the fewest LoadGen's early-stopping estimate accepts).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from loadgen_fixtures import loadgen_env, one_detection

from ssdbench import cli
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.report import parse_summary
from ssdbench.loadgen.run import RunFailed, RunInputs, run_loadgen


@pytest.fixture(scope="module")
def lg_env(tmp_path_factory):
    """(dataset root, weights file) with the sample cache in a temporary folder."""
    # bias 3: few candidates reach post-processing, so the timed runs stay fast
    yield from loadgen_env(tmp_path_factory, "lg", val_images=12, seed=0, background_bias=3.0)


def _error_line(capsys) -> str:
    """The one error line on stderr (progress bars aside); fails on a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("ssdbench loadgen: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _cli(*argv) -> int:
    return cli.main(["loadgen", *map(str, argv)])


BASE = ("--preset", "cpu", "--threads", "1", "--warmup", "1")
# Early stopping needs >= 64 queries for SingleStream's p90 and ~460-660 for a p99 (LoadGen).
MODEL_RUNS = {
    "SingleStream": ("--min-duration", 0.2, "--min-query-count", 70, "--latency", 1),
    "Offline": ("--min-duration", 0.1, "--min-query-count", 64, "--qps", 2000),  # 220 samples
}
HARNESS_RUNS = {
    "MultiStream": {"min_duration": 200, "min_query_count": 662, "samples_per_query": 2,
                    "target_latency": 1, "max_batch_size": 2},
    "Server": {"min_duration": 300, "min_query_count": 470, "target_qps": 600, "target_latency": 2000,
               "max_batch_size": 8, "batch_timeout_us": 1000},
}  # fmt: skip


def fast_predict(batch, service_s=0.0005):
    """A stand-in network with a fixed service time and one detection per image (padded format)."""
    time.sleep(service_s)
    return one_detection(len(batch))


def _assert_published(out: Path, run=None) -> None:
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json",
                 "report.md", "latency_histogram.png", "settings.conf", "settings.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith((".incomplete", "failed-"))]
    saved = json.loads((out / "settings.json").read_text())
    assert list(saved["sut"]) == list(S.SUT_KEYS)  # every SUT key, in the documented order
    conf_keys = {line.split("=")[0].split(".")[-1].strip() for line in (out / "settings.conf").read_text().splitlines()
                 if line and not line.startswith("#")}  # fmt: skip
    assert conf_keys and not conf_keys & set(S.SUT_KEYS)  # SUT keys never reach LoadGen
    if run is not None:
        assert saved["sut"] == asdict(run.settings.sut) and saved["loadgen"] == run.settings.loadgen


@pytest.mark.parametrize("scenario", list(MODEL_RUNS))
def test_scenario_runs_valid_with_model(lg_env, tmp_path, scenario, capsys):
    """The whole command with ssd128_mini: QSL, batcher, backend, LoadGen, report."""
    data, weights = lg_env
    out = tmp_path / "out"
    rc = _cli("--scenario", scenario, *BASE, *MODEL_RUNS[scenario], "--data", data,
              "--weights", weights, "--out", out)  # fmt: skip
    summary = parse_summary(out / "mlperf_log_summary.txt")
    assert (summary.scenario, summary.result) == (scenario, "VALID"), summary.reasons
    assert rc == 0 and "Result: VALID" in capsys.readouterr().out
    assert "**Result: VALID**" in (out / "report.md").read_text()
    _assert_published(out)


@pytest.mark.parametrize("scenario", list(HARNESS_RUNS))
def test_scenario_runs_valid_harness(lg_env, tmp_path, scenario):
    """The scenarios that need hundreds of queries for LoadGen's p99 early-stopping estimate run
    with a stand-in network (0.5 ms per batch) so that CI stays fast; the harness is the same."""
    data, _ = lg_env
    flags = {**HARNESS_RUNS[scenario], "threads": 2, "warmup": 0}
    run = run_loadgen(S.resolve(scenario, "performance", "cpu", flags=flags), tmp_path / "out",
                      RunInputs(data=data, predict=fast_predict), verbose=False)  # fmt: skip
    assert run.result == "VALID", run.summary.reasons
    assert run.summary.scenario == scenario and run.sut.response_problems() is None
    if scenario == "MultiStream":  # 2 samples per query, the latency counted once per query
        assert len(run.sut.issued) == 2 * len(run.sut.query_latencies_ns)
    _assert_published(tmp_path / "out", run)


def test_impossible_latency_is_invalid_with_reason(lg_env, tmp_path, capsys):
    data, weights = lg_env
    out = tmp_path / "out"
    rc = _cli("--scenario", "Server", *BASE, "--latency", 0.001, "--qps", 50, "--min-duration", 0.2,
              "--min-query-count", 10, "--data", data, "--weights", weights, "--out", out)  # fmt: skip
    summary = parse_summary(out / "mlperf_log_summary.txt")
    assert rc == 1 and summary.result == "INVALID"
    assert "Performance constraints satisfied: NO" in summary.reasons
    assert "Reduce target QPS to improve latency." in summary.reasons
    assert "Performance constraints satisfied: NO" in (out / "report.md").read_text()
    assert "Result: INVALID" in capsys.readouterr().out


def test_server_random_arrivals_answer_each_query_once(lg_env, tmp_path):
    """Poisson arrivals faster than the (jittery) SUT: every id answered exactly once."""
    data, _ = lg_env
    rng = np.random.default_rng(0)
    seen_batches = []

    def slow_predict(batch):  # a stand-in network: random service time, one fixed detection
        seen_batches.append(len(batch))
        time.sleep(float(rng.uniform(0.0005, 0.004)))
        return one_detection(len(batch))

    settings = S.resolve("Server", "performance", "cpu", flags={
        "target_qps": 600, "target_latency": 5000, "min_duration": 400, "min_query_count": 300,
        "max_batch_size": 4, "batch_timeout_us": 300, "threads": 3, "warmup": 0})  # fmt: skip
    run = run_loadgen(settings, tmp_path / "out", RunInputs(data=data, predict=slow_predict), verbose=False)
    sut = run.sut
    assert sut.response_problems() is None
    assert set(sut.issued.values()) == {1} and sut.responded == sut.issued
    assert len(sut.issued) >= 300 and sum(sut.batch_sizes) == len(sut.issued)
    assert max(seen_batches) <= 4 and max(sut.batch_sizes) > 1  # it did batch under load
    assert len(sut.query_latencies_ns) == len(sut.issued)  # Server: one sample per query


def test_failed_run_leaves_no_results(lg_env, tmp_path):
    data, _ = lg_env

    def broken(batch):
        raise RuntimeError("device lost")

    settings = S.resolve("Offline", "performance", "cpu", flags={"min_duration": 10, "min_query_count": 8,
                                                                 "warmup": 0})  # fmt: skip
    out = tmp_path / "out"
    with pytest.raises(RunFailed, match="device lost"):
        run_loadgen(settings, out, RunInputs(data=data, predict=broken), verbose=False)
    assert not (out / "mlperf_log_summary.txt").exists() and not (out / "report.md").exists()
    (failed,) = [p for p in out.iterdir()]
    assert failed.name.startswith("failed-") and "FAILED" in (failed / "RUN_FAILED.txt").read_text()


def test_bad_input_one_line_errors(lg_env, tmp_path, capsys):
    data, weights = lg_env
    out = tmp_path / "out"
    cases = [
        (("--scenario", "Streaming", "--data", data), "unknown scenario 'Streaming'"),
        (("--scenario", "Offline", "--mode", "turbo", "--data", data), "unknown mode 'turbo'"),
        (("--scenario", "Offline", "--data", tmp_path / "nowhere"), "dataset folder not found"),
        (("--scenario", "Offline", "--preset", "tpu_v9"), "unknown preset 'tpu_v9'"),
    ]
    if not torch.cuda.is_available():
        cases += [(("--scenario", "Offline", "--device", "cuda", "--data", data), "--device cuda: CUDA is not available"),
                  (("--scenario", "Offline", "--preset", "gpu_h100", "--data", data),
                   "device (from preset gpu_h100) cuda: CUDA is not available")]  # fmt: skip
    for argv, message in cases:
        assert _cli(*argv, "--out", out) == 2
        err = _error_line(capsys)
        assert message in err, err
    # ssd128_mini weights into ssd300_r34: shapes do not fit
    assert _cli("--scenario", "Offline", "--model", "ssd300_r34", "--weights", weights, "--data", data,
                "--out", out) == 2  # fmt: skip
    assert "does not fit the model" in _error_line(capsys)
    assert not out.exists() or not any(out.iterdir())  # nothing that looks like a result


def test_corrupt_image_stops_before_loadgen(lg_env, tmp_path, capsys):
    import shutil

    data, weights = lg_env
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    victim = sorted((broken / "val2017").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    out = tmp_path / "out"
    assert _cli("--scenario", "Offline", *BASE, "--data", broken, "--weights", weights, "--out", out) == 2
    assert victim.name in _error_line(capsys)
    assert not out.exists() or not any(out.iterdir())


def test_find_peak_searches_the_server_rate(lg_env, tmp_path):
    """LoadGen's FindPeakPerformance from 50 qps up with a SUT of ~4 ms per query (one at a time,
    ~250 qps): it doubles the rate until the p99 bound breaks, then bisects; the peak lies between
    the rates it passed and the first that failed."""
    data, _ = lg_env

    def four_ms(batch):
        time.sleep(0.004)
        return one_detection(len(batch))

    flags = {"min_duration": 60, "min_query_count": 30, "target_qps": 50, "target_latency": 30, "warmup": 0,
             "max_batch_size": 1, "threads": 1}  # fmt: skip
    run = run_loadgen(S.resolve("Server", "find-peak", "cpu", flags=flags), tmp_path / "out",
                      RunInputs(data=data, predict=four_ms), verbose=False)  # fmt: skip
    assert run.peak_qps is not None and 100 <= run.peak_qps < 800, run.peak_qps
    assert run.summary.mode == "FindPeakPerformance"
    assert f"peak target_qps = {run.peak_qps:g}" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(ValueError, match="--find-peak searches the highest VALID Server target_qps; not for Offline"):
        S.resolve("Offline", "find-peak")
