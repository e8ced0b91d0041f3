"""Resolved settings onto LoadGen: `mlperf_loadgen.TestSettings`, the ``.conf`` files, the proof.

`make_test_settings` sets every field directly: the LoadGen keys of `RunSettings.loadgen`, the
round's seeds and, for a compliance test, its audit values. It never calls
``TestSettings.FromConfig``: in LoadGen 6.x a second ``FromConfig`` in one process logs
``error_invalid_config`` (a static counter in test_settings_internal.cc) and skips the built-in
mlperf.conf, so a second run in a process would log seeds 0 and be rejected by the submission
checker; set directly, any number of runs in a process log the same settings.

`expected_effective` lists the ``effective_*`` values the detail log must then show: the run
checks them (`effective_mismatches`) and a mismatch makes it INVALID, so the log proves what ran.
`write_conf` writes the resolved keys in LoadGen syntax (``settings.conf``, the submission's
``user.conf``) and `round_conf` the round's keys and seeds (the submission's ``mlperf.conf``).
"""

from __future__ import annotations

from typing import Any

from ssdbench.loadgen.rounds import SEED_KEYS, Round, get_round
from ssdbench.loadgen.settings import LOADGEN_MODEL, SCENARIOS, RunSettings, applies

# Boolean LoadGen keys (0 / 1 in a .conf).
_BOOL_KEYS = ("coalesce_queries", "print_timestamps", "performance_issue_unique", "performance_issue_same",
              "sample_concatenate_permutation")  # fmt: skip
# key -> TestSettings field (same for every scenario it applies to), for plain integer keys.
_PLAIN = {
    "min_duration": "min_duration_ms", "max_duration": "max_duration_ms",
    "min_query_count": "min_query_count", "max_query_count": "max_query_count",
    "performance_sample_count_override": "performance_sample_count_override",
    "accuracy_log_rng_seed": "accuracy_log_rng_seed", "accuracy_log_sampling_target": "accuracy_log_sampling_target",
    "performance_issue_same_index": "performance_issue_same_index", "print_timestamps": "print_timestamps",
    "performance_issue_unique": "performance_issue_unique", "performance_issue_same": "performance_issue_same",
    "sample_concatenate_permutation": "sample_concatenate_permutation",
    "max_async_queries": "server_max_async_queries", "coalesce_queries": "server_coalesce_queries",
    "samples_per_query": "multi_stream_samples_per_query",
}  # fmt: skip
_MODES = {"performance": lambda m: m.PerformanceOnly, "accuracy": lambda m: m.AccuracyOnly,
          "find-peak": lambda m: m.FindPeakPerformance}
_SNAKE = {"SingleStream": "single_stream", "MultiStream": "multi_stream", "Server": "server", "Offline": "offline"}


def _field(key: str, scenario: str) -> str:
    """The TestSettings field of a LoadGen key in ``scenario`` (units converted by `_value`)."""
    if key in _PLAIN:
        return _PLAIN[key]
    prefix = _SNAKE[scenario]
    if key == "target_qps":
        return "server_target_qps" if scenario == "Server" else "offline_expected_qps"
    if key == "target_latency":
        return f"{prefix}_target_latency_ns" if scenario == "Server" else f"{prefix}_expected_latency_ns"
    if key == "target_latency_percentile":
        return f"{prefix}_target_latency_percentile"
    raise ValueError(f"no TestSettings field for {key!r}")


def _value(key: str, value: Any) -> Any:
    """.conf value -> TestSettings value: ms -> ns latencies, percent -> fraction, bools."""
    if key == "target_latency":
        return max(round(float(value) * 1e6), 1)  # ns; sub-millisecond flags stay exact
    if key == "target_latency_percentile":
        return float(value) / 100.0
    if key == "target_qps":
        return float(value)
    if key in _BOOL_KEYS:
        return bool(value)
    return int(value)


