"""`ssdbench loadgen`: settings, QSL, dynamic batcher and the four LoadGen scenarios on CPU.

Runs use ssd128_mini on a 12-image synthetic val set with CI-sized LoadGen settings (min duration
0.2-0.5 s, a few hundred queries: the fewest LoadGen's early-stopping estimate accepts).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from loadgen_fixtures import loadgen_env

from ssdbench import cli
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.report import parse_summary
from ssdbench.loadgen.run import RunFailed, run_loadgen
from ssdbench.loadgen.sut import check_detections, detections_to_responses
from ssdbench.model.postprocess import PaddedDetections


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
    return _one_detection(len(batch))


def _one_detection(n: int) -> PaddedDetections:
    """The same single detection for each of n images."""
    boxes = torch.tensor([0.1, 0.2, 0.3, 0.4]).expand(n, 1, 4)
    return PaddedDetections(boxes=boxes, labels=torch.ones(n, 1, dtype=torch.long), scores=torch.full((n, 1), 0.9),
                            counts=torch.ones(n, dtype=torch.long))


def _assert_published(out: Path) -> None:
    for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json",
                 "report.md", "latency_histogram.png", "settings.conf", "settings.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith((".incomplete", "failed-"))]


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
                      data=data, predict=fast_predict, verbose=False)  # fmt: skip
    assert run.result == "VALID", run.summary.reasons
    assert run.summary.scenario == scenario and run.sut.response_problems() is None
    if scenario == "MultiStream":  # 2 samples per query, the latency counted once per query
        assert len(run.sut.issued) == 2 * len(run.sut.query_latencies_ns)
    _assert_published(tmp_path / "out")


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
        return _one_detection(len(batch))

    settings = S.resolve("Server", "performance", "cpu", flags={
        "target_qps": 600, "target_latency": 5000, "min_duration": 400, "min_query_count": 300,
        "max_batch_size": 4, "batch_timeout_us": 300, "threads": 3, "warmup": 0})  # fmt: skip
    run = run_loadgen(settings, tmp_path / "out", data=data, predict=slow_predict, verbose=False)
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
        run_loadgen(settings, out, data=data, predict=broken, verbose=False)
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


def test_settings_precedence_and_spec_values(tmp_path):
    builtin = S.resolve("Server")
    assert builtin.loadgen["target_latency"] == 100 and builtin.loadgen["target_latency_percentile"] == 99
    assert builtin.loadgen["min_query_count"] == 270336 and builtin.loadgen["min_duration"] == 600000
    assert builtin.loadgen["performance_sample_count_override"] == 64
    assert S.resolve("MultiStream").loadgen["samples_per_query"] == 8
    assert S.resolve("SingleStream").loadgen["min_query_count"] == 1024
    assert S.resolve("Offline").loadgen["min_query_count"] == 24576
    # Seed row tpu_v3_1x_server: max_latency 0.1 s, qps 320, batch 4, 10000 us, space-to-depth.
    tpu = S.resolve(None, preset="tpu_v3_1x_server")
    assert tpu.scenario == "Server" and tpu.loadgen["target_latency"] == 100.0
    assert tpu.loadgen["target_qps"] == 320 and tpu.sut.max_batch_size == 4
    assert tpu.sut.batch_timeout_us == 10000 and tpu.sut.space_to_depth and tpu.sut.dtype == "fp32"
    assert S.resolve(None, preset="tpu_v3_8x_offline").sut.dtype == "bf16"
    user = tmp_path / "user.conf"
    user.write_text("# comment\nssd-resnet34.*.target_qps = 100\nssd-resnet34.Server.target_qps = 250\n"
                    "*.Server.target_qps = 7\nresnet50.Server.target_qps = 9\nssd-resnet34.*.threads = 5\n")
    merged = S.resolve("Server", preset="tpu_v3_1x_server", user_conf=str(user), flags={"threads": 6})
    assert merged.loadgen["target_qps"] == 250 and merged.sources["target_qps"] == str(user)
    assert merged.sut.threads == 6 and merged.sources["threads"] == "flags"
    assert merged.sut.max_batch_size == 4  # preset value survives


def test_settings_reach_loadgen(tmp_path):
    settings = S.resolve("Server", flags={"target_qps": 12.5, "target_latency": 0.25, "min_duration": 700})
    ts = S.make_test_settings(settings, str(tmp_path / "s.conf"), performance_count=10)
    assert ts.server_target_qps == 12.5 and ts.server_target_latency_ns == 250_000
    assert ts.min_duration_ms == 700 and ts.performance_sample_count_override == 10
    assert ts.min_query_count == 270336 and abs(ts.server_target_latency_percentile - 0.99) < 1e-9


def test_settings_errors(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("ssd-resnet34.Server.target_qpz = 3\n")
    with pytest.raises(ValueError, match="unknown setting 'target_qpz'"):
        S.resolve("Server", user_conf=str(bad))
    bad.write_text("ssd-resnet34.Server.max_batch_size = many\n")
    with pytest.raises(ValueError, match="max_batch_size = 'many' is not a valid int"):
        S.resolve("Server", user_conf=str(bad))
    bad.write_text("target_qps 3\n")
    with pytest.raises(ValueError, match="bad.conf:1"):
        S.resolve("Server", user_conf=str(bad))
    with pytest.raises(FileNotFoundError):
        S.resolve("Server", user_conf=str(tmp_path / "missing.conf"))


def test_response_tuples_put_y_before_x():
    boxes = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], [[0.0, 0.0, 0.0, 0.0]] * 2])
    scores = torch.tensor([[0.9, 0.8], [0.0, 0.0]])
    labels = torch.tensor([[3, 7], [0, 0]])
    dets = PaddedDetections(boxes=boxes, labels=labels, scores=scores, counts=torch.tensor([2, 0]))
    out = detections_to_responses(np.array([5, 9]), dets)
    expected = np.array([[5, 0.2, 0.1, 0.4, 0.3, 0.9, 3], [5, 0.6, 0.5, 0.8, 0.7, 0.8, 7]], np.float32)
    np.testing.assert_array_equal(out[0], expected)
    assert out[0].dtype == np.float32 and out[0].flags.c_contiguous and out[1].shape == (0, 7)


def test_predict_must_return_named_detections():
    """A positional tuple is refused (its order is ambiguous), naming the expected container."""
    dets = _one_detection(2)
    assert check_detections(dets) is dets
    with pytest.raises(TypeError, match="predict must return a PaddedDetections"):
        check_detections((dets.boxes, dets.scores, dets.labels, dets.counts))


def test_qsl_matches_preprocessing_and_uses_cache(lg_env, tmp_path):
    from ssdbench.data.coco import CocoDetection
    from ssdbench.data.transforms import preprocess_for_inference
    from ssdbench.loadgen.qsl import SampleLibrary

    data, _ = lg_env
    dataset = CocoDetection(data, "val")
    qsl = SampleLibrary(dataset, 128, count=3, cache_dir=tmp_path, progress=False)
    qsl.load([0, 2])
    expected = preprocess_for_inference(dataset.read_image(2), 128)
    np.testing.assert_array_equal(qsl.get(2), expected)
    assert qsl.cache_path(2).is_file() and not qsl.cache_path(1).exists()
    qsl.unload([0, 2])
    assert qsl.samples == {}
    again = SampleLibrary(dataset, 128, count=3, cache_dir=tmp_path, progress=False)
    again.dataset = None  # a decode would now fail: the sample must come from the cache
    again.image_id = qsl.image_id
    again.load([2])
    np.testing.assert_array_equal(again.get(2), expected)


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


def test_presets_cover_the_seed_table():
    presets = S.load_presets()
    offline = [f"tpu_v3_{n}x_offline" for n in (1, 2, 4, 8, 16)]
    assert {"tpu_v3_1x_server", "cpu", "gpu_h100", *offline} <= set(presets)
    assert [presets[name]["qps"] for name in offline] == [700, 1400, 2800, 5600, 11200]
    assert [presets[name]["threads"] for name in offline] == [96, 192, 384, 768, 1000]
    for name in presets:
        for scenario in S.SCENARIOS:
            S.resolve(scenario, preset=name)  # every preset resolves for every scenario
    assert Path(S.builtin_conf_path()).is_file()
