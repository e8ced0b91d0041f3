"""A model that never answers (docs/robustness.md, "Timeouts"): the SUT's per-batch timeout ends
the LoadGen run with an error naming it instead of LoadGen waiting forever; so does the warm-up.
The LoadGen flag and key checks are in test_checks.py."""

from __future__ import annotations

import threading
import time

import pytest
from loadgen_fixtures import loadgen_env, one_detection

from ssdbench import cli
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.run import RunFailed, RunInputs, run_loadgen

NEVER = threading.Event()  # never set: predict blocks for good


@pytest.fixture(scope="module")
def lg_env(tmp_path_factory):
    yield from loadgen_env(tmp_path_factory, "lg_faults", val_images=4, seed=0, background_bias=3.0)


def hangs(batch):
    NEVER.wait()


@pytest.mark.parametrize("scenario", ["SingleStream", "Server", "Offline", "MultiStream"])
def test_a_model_that_never_answers_fails_the_run(lg_env, tmp_path, scenario):
    data, _ = lg_env
    flags = {"min_duration": 100, "min_query_count": 8, "warmup": 0, "threads": 1, "predict_timeout_s": 0.3,
             "target_latency": 10, "target_qps": 50, "samples_per_query": 2, "max_batch_size": 2}
    flags = {k: v for k, v in flags.items() if S.applies(k, scenario)}  # keys LoadGen ignores are refused
    start = time.monotonic()
    with pytest.raises(RunFailed, match=r"TimeoutError: a batch of \d sample\(s\) got no answer from the model "
                                        r"within 0.3 s \(predict_timeout_s / --predict-timeout\)"):
        run_loadgen(S.resolve(scenario, "performance", "cpu", flags=flags), tmp_path / "out",
                    RunInputs(data=data, predict=hangs), verbose=False, progress=False)
    assert time.monotonic() - start < 20  # the timeout, LoadGen's short schedule, and one join
    (failed,) = (tmp_path / "out").iterdir()  # logs kept aside, no results published
    assert failed.name.startswith("failed-") and not (tmp_path / "out" / "mlperf_log_summary.txt").exists()


def test_a_hung_warm_up_fails_before_loadgen(lg_env, tmp_path):
    data, _ = lg_env
    flags = {"warmup": 1, "predict_timeout_s": 0.2, "min_query_count": 8, "min_duration": 100}
    start = time.monotonic()
    with pytest.raises(RunFailed, match=r"no answer to a warm-up batch of 1 within 0.2 s"):
        run_loadgen(S.resolve("Offline", "performance", "cpu", flags=flags), tmp_path / "out",
                    RunInputs(data=data, predict=hangs), verbose=False, progress=False)
    assert time.monotonic() - start < 10 and not (tmp_path / "out").exists()


def test_a_slow_but_answering_model_is_not_cut_off(lg_env, tmp_path):
    """Batches well inside the timeout: the watchdog stays quiet and every query is answered once."""
    data, _ = lg_env

    def slow(batch):
        time.sleep(0.02)
        return one_detection(len(batch))

    flags = {"min_duration": 100, "min_query_count": 64, "warmup": 1, "threads": 2, "predict_timeout_s": 5,
             "target_qps": 2000}
    run = run_loadgen(S.resolve("Offline", "performance", "cpu", flags=flags), tmp_path / "out",
                      RunInputs(data=data, predict=slow), verbose=False, progress=False)
    assert run.sut.error is None and run.sut.response_problems() is None


def test_the_timeout_is_a_flag(lg_env, tmp_path, capsys, monkeypatch):
    """--predict-timeout reaches the SUT; the run ends with the one-line error, exit 2."""
    import ssdbench.loadgen.run as R

    data, weights = lg_env
    monkeypatch.setattr(R, "build_predict", lambda *a, **k: hangs)
    rc = cli.main(["loadgen", "--scenario", "Offline", "--preset", "cpu", "--data", str(data), "--weights",
                   str(weights), "--warmup", "0", "--min-duration", "0.1", "--min-query-count", "8",
                   "--predict-timeout", "0.3", "--out", str(tmp_path / "out")])
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ssdbench loadgen: error:")]
    assert len(err) == 1 and "within 0.3 s (predict_timeout_s / --predict-timeout)" in err[0]
