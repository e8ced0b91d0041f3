"""`ssdbench score`: time to train from summaries and MLPerf logs; the olympic mean by hand and
against mlperf_logging's own result summarizer."""

from __future__ import annotations

import json

import pytest
from mlperf_logging.result_summarizer.result_summarizer import _compute_olympic_average

from ssdbench.cli import main
from ssdbench.train.score import RunResult, olympic_mean, read_run


def write_summary(folder, minutes, reached=True, epochs=50):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(
        {"time_to_train_min": minutes, "reached_target": reached, "epochs": epochs}))
    return str(folder)


def write_log(path, start_ms, stop_ms, status="success"):
    def line(key, t, meta):
        return ":::MLLOG " + json.dumps({"namespace": "", "time_ms": t, "event_type": "POINT_IN_TIME",
                                         "key": key, "value": None, "metadata": meta})
    lines = [line("init_start", start_ms - 5000, {}), line("run_start", start_ms, {}),
             line("epoch_stop", start_ms + 10, {"epoch_num": 45}),
             line("run_stop", stop_ms, {"status": status}), "unrelated output"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def runs(*minutes_and_ok):
    return [RunResult(f"r{i}", m, ok) for i, (m, ok) in enumerate(minutes_and_ok)]


def test_time_to_train_from_log_and_summary(tmp_path):
    r = read_run(write_log(tmp_path / "a.log", 1_000_000, 1_000_000 + 90_000))
    assert r.minutes == pytest.approx(1.5) and r.reached and r.epochs == 45
    (tmp_path / "run").mkdir()
    write_log(tmp_path / "run" / "mlperf_log.txt", 0, 60_000, status="aborted")
    r = read_run(tmp_path / "run")
    assert r.minutes == pytest.approx(1.0) and not r.reached
    r = read_run(write_summary(tmp_path / "s", 12.5, epochs=55))
    assert (r.minutes, r.reached, r.epochs) == (12.5, True, 55)


def test_olympic_mean_five_runs_by_hand():
    s = olympic_mean(runs((10, True), (14, True), (11, True), (20, True), (12, True)))
    assert s["score"] == pytest.approx((11 + 12 + 14) / 3) and s["valid_mlperf"]
    assert sorted(s["used"]) == ["r1", "r2", "r4"]


@pytest.mark.parametrize("times,failed", [
    ([8.0, 9.5, 7.25, 12.0, 10.0], 0),
    ([8.0, 9.5, 7.25, 10.0], 1),  # the fifth run missed the target
])
def test_matches_mlperf_result_summarizer(times, failed):
    ours = olympic_mean(runs(*[(t, True) for t in times], *[(99.0, False)] * failed))
    theirs = _compute_olympic_average(list(times), failed, 1)
    assert ours["score"] == pytest.approx(theirs, abs=1e-12)


def test_unconverged_runs():
    one = olympic_mean(runs((10, True), (11, True), (12, True), (13, True), (5, False)))
    assert one["score"] == pytest.approx((11 + 12 + 13) / 3)  # the failed run is the dropped slowest
    two = olympic_mean(runs((10, True), (11, True), (12, True), (5, False), (6, False)))
    assert two["score"] is None and not two["valid_mlperf"] and "invalid" in two["note"]


def test_other_counts():
    s = olympic_mean(runs((10, True), (30, True)))
    assert s["score"] == 20 and not s["valid_mlperf"]
    s = olympic_mean(runs((10, True), (30, True), (20, True)))
    assert s["score"] == 20 and not s["valid_mlperf"]


def test_cli(tmp_path, capsys):
    folders = [write_summary(tmp_path / f"run{i}", m) for i, m in enumerate([10, 14, 11, 20, 12])]
    out_json = tmp_path / "score.json"
    assert main(["score", *folders, "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "12.33 min" in text and "olympic mean" in text
    assert json.loads(out_json.read_text())["score"] == pytest.approx(37 / 3)
    assert main(["score", str(tmp_path / "missing")]) == 2
    assert "run not found" in capsys.readouterr().err
