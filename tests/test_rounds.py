"""MLPerf rounds (`ssdbench.loadgen.settings`): each round's seeds and rules reach LoadGen on
TestSettings, the detail log proves it, keys LoadGen would ignore are refused, a second run in a
process works, detail-log errors make a run INVALID, a stray ./audit.config is reported and unread.
"""

from __future__ import annotations

import json
import time

import pytest
from loadgen_fixtures import loadgen_env, one_detection

from ssdbench import cli
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.report import Checks, write_report
from ssdbench.loadgen.rules import read_detail_log
from ssdbench.loadgen.run import RunInputs, run_loadgen
from ssdbench.loadgen.settings import ROUNDS, get_round

# The seeds of each round's mlperf.conf (mlcommons/inference, branches r0.5 .. r2.0), written out
# here independently of rounds.json.
SEEDS = {
    "v0.5": (3133965575612453542, 665484352860916858, 3622009729038561421),
    "v0.7": (12786827339337101903, 12640797754436136668, 3135815929913719677),
    "v1.0": (7322528924094909334, 1570999273408051088, 3507442325620259414),
    "v1.1": (1624344308455410291, 517984244576520566, 10051496985653635065),
    "v2.0": (6655344265603136530, 15863379492028895792, 12662793979680847247),
}
SEED_NAMES = ("effective_qsl_rng_seed", "effective_sample_index_rng_seed", "effective_schedule_rng_seed")
QUICK = ("--preset", "cpu", "--threads", "1", "--warmup", "0", "--min-duration", 0.05, "--min-query-count", 16,
         "--qps", 2000)  # fmt: skip


@pytest.fixture(scope="module")
def lg_env(tmp_path_factory):
    yield from loadgen_env(tmp_path_factory, "rounds", val_images=12, seed=0, background_bias=3.0)


def _cli(*argv) -> int:
    return cli.main(["loadgen", *map(str, argv)])


def test_round_values_are_the_rounds_own():
    for name in ROUNDS:
        rnd = get_round(name)
        assert tuple(rnd.seeds.values()) == SEEDS[name]
        assert rnd.accuracy_target == pytest.approx(20.0 * 0.99)
        duration = 60000 if name in ("v0.5", "v0.7") else 600000
        assert {rnd.loadgen_values(s)["min_duration"] for s in S.SCENARIOS} == {duration}
        assert rnd.loadgen_values("Server")["target_latency"] == 100
        assert rnd.loadgen_values("Offline")["performance_sample_count_override"] == 64
        assert "rounds.json" not in rnd.source_of("seeds") and rnd.source_of("seeds").startswith("M: branch r")
    v20 = get_round("v2.0")
    assert v20.loadgen_values("MultiStream") == {"performance_sample_count_override": 64, "target_latency": 528,
                                                 "target_latency_percentile": 99, "samples_per_query": 8,
                                                 "min_duration": 600000, "min_query_count": 270336}  # fmt: skip
    assert v20.scenario_lists("datacenter") == (["Server", "Offline"], [])
    assert v20.scenario_lists("edge")[0] == ["SingleStream", "MultiStream", "Offline"]
    assert get_round("v0.5").loadgen_values("Offline")["min_query_count"] == 1
    with pytest.raises(ValueError, match="unknown round 'v3.0'"):
        get_round("v3.0")