def audit_values(rnd: Round, test: str | None, scenario: str) -> dict[str, Any]:
    """The audit.config keys of compliance test ``test`` (empty for an ordinary run)."""
    return rnd.audit(test, scenario) if test else {}


def make_test_settings(settings: RunSettings, performance_count: int, audit: dict[str, Any] | None = None):
    """`mlperf_loadgen.TestSettings` of the resolved settings, the round's seeds and ``audit``.

    ``performance_count`` is the QSL's (at most its size); it replaces the override when it differs
    (the source then says so). ``audit``: a compliance test's keys (`audit_values`); the same keys
    are written to the test's audit.config, which LoadGen also reads, but LoadGen 6.x ignores seeds
    and ``accuracy_log_probability`` there, so they are set here as well.
    """
    import mlperf_loadgen as lg

    check_settings(settings, performance_count, audit)
    if settings.loadgen.get("performance_sample_count_override") != performance_count:
        settings.loadgen["performance_sample_count_override"] = performance_count
        settings.sources["performance_sample_count_override"] = "QSL (at most the QSL size)"
    ts = lg.TestSettings()
    ts.scenario = getattr(lg.TestScenario, settings.scenario)
    ts.mode = _MODES[settings.mode](lg.TestMode)
    if settings.mode == "find-peak":  # binary search to whole queries per second, from target_qps up
        ts.server_find_peak_qps_decimals_of_precision = 0
    for key, value in settings.loadgen.items():
        setattr(ts, _field(key, settings.scenario), _value(key, value))
    for key, value in {**settings.seeds, **_audit_seeds(audit)}.items():
        setattr(ts, key, int(value))
    ts.accuracy_log_probability = 0.0  # every round's mlperf.conf leaves it 0 (TEST01 of v0.5 sets it)
    for key, value in (audit or {}).items():
        if key == "mode":
            ts.mode = lg.TestMode.PerformanceOnly if int(value) == 2 else lg.TestMode.AccuracyOnly
        elif key == "accuracy_log_probability":
            ts.accuracy_log_probability = float(value) / 100.0  # percent in .conf files
        elif key not in SEED_KEYS:
            setattr(ts, _field(key, settings.scenario), _value(key, value))
    return ts


def check_settings(settings: RunSettings, performance_count: int, audit: dict[str, Any] | None = None) -> None:
    """ValueError for TEST04 keys LoadGen 6.x only logs an error about and then misuses (it issues
    samples outside the loaded set: test_settings_internal.cc, TestSettingsInternal)."""
    values = {**settings.loadgen, **(audit or {})}
    if values.get("performance_issue_unique") and values.get("performance_issue_same"):
        raise ValueError("performance_issue_unique and performance_issue_same cannot both be set")
    index = int(values.get("performance_issue_same_index", 0))
    if values.get("performance_issue_same") and index >= performance_count:
        raise ValueError(f"performance_issue_same_index {index} must be below the performance sample count "
                         f"{performance_count}")  # fmt: skip


def _audit_seeds(audit: dict[str, Any] | None) -> dict[str, int]:
    return {k: int(v) for k, v in (audit or {}).items() if k in SEED_KEYS}


