"""LoadGen settings (`ssdbench.loadgen.settings`): the layers with their
sources, `.conf` parsing, the seed table's columns, typed SUT settings, errors that name the key and
where it came from, and the resolved values on LoadGen's TestSettings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ssdbench.loadgen import settings as S


def _conf(tmp_path, text: str, name: str = "user.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


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
    ts = S.make_test_settings(settings, performance_count=10)
    assert ts.server_target_qps == 12.5 and ts.server_target_latency_ns == 250_000
    assert ts.min_duration_ms == 700 and ts.performance_sample_count_override == 10
    assert ts.min_query_count == 270336 and abs(ts.server_target_latency_percentile - 0.99) < 1e-9
    # the round's seeds (v2.0 mlperf.conf), set directly: LoadGen 6.x ignores them in a user conf
    assert (ts.qsl_rng_seed, ts.sample_index_rng_seed, ts.schedule_rng_seed) == (
        6655344265603136530, 15863379492028895792, 12662793979680847247)
    ms = S.make_test_settings(S.resolve("MultiStream", flags={"target_latency": 40}), 64)
    assert ms.multi_stream_samples_per_query == 8 and ms.multi_stream_expected_latency_ns == 40_000_000
    assert abs(ms.multi_stream_target_latency_percentile - 0.99) < 1e-9
    off = S.make_test_settings(S.resolve("Offline", flags={"target_qps": 300}), 64)
    assert off.offline_expected_qps == 300 and off.min_query_count == 24576 and off.min_duration_ms == 600000


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


def test_each_layer_overrides_the_one_below_and_is_named_as_source(tmp_path):
    """threads: built-in 2 < preset cpu 1 < user conf 5 < flags 6; a key set only below keeps its source."""
    user = _conf(tmp_path, "ssd-resnet34.*.threads = 5\n")
    steps = [
        ({}, 2, "built-in ssd-resnet34.conf"),
        ({"preset": "cpu"}, 1, "preset cpu"),
        ({"preset": "cpu", "user_conf": user}, 5, user),
        ({"preset": "cpu", "user_conf": user, "flags": {"threads": 6}}, 6, "flags"),
    ]
    for layers, threads, source in steps:
        run = S.resolve("Offline", **layers)
        assert (run.sut.threads, run.sources["threads"]) == (threads, source), layers
    run = S.resolve("Offline", preset="cpu", user_conf=user, flags={"threads": 6, "dtype": None})
    assert (run.sut.model, run.sources["model"]) == ("ssd128_mini", "preset cpu")
    assert (run.sut.batch_timeout_us, run.sources["batch_timeout_us"]) == (2000, "built-in ssd-resnet34.conf")
    assert run.sources["dtype"] == "preset cpu"  # a None flag is "not given"
    assert (run.loadgen["min_query_count"], run.sources["min_query_count"]) == (1024, "preset cpu")  # Offline block


def test_conf_precedence_inside_one_file(tmp_path):
    """LoadGen's rule (lookupkv in test_settings_internal.cc), whatever the line order:
    model.Scenario > *.Scenario > model.* > *.*."""
    lines = ["ssd-resnet34.Server.target_qps = 4", "*.Server.target_qps = 3", "ssd-resnet34.*.target_qps = 2",
             "*.*.target_qps = 1"]  # fmt: skip
    for order in (lines, lines[::-1]):
        assert S.parse_conf(_conf(tmp_path, "\n".join(order) + "\n"), "ssd-resnet34", "Server") == {"target_qps": "4"}
    for drop, expected in ((1, "3"), (2, "2"), (3, "1")):
        path = _conf(tmp_path, "\n".join(lines[drop:]) + "\n")
        assert S.parse_conf(path, "ssd-resnet34", "Server") == {"target_qps": expected}
    path = _conf(tmp_path, "resnet50.*.threads = 9\nssd-resnet34.Offline.threads = 8  # comment\n"
                           "ssd-resnet34.*.count = 1\nssd-resnet34.*.count = 2\n")  # fmt: skip
    assert S.parse_conf(path, "ssd-resnet34", "Server") == {"count": "2"}  # other model/scenario; last wins
    assert S.parse_conf(path, "ssd-resnet34", "Offline") == {"threads": "8", "count": "2"}
    assert S.read_conf(path, "ssd-resnet34", "Offline") == {"threads": ("8", True), "count": ("2", False)}


def test_seed_table_columns_are_translated():
    values = S.preset_values("tpu_v3_1x_server", "Server")
    assert values == {"max_batch_size": 4, "batch_timeout_us": 10000, "count": 64, "target_latency": 100.0,
                      "target_qps": 320.0, "warmup": 32, "dtype": "fp32", "threads": 128,
                      "space_to_depth": True}  # fmt: skip
    assert S.preset_values("tpu_v3_1x_offline", "Offline")["dtype"] == "bf16"  # use_bfloat16: true
    assert S.preset_scenario("tpu_v3_1x_offline") == "Offline" and S.preset_scenario("cpu") is None
    cpu = S.preset_values("cpu", "Server")  # a scenario block applies to its scenario only
    assert cpu["max_batch_size"] == 8 and cpu["target_qps"] == 40 and "min_query_count" in cpu
    assert S.preset_values("cpu", "Offline")["max_batch_size"] == 16


def test_sut_settings_are_typed(tmp_path):
    run = S.resolve("Server", user_conf=_conf(tmp_path, "ssd-resnet34.*.channels_last = yes\n"
                                                        "ssd-resnet34.*.threads = 3\n"))
    sut = run.sut
    assert isinstance(sut, S.SutSettings)
    assert sut.channels_last is True and sut.space_to_depth is False  # "yes" / "false" parsed as bools
    assert sut.threads == 3 and isinstance(sut.threads, int) and sut.device == "auto"
    assert [f.name for f in dataclasses.fields(S.SutSettings)] == list(S.SUT_KEYS)
    assert S.SUT_KEYS["max_batch_size"] is int and S.SUT_KEYS["channels_last"] is bool
    assert not set(run.loadgen) & set(S.SUT_KEYS)  # SUT keys never land among LoadGen's
    assert run.to_json()["sut"] == dataclasses.asdict(sut)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sut.threads = 4


def test_unknown_keys_are_rejected_naming_key_and_origin(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="^flags: unknown setting 'max_batch'"):
        S.resolve("Server", flags={"max_batch": 3})
    path = _conf(tmp_path, "ssd-resnet34.Server.target_qpz = 3\n", "bad.conf")
    with pytest.raises(ValueError, match=f"^{path}: unknown setting 'target_qpz'"):
        S.resolve("Server", user_conf=path)
    monkeypatch.setattr(S, "load_presets", lambda: {"mine": {"thread": 2}})
    with pytest.raises(ValueError, match="^preset mine: unknown setting 'thread'"):
        S.resolve("Server", preset="mine")


@pytest.mark.parametrize("flags, message", [
    ({"target_qps": "fast"}, "flags: target_qps = 'fast' is not a number"),
    ({"target_qps": -1}, r"flags: target_qps must be a finite number in \(0, 100000\], got -1"),
    ({"threads": "two"}, "flags: threads = 'two' is not a valid int"),
    ({"channels_last": "maybe"}, "flags: channels_last = 'maybe' is not a valid bool"),
    ({"threads": 0}, r"threads must be at least 1, got 0 \(from flags\)"),
    ({"max_batch_size": 0}, r"max_batch_size must be at least 1, got 0 \(from flags\)"),
    ({"warmup": -2}, r"warmup must not be negative, got -2 \(from flags\)"),
])  # fmt: skip
def test_bad_values_name_key_and_origin(flags, message):
    with pytest.raises(ValueError, match=message):
        S.resolve("Server", flags=flags)


def test_out_of_range_value_names_the_file(tmp_path):
    path = _conf(tmp_path, "ssd-resnet34.*.count = -1\n")
    with pytest.raises(ValueError, match=rf"count must not be negative, got -1 \(from {path}\)"):
        S.resolve("Server", user_conf=path)
    ok = S.resolve("Server", user_conf=path, flags={"count": 5})  # a higher layer fixes it
    assert ok.sut.count == 5


def test_a_sut_key_missing_from_the_builtin_conf_is_named(tmp_path, monkeypatch):
    text = Path(S.builtin_conf_path()).read_text().replace("ssd-resnet34.*.warmup = 2", "")
    monkeypatch.setattr(S, "builtin_conf_path", lambda: _conf(tmp_path, text, "builtin.conf"))
    with pytest.raises(ValueError, match="no value for warmup"):
        S.resolve("Server")


def test_written_conf_holds_only_loadgen_keys_with_sources(tmp_path):
    run = S.resolve("Offline", preset="cpu", flags={"target_qps": 12.5})
    path = tmp_path / "settings.conf"
    S.write_conf(run, str(path))
    text = path.read_text()
    assert "ssd-resnet34.Offline.target_qps = 12.5" in text and "# target_qps: from flags" in text
    assert "threads" not in text and "model" not in text.replace("ssd-resnet34", "")
    table = S.format_settings(run)
    assert "threads = 1   (preset cpu)" in table and "target_qps = 12.5   (flags)" in table