@pytest.mark.parametrize("name", ["v2.0", "v1.1"])
def test_runs_log_the_rounds_seeds_as_effective_seeds(lg_env, tmp_path, name):
    """Two runs in one process (the second would log error_invalid_config and seeds 0 through
    FromConfig): both VALID, no detail-log error, the round's seeds and rules in effect."""
    data, weights = lg_env
    for k in range(2):
        out = tmp_path / f"out{k}"
        assert _cli("--scenario", "Offline", "--round", name, *QUICK, "--data", data, "--weights", weights,
                    "--out", out) == 0  # fmt: skip
        detail = read_detail_log(out / "mlperf_log_detail.txt")
        assert tuple(detail.get(key) for key in SEED_NAMES) == SEEDS[name]
        assert detail.errors == [] and not detail.found_audit_config
        # LoadGen's own note on its logger ("Logging allocation detected: tid ..."): a LoadGen thread that
        # lives as long as the process grew its log buffer in an earlier, heavier run of this process
        # (test_faults_bounds' overloaded Server run), and LoadGen says so in every later detail log.
        assert [w for w in detail.warnings if "Logging allocation detected" not in w] == []
        assert detail.get("effective_min_duration_ms") == 50 and detail.get("effective_performance_sample_count") == 12
        saved = json.loads((out / "settings.json").read_text())
        assert saved["round"] == name and tuple(saved["seeds"].values()) == SEEDS[name]
        assert saved["command"].startswith("ssdbench loadgen --scenario Offline --round")
        report = (out / "report.md").read_text()
        assert f"Detail log: 0 error(s), {len(detail.warnings)} warning(s)" in report, report
        assert f"Round {name} rules not met" in report and "[min-duration]" in report


def test_keys_loadgen_would_ignore_are_refused(lg_env, tmp_path, capsys):
    data, _ = lg_env
    cases = {"ssd-resnet34.*.qsl_rng_seed = 42\n": "qsl_rng_seed is read by LoadGen 6.x only from its built-in",
             "*.*.accuracy_log_probability = 10\n": "accuracy_log_probability is read by LoadGen 6.x only",
             "ssd-resnet34.Offline.target_latency = 5\n": "target_latency does not apply to Offline"}  # fmt: skip
    for text, message in cases.items():
        conf = tmp_path / "user.conf"
        conf.write_text(text)
        assert _cli("--scenario", "Offline", "--user-conf", conf, "--data", data, "--out", tmp_path / "o") == 2
        err = capsys.readouterr().err
        assert message in err and str(conf) in err, err
    assert _cli("--scenario", "SingleStream", "--qps", 5, "--data", data, "--out", tmp_path / "o") == 2
    assert "flags: target_qps does not apply to SingleStream" in capsys.readouterr().err
    # a wildcard line is meant for the scenarios that read it: dropped, and said so
    conf = tmp_path / "wild.conf"
    conf.write_text("ssd-resnet34.*.target_latency = 5\n")
    run = S.resolve("Offline", user_conf=str(conf))
    assert "target_latency" not in run.loadgen and run.dropped == [f"target_latency (from {conf})"]
    assert "not used in Offline: target_latency" in S.format_settings(run)
    assert S.resolve("Server", user_conf=str(conf)).loadgen["target_latency"] == 5
    with pytest.raises(ValueError, match="MultiStream of v0.5-v1.1"):
        S.resolve("MultiStream", round="v1.1")


def test_test_settings_carry_every_round_value():
    for name in ROUNDS:
        for scenario in S.SCENARIOS:
            if scenario == "MultiStream" and get_round(name).legacy_multistream:
                continue
            settings = S.resolve(scenario, round=name)
            ts = S.make_test_settings(settings, 64)
            assert (ts.qsl_rng_seed, ts.sample_index_rng_seed, ts.schedule_rng_seed) == SEEDS[name]
            assert ts.min_duration_ms == settings.loadgen["min_duration"]
            assert ts.min_query_count == settings.loadgen["min_query_count"]
            assert ts.performance_sample_count_override == 64
            expected = S.expected_effective(settings, 64)
            assert expected["effective_qsl_rng_seed"] == SEEDS[name][0]
    text = S.round_conf("v2.0")
    assert "*.*.schedule_rng_seed = 12662793979680847247" in text
    assert "ssd-resnet34.MultiStream.samples_per_query = 8" in text and "Offline.target_latency" not in text


def _fast(batch):
    time.sleep(0.0003)
    return one_detection(len(batch))