def expected_effective(settings: RunSettings, performance_count: int,
                       audit: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Detail-log key -> the value LoadGen must report for these settings (``effective_*``)."""
    scenario, lg_keys = settings.scenario, settings.loadgen
    audit = audit or {}
    mode = {"performance": "PerformanceOnly", "accuracy": "AccuracyOnly", "find-peak": "FindPeakPerformance"}
    expected: dict[str, Any] = {"effective_scenario": scenario,
                                "effective_test_mode": "PerformanceOnly" if audit else mode[settings.mode],
                                "effective_performance_sample_count": performance_count}  # fmt: skip
    expected.update({f"effective_{k}": int(v) for k, v in {**settings.seeds, **_audit_seeds(audit)}.items()})
    if "min_duration" in lg_keys:
        expected["effective_min_duration_ms"] = int(lg_keys["min_duration"])
    if "min_query_count" in lg_keys:  # LoadGen folds Offline's count into its one query
        expected["effective_min_query_count"] = 1 if scenario == "Offline" else int(lg_keys["min_query_count"])
    if "target_latency_percentile" in lg_keys:
        expected["effective_target_latency_percentile"] = float(lg_keys["target_latency_percentile"]) / 100
    if scenario == "Server" and "target_latency" in lg_keys:
        expected["effective_target_latency_ns"] = _value("target_latency", lg_keys["target_latency"])
    if "target_qps" in lg_keys:
        expected["effective_target_qps"] = float(lg_keys["target_qps"])
    if scenario == "MultiStream" and "samples_per_query" in lg_keys:
        expected["effective_samples_per_query"] = int(lg_keys["samples_per_query"])
    for key in ("accuracy_log_rng_seed", "accuracy_log_sampling_target", "performance_issue_unique",
                "performance_issue_same", "performance_issue_same_index"):  # fmt: skip
        if key in audit or key in lg_keys:
            expected[f"effective_{key}"] = _value(key, audit.get(key, lg_keys.get(key)))
    return expected


def effective_mismatches(expected: dict[str, Any], detail) -> list[str]:
    """Lines naming each ``effective_*`` value of the detail log that differs from ``expected``."""
    problems = []
    for key, want in expected.items():
        got = detail.get(key)
        if isinstance(want, float):  # the detail log prints 6 significant digits (std::ostream)
            same = got is not None and abs(float(got) - want) <= 1e-5 * max(1e-30, abs(want))
        else:
            same = got == want
        if not same:
            problems.append(f"{key} is {got!r} in the detail log, expected {want!r}")
    return problems


def conf_lines(scenario: str, values: dict[str, Any], sources: dict[str, str] | None = None) -> list[str]:
    """``ssd-resnet34.<scenario>.<key> = value`` lines (sources as comment lines above them: LoadGen's
    parser takes no trailing comments)."""
    lines = []
    for key, value in sorted(values.items()):
        if sources is not None:
            lines.append(f"# {key}: from {sources.get(key, 'derived')}")
        lines.append(f"{LOADGEN_MODEL}.{scenario}.{key} = {int(value) if isinstance(value, bool) else value}")
    return lines


def write_conf(settings: RunSettings, path: str, only_user: bool = False) -> None:
    """The resolved LoadGen keys as a LoadGen .conf file (model ssd-resnet34, this scenario).

    ``only_user``: just the keys a preset, user config or flag set (the submission's user.conf);
    the round's own values then live in its mlperf.conf (`round_conf`).
    """
    values = {k: v for k, v in settings.loadgen.items()
              if not (only_user and settings.sources.get(k, "").startswith("round "))}  # fmt: skip
    seeds = ", ".join(f"{k} = {v}" for k, v in settings.seeds.items())
    lines = [(f"# {'user' if only_user else 'resolved'} LoadGen settings of this run "
              f"({settings.scenario}, {settings.mode}, round {settings.round})"),
             f"# seeds: the round's, set on TestSettings directly (LoadGen 6.x ignores them here): {seeds}"]
    lines += conf_lines(settings.scenario, values, settings.sources)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def round_conf(name: str) -> str:
    """The round's ssd-resnet34 keys and seeds in LoadGen .conf syntax (written from rounds.json)."""
    rnd = get_round(name)
    lines = [f"# MLPerf Inference {rnd.name}: the ssd-resnet34 values of its mlperf.conf",
             f"# source: {rnd.source_of('loadgen')} (through ssdbench/configs/rounds.json)"]  # fmt: skip
    lines += [f"*.*.{key} = {value}" for key, value in rnd.seeds.items()]
    for scenario in SCENARIOS:
        values = {k: v for k, v in rnd.loadgen_values(scenario).items() if applies(k, scenario)}
        lines += conf_lines(scenario, values)
    return "\n".join(lines) + "\n"
