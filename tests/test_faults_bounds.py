"""Resource bounds, hangs, environment variables and conflicting flags (docs/robustness.md,
"Bounds"). Every command runs under a time limit, so a hang fails the test."""

from __future__ import annotations

import time

import pytest
from fault_helpers import cli, cli_process, error_line
from loadgen_fixtures import loadgen_env

from ssdbench.cli.env import check_environment
from ssdbench.loadgen import settings as S


@pytest.fixture(scope="module")
def lg_env(tmp_path_factory):
    yield from loadgen_env(tmp_path_factory, "lg_bounds", val_images=4, seed=0, background_bias=3.0)


@pytest.mark.parametrize(("flags", "message"), [
    (["--threads", "100000"], "--threads must be an integer in [1, 1024], got 100000"),
    (["--max-batch-size", "99999999999999999999"], "--max-batch-size must be an integer in [1, 1024]"),
    (["--scenario", "MultiStream", "--samples-per-query", "100000"], "--samples-per-query must be an integer in [1, 1024]"),
    (["--instances", "100000"], "--instances must be an integer in [1, "),
])  # fmt: skip
def test_loadgen_bounds_are_refused_at_the_flag(capsys, tmp_path, flags, message):
    rc, _out, err = cli(capsys, "loadgen", *flags, "--out", tmp_path / "out", seconds=30)
    assert rc == 2 and message in err and not (tmp_path / "out").exists()
    assert len(err.strip().splitlines()) == 1  # one line, no usage block (that is for --help)


def test_user_conf_samples_per_query_is_bounded_too(tmp_path):
    conf = tmp_path / "user.conf"
    conf.write_text("ssd-resnet34.MultiStream.samples_per_query = 100000\n")
    with pytest.raises(ValueError, match=r"samples_per_query must be an integer in \[1, 1024\]"):
        S.resolve("MultiStream", "performance", "cpu", str(conf))


def test_train_batch_size_is_bounded_and_leaves_no_folder(capsys, tmp_path):
    rc, _out, err = cli(capsys, "train", "--batch-size", "99999999999999999999", "--out", tmp_path / "run", seconds=30)
    assert rc == 2 and "--batch-size must be an integer in [1, 4096]" in err
    assert not (tmp_path / "run").exists()


def test_workers_are_capped_at_the_cores_with_one_note():
    from ssdbench.checks import usable_cores
    from ssdbench.train.config import resolve_config, resolve_for_device

    cfg, note = resolve_for_device(resolve_config("demo", None, {"workers": 100000}), "cpu")
    assert cfg.workers == usable_cores()
    assert f"workers 100000 capped at {usable_cores()}" in note and "(--workers)" in note
    again, note2 = resolve_for_device(cfg, "cpu")  # idempotent: the second resolution says nothing new
    assert again.workers == cfg.workers and "capped" not in (note2 or "")


def test_a_server_run_that_cannot_keep_up_ends_as_overloaded(lg_env, tmp_path, monkeypatch):
    """qps far above what the model serves: the run ends at its schedule's end with an error naming
    the rate, instead of draining its backlog for hours."""
    from loadgen_fixtures import one_detection

    import ssdbench.loadgen.run as R

    data, _ = lg_env
    monkeypatch.setattr(R, "MIN_QUEUE_WAIT_S", 1.0)

    def slow(batch):
        time.sleep(0.05)
        return one_detection(len(batch))

    flags = {"min_duration": 2000, "min_query_count": 8, "warmup": 0, "threads": 1, "target_qps": 5000,
             "target_latency": 10, "max_batch_size": 1}
    start = time.monotonic()
    with pytest.raises(R.RunFailed, match=r"OverloadError: the system cannot keep up with the arrival rate: a sample "
                                          r"waited .* s in the queue \(limit 1 s\).*lower target_qps \(--qps\)"):
        R.run_loadgen(S.resolve("Server", "performance", "cpu", flags=flags), tmp_path / "out",
                      R.RunInputs(data=data, predict=slow), verbose=False, progress=False)
    assert time.monotonic() - start < 60  # 10,000 queries at 20/s would take over 8 minutes
    assert [p.name.startswith("failed-") for p in (tmp_path / "out").iterdir()] == [True]


def test_max_queue_wait_is_for_server_only():
    from ssdbench.loadgen.run import max_queue_wait

    assert max_queue_wait(S.resolve("Server", "performance", "cpu", flags={"target_latency": 100})) == 10.0
    assert max_queue_wait(S.resolve("Server", "performance", "cpu", flags={"target_latency": 1000})) == 20.0
    assert max_queue_wait(S.resolve("Offline", "performance", "cpu")) is None
    assert max_queue_wait(S.resolve("Server", "find-peak", "cpu")) is None


def test_count_over_the_dataset_is_capped_and_recorded(capsys):
    from ssdbench.loadgen.run import _cap_count

    asked = S.resolve("Offline", "performance", "cpu", flags={"count": 50})
    capped = _cap_count(asked, 8)
    assert capped.sut.count == 8 and capped.to_json()["sut"]["count"] == 8
    assert "warning: count 50 (--count) is more than the dataset's 8 images" in capsys.readouterr().err
    assert _cap_count(S.resolve("Offline", "performance", "cpu", flags={"count": 4}), 8).sut.count == 4


@pytest.mark.parametrize(("name", "value", "want"), [
    ("SSDBENCH_MAX_IMAGE_PIXELS", "abc", "a positive integer"), ("SSDBENCH_MAX_IMAGE_PIXELS", "0", "a positive integer"),
    ("SSDBENCH_PROGRESS", "loud", "one of bar, lines, final, off"), ("SSDBENCH_CPU_BF16", "yes", "one of 0, 1"),
    ("SSDBENCH_LOADGEN_TRACE", "on", "one of 0, 1"),
])  # fmt: skip
def test_environment_variables_are_checked(name, value, want):
    with pytest.raises(ValueError, match=f"environment variable {name} must be {want}, got '{value}'"):
        check_environment({name: value})
    check_environment({name: ""})  # empty: the default


def test_a_bad_pixel_limit_stops_eval_before_any_image(tmp_path):
    """It used to skip every image with a warning each and exit 0 with '0 detections written'."""
    done = cli_process("eval", "--data", tmp_path / "none", seconds=60, env={"SSDBENCH_MAX_IMAGE_PIXELS": "abc"})
    assert done.returncode == 2
    assert "SSDBENCH_MAX_IMAGE_PIXELS must be a positive integer, got 'abc'" in error_line(done.stderr, "eval")


@pytest.mark.parametrize("order", [["--resume", "x", "--no-resume"], ["--no-resume", "--resume", "x"]])
def test_resume_and_no_resume_conflict(capsys, tmp_path, order):
    rc, _out, err = cli(capsys, "train", *order, "--out", tmp_path / "run", seconds=30)
    assert rc == 2 and "not allowed with argument" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_flag_errors_print_one_line_and_help_prints_usage(capsys):
    rc, _out, err = cli(capsys, "train", "--momentum", "1", seconds=30)
    assert rc == 2 and err.strip().splitlines() == [
        "ssdbench train: error: --momentum must be a finite number in [0, 1), got 1"]
    rc, out, _err = cli(capsys, "eval", "--help", seconds=30)
    assert rc == 0 and out.startswith("usage: ssdbench eval")