def test_a_detail_log_error_makes_the_run_invalid(lg_env, tmp_path):
    """The issue's case: a second TestSettings.FromConfig in a process makes LoadGen 6.x log
    error_invalid_config into the next run's detail log (ssdbench itself never calls it). The
    report lists the error and the run is INVALID, whatever LoadGen's summary says."""
    import mlperf_loadgen as lg

    data, _ = lg_env
    conf = tmp_path / "user.conf"
    conf.write_text("ssd-resnet34.Offline.target_qps = 2000\n")
    for _ in range(2):
        lg.TestSettings().FromConfig(str(conf), "ssd-resnet34", "Offline", 1)
    flags = {"min_duration": 10, "min_query_count": 16, "target_qps": 2000, "warmup": 0, "threads": 1}
    run = run_loadgen(S.resolve("Offline", "performance", "cpu", flags=flags), tmp_path / "out",
                      RunInputs(data=data, predict=_fast), verbose=False)  # fmt: skip
    assert run.result == "INVALID"
    assert "detail log error: error_invalid_config: Multiple conf files are used. This is not valid for " \
           "official submission." in run.summary.reasons  # fmt: skip
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**Result: INVALID**" in report and "- error: error_invalid_config: Multiple conf files" in report


def test_settings_loadgen_would_misuse_are_refused():
    """LoadGen 6.x logs an error and then issues out-of-range samples for these: refused before."""
    same = S.resolve("Offline", flags={"performance_issue_same": 1, "performance_issue_same_index": 40})
    with pytest.raises(ValueError, match="performance_issue_same_index 40 must be below the performance sample count 12"):
        S.make_test_settings(same, 12)
    both = S.resolve("Offline", flags={"performance_issue_same": 1, "performance_issue_unique": 1})
    with pytest.raises(ValueError, match="performance_issue_unique and performance_issue_same cannot both be set"):
        S.make_test_settings(both, 12)


def test_report_overrules_loadgen_on_errors_and_settings_not_applied(tmp_path):
    summary = tmp_path / "mlperf_log_summary.txt"
    summary.write_text("Scenario : Offline\nMode     : PerformanceOnly\nSamples per second: 10\nResult is : VALID\n")
    checks = Checks(errors=["error_invalid_config: Multiple conf files are used."], warnings=["warning_x: y"],
                    not_applied=["effective_qsl_rng_seed is 0 in the detail log, expected 1"], round="v2.0")
    result = write_report(tmp_path, {"mode": "performance"}, [1_000_000], [1], checks)
    assert result.result == "INVALID" and result.loadgen_result == "VALID"
    text = (tmp_path / "report.md").read_text()
    assert "(LoadGen's summary says VALID; the detail log overrules it)" in text
    assert "- error: error_invalid_config: Multiple conf files are used." in text and "- warning: warning_x: y" in text
    assert "setting not applied: effective_qsl_rng_seed is 0" in text
    assert write_report(tmp_path, {"mode": "performance"}, [1], [1], Checks(round="v2.0")).result == "VALID"


def test_a_stray_audit_config_is_reported_and_never_read(lg_env, tmp_path, monkeypatch, capsys):
    data, _ = lg_env
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audit.config").write_text("*.*.mode = 1\n*.*.min_duration = 99\n")  # accuracy mode, if read
    flags = {"min_duration": 50, "min_query_count": 16, "target_qps": 2000, "warmup": 0, "threads": 1}
    run = run_loadgen(S.resolve("Offline", "performance", "cpu", flags=flags), tmp_path / "out",
                      RunInputs(data=data, predict=_fast), verbose=False, progress=False)  # fmt: skip
    assert f"warning: {tmp_path / 'audit.config'} exists; ssdbench does not let LoadGen read it" in capsys.readouterr().err
    detail = read_detail_log(tmp_path / "out" / "mlperf_log_detail.txt")
    assert run.summary.mode == "PerformanceOnly" and not detail.found_audit_config
    assert detail.get("effective_test_mode") == "PerformanceOnly" and detail.get("effective_min_duration_ms") == 50
