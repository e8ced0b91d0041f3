"""The settings of one LoadGen run: the MLPerf round's values, the layers that resolve them
(`resolve` -> `RunSettings`, `SutSettings`), and their transfer onto LoadGen's ``TestSettings``.

Rounds (`Round`, `get_round`): the rounds with ssd-resnet34 (v0.5 .. v2.0) as data,
``ssdbench/configs/rounds.json``, each group of values named with the file of the round's branch
it comes from (benchmark.md §9): ``seeds`` (the three RNG seeds of the round's ``mlperf.conf``),
``loadgen`` (its ssd-resnet34 keys per scenario, ms and percent: the lowest settings layer),
``rules`` (what the round's submission checker requires of a result, read by
`ssdbench.loadgen.rules`), ``accuracy_target`` (mAP in percent) and the required / optional
scenarios per system category, ``compliance`` (the audit settings of TEST01 / TEST04-A / TEST04-B /
TEST05 and the tolerances of the round's verification scripts). ``legacy_multistream`` marks
v0.5 .. v1.1, whose MultiStream (a query of N samples every 66.7 ms) LoadGen 6.x no longer runs.

Resolution, lowest precedence first: 1. the round (``--round``, default v2.0); 2.
``ssdbench/configs/ssd-resnet34.conf``, the SUT keys in LoadGen's ``.conf`` syntax; 3. a named
preset from ``ssdbench/configs/loadgen_presets.json`` (the Cloud TPU seed table and ``cpu`` /
``gpu_h100``); 4. ``--user-conf FILE``; 5. command-line flags. Every setting is one key of a flat
namespace per scenario: LoadGen keys (``target_qps``, ``target_latency`` in ms, ...) stay a dict;
the ssdbench keys, the fields of `SutSettings`, configure our side and never reach LoadGen. The
RNG seeds are the round's and nothing else sets them: LoadGen 6.x reads seeds and
``accuracy_log_probability`` only from its built-in ``mlperf.conf`` and silently ignores them in a
user config, so any layer naming one is rejected. A key LoadGen does not read in this scenario is
rejected when a flag or a line for this very scenario sets it, and dropped (listed in
``RunSettings.dropped``) when a wildcard line or a preset's shared block does.

Onto LoadGen: `make_test_settings` sets every field directly (the LoadGen keys, the round's seeds,
a compliance test's audit values). It never calls ``TestSettings.FromConfig``: in LoadGen 6.x a
second ``FromConfig`` in one process logs ``error_invalid_config`` (a static counter in
test_settings_internal.cc) and skips the built-in mlperf.conf, so a second run in a process would
log seeds 0 and be rejected by the submission checker. `expected_effective` lists the
``effective_*`` values the detail log must then show (`effective_mismatches`: a mismatch makes
the run INVALID). `write_conf` writes the resolved keys in LoadGen syntax (``settings.conf``, the
submission's ``user.conf``), `round_conf` the round's keys and seeds (its ``mlperf.conf``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, get_type_hints

from ssdbench.checks import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Range
from ssdbench.io import atomic_write_text

ROUNDS = ("v0.5", "v0.7", "v1.0", "v1.1", "v2.0")
DEFAULT_ROUND = "v2.0"
SEED_KEYS = ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed")
COMPLIANCE_TESTS = ("TEST01", "TEST04-A", "TEST04-B", "TEST05")
CATEGORIES = ("datacenter", "edge", "datacenter,edge")


@dataclass(frozen=True)
class Round:
    """One round's ssd-resnet34 values (the fields of `rounds.json`, see the module doc)."""

    name: str
    source: dict[str, str]
    seeds: dict[str, int]
    legacy_multistream: bool
    loadgen: dict[str, dict[str, Any]]
    rules: dict[str, Any]
    accuracy_target: float  # mAP in percent
    scenarios: dict[str, dict[str, list[str]]]
    compliance: dict[str, dict[str, Any]]

    def loadgen_values(self, scenario: str) -> dict[str, Any]:
        """The round's mlperf.conf keys for ``scenario`` (its own block over the ``*`` block)."""
        return {**self.loadgen.get("*", {}), **self.loadgen.get(scenario, {})}

    def source_of(self, part: str) -> str:
        """The file a group of values comes from ("seeds", "loadgen", "rules", "compliance", ...)."""
        for names, where in self.source.items():
            if part in (n.strip() for n in names.split(",")):
                return where
        return "ssdbench/configs/rounds.json"

    def check_scenario(self, scenario: str) -> None:
        """ValueError when LoadGen 6.x cannot run ``scenario`` as this round defines it."""
        if scenario == "MultiStream" and self.legacy_multistream:
            raise ValueError(
                f"--round {self.name}: MultiStream of v0.5-v1.1 (a query of N samples every 66.7 ms, N the "
                "metric) is not what LoadGen 6.x runs (v2.0's back-to-back queries of 8 samples); "
                "use --round v2.0 for MultiStream"
            )

    def scenario_lists(self, category: str) -> tuple[list[str], list[str]]:
        """(required, optional) scenarios of a system category; ValueError for an unknown one."""
        if category not in self.scenarios:
            raise ValueError(f"round {self.name} has no system category {category!r}; "
                             f"choose one of {', '.join(self.scenarios)}")  # fmt: skip
        entry = self.scenarios[category]
        return list(entry["required"]), list(entry["optional"])

    def audit(self, test: str, scenario: str) -> dict[str, Any]:
        """The audit.config keys of a compliance test for ``scenario`` (per-scenario values resolved)."""
        if test not in self.compliance:
            raise ValueError(f"unknown compliance test {test!r}; choose one of {', '.join(COMPLIANCE_TESTS)}")
        values = self.compliance[test]["audit"]
        return {k: (v[scenario] if isinstance(v, dict) else v) for k, v in values.items()}

    def tolerance(self, test: str, scenario: str, reference: float) -> float:
        """Allowed relative difference of a test's performance from its reference (a fraction).

        ``reference`` is the reference metric (ns for SingleStream/MultiStream latencies); the
        round's scripts relax the tolerance for very short latencies (``relaxed``: [bound, value]).
        """
        entry = self.compliance[test]
        bound, relaxed = entry.get("relaxed", {}).get(scenario, (None, None))
        if bound is not None and reference <= bound:
            return float(relaxed)
        return float(entry["tolerance"])


def _config_json(name: str) -> dict[str, dict]:
    """A JSON file of ``ssdbench/configs`` (package data), its ``_comment`` keys dropped."""
    text = (resources.files("ssdbench") / "configs" / name).read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def get_round(name: str | None = None) -> Round:
    """The round ``name`` (default v2.0); ValueError naming the rounds for an unknown one."""
    name = name or DEFAULT_ROUND
    data = _config_json("rounds.json")
    if name not in data:
        raise ValueError(f"unknown round {name!r}; choose one of {', '.join(data)}")
    return Round(name=name, **data[name])


LOADGEN_MODEL = "ssd-resnet34"  # the model name of the MLPerf v0.5-v2.0 rules
SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
MODES = ("performance", "accuracy", "find-peak")  # find-peak: LoadGen's FindPeakPerformance (Server)


@dataclass(frozen=True)
class SutSettings:
    """The system under test's settings: ssdbench keys, never passed to LoadGen.

    Each field is a key of the same namespace as LoadGen's (``ssd-resnet34.*.threads = 2``) and is
    resolved through the same layers; the built-in conf sets every one. Field order is the
    order of ``settings.json``.
    """

    model: str  # network (`ssdbench.model.specs`): ssd1200_r34 is SSD-Large, ssd128_mini the CPU demo
    backend: str  # eager | compile | onnxruntime | openvino (`ssdbench.infer.backends`)
    dtype: str  # compute precision: auto (bf16 where native, `ssdbench.precision`) | fp32 | bf16 | fp16
    channels_last: bool  # NHWC memory format
    space_to_depth: bool  # 4x4/s1 first conv on 2x2 pixel blocks (benchmark.md §7)
    device: str  # auto | cpu | cuda | cuda:N
    max_batch_size: int  # dynamic batcher: a batch leaves when it holds this many samples ...
    batch_timeout_us: int  # ... or when its first sample has waited this long (µs)
    threads: int  # SUT worker threads: batches in flight
    instances: int  # model instances, each a process pinned to its own cores (`loadgen.device_pool`)
    # Pool devices, one worker each: cuda:0,cuda:1 | cuda:all | cpu:N (`loadgen.device_pool`); auto: one
    # device in the SUT's process, or cpu:instances.
    devices: str
    count: int  # QSL samples (0 = every image of the val split)
    warmup: int  # untimed warm-up batches per batch size before the test
    # A batch (or a warm-up batch) the model has not answered after this many seconds ends the run
    # with an error instead of LoadGen waiting for it forever (`sut.BatchingSUT`).
    predict_timeout_s: float


# ssdbench keys and their types (bool parses "true/false/1/0/yes/no").
SUT_KEYS: dict[str, type] = get_type_hints(SutSettings)
# Smallest accepted value of the numeric SUT keys.
_SUT_MINIMUM = {"max_batch_size": 1, "threads": 1, "instances": 1, "count": 0, "warmup": 0, "batch_timeout_us": 0}
# What the numeric LoadGen keys accept (`ssdbench.checks`): finite, in range. A zero or infinite
# target_qps makes LoadGen size its query schedule without bound; 1e5 queries/s is far above any
# SSD-Large system (benchmark.md §7) and keeps a 600 s Server schedule at 6e7 queries.
# Bounds of what one machine can hold (a value past them used to hang or overflow): a batch of
# 1024 SSD-Large inputs is 17.7 GB of fp32; 1024 threads (batches in flight) is above the seed
# presets' largest (384, Cloud TPU);
# 1024 samples per MultiStream query is far above any round's (8 since v1.1).
MAX_BATCH, MAX_THREADS, MAX_SAMPLES_PER_QUERY = 1024, 1024, 1024
LOADGEN_RANGES: dict[str, Range] = {
    "target_qps": Range(float, gt=0, le=1e5), "target_latency": POSITIVE,
    "target_latency_percentile": Range(float, gt=0, lt=100), "samples_per_query": Range(int, ge=1, le=MAX_SAMPLES_PER_QUERY),
    "min_duration": NON_NEGATIVE, "max_duration": NON_NEGATIVE,
    **{k: Range(int, ge=0, le=1) for k in ("coalesce_queries", "print_timestamps", "performance_issue_unique",
                                            "performance_issue_same", "sample_concatenate_permutation")},
}  # fmt: skip
# What the numeric SUT keys accept beyond `_SUT_MINIMUM` (the loadgen command's flags parse with them).
SUT_RANGES = {"predict_timeout_s": POSITIVE, "max_batch_size": Range(int, ge=1, le=MAX_BATCH),
              "threads": Range(int, ge=1, le=MAX_THREADS)}
# LoadGen `.conf` keys this harness accepts (a typo must fail, not be silently ignored).
LOADGEN_KEYS = (
    "target_qps", "target_latency", "target_latency_percentile", "samples_per_query",
    "min_duration", "max_duration", "min_query_count", "max_query_count",
    "performance_sample_count_override", "accuracy_log_rng_seed", "accuracy_log_sampling_target",
    "max_async_queries", "coalesce_queries", "print_timestamps", "performance_issue_unique",
    "performance_issue_same", "performance_issue_same_index", "sample_concatenate_permutation",
)  # fmt: skip
# Keys LoadGen 6.x reads only from its built-in mlperf.conf (test_settings_internal.cc, FromConfig
# with conf_type 0): in a user config they are ignored without a word, so they are refused here.
IGNORED_BY_LOADGEN = (*SEED_KEYS, "accuracy_log_probability")
# The scenarios whose TestSettings field a key reaches (keys not listed reach every scenario).
SCENARIO_KEYS: dict[str, tuple[str, ...]] = {
    "target_qps": ("Server", "Offline"),
    "target_latency": ("SingleStream", "MultiStream", "Server"),
    "target_latency_percentile": ("SingleStream", "MultiStream", "Server"),
    "samples_per_query": ("MultiStream",),
    "max_async_queries": ("Server",),
    "coalesce_queries": ("Server",),
}
# The seed table's column names (benchmark.md §7 Cloud TPU rows) -> (our key, value converter).
SEED_COLUMNS: dict[str, tuple[str, Any]] = {
    "batch_size": ("max_batch_size", int),
    "batch_timeout_micros": ("batch_timeout_us", int),
    "count": ("count", int),
    "max_latency": ("target_latency", lambda s: float(s) * 1000.0),  # seconds -> ms
    "qps": ("target_qps", float),
    "init_iterations": ("warmup", int),
    "use_bfloat16": ("dtype", lambda b: "bf16" if b else "fp32"),
    "threads": ("threads", int),
    "use_space_to_depth": ("space_to_depth", bool),
}
_PRESET_META = ("description", "scenario", "accuracy")


@dataclass
class RunSettings:
    """Resolved settings of one run: LoadGen keys, SUT settings and where each value came from."""

    scenario: str  # one of SCENARIOS
    mode: str  # one of MODES
    loadgen: dict[str, Any]  # LoadGen .conf key -> value (ms for durations and latencies)
    sut: SutSettings
    sources: dict[str, str]  # key (LoadGen or SUT) -> the layer that set it ("flags", "preset cpu", ...)
    round: str = DEFAULT_ROUND  # the MLPerf round whose seeds and rules apply (`ssdbench.loadgen.settings`)
    dropped: list[str] = field(default_factory=list)  # "key (from layer)": keys LoadGen would not read here

    @property
    def seeds(self) -> dict[str, int]:
        """The round's three RNG seeds (set on TestSettings directly)."""
        return dict(get_round(self.round).seeds)

    def to_json(self) -> dict:
        return {"scenario": self.scenario, "mode": self.mode, "round": self.round, "seeds": self.seeds,
                "loadgen": self.loadgen, "sut": asdict(self.sut), "sources": self.sources,
                "dropped": self.dropped}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict) -> RunSettings:
        """The settings of a finished run (its ``settings.json``), e.g. for its compliance tests."""
        try:
            return cls(data["scenario"], data["mode"], dict(data["loadgen"]), SutSettings(**data["sut"]),
                       dict(data["sources"]), data.get("round", DEFAULT_ROUND), list(data.get("dropped", [])))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"settings.json of an older or foreign run: {exc}") from None


def builtin_conf_path() -> str:
    return str(resources.files("ssdbench") / "configs" / "ssd-resnet34.conf")


def load_presets() -> dict[str, dict]:
    """Preset name -> its dict (the JSON's ``_comment`` dropped)."""
    return _config_json("loadgen_presets.json")


def read_conf(path: str, model: str, scenario: str) -> dict[str, tuple[str, bool]]:
    """Values of ``path`` (LoadGen .conf syntax) for (model, scenario): key -> (value, explicit).

    Precedence inside one file is LoadGen's (``lookupkv`` in test_settings_internal.cc):
    ``m.S`` > ``*.S`` > ``m.*`` > ``*.*``; a later line of the same rank wins. ``explicit`` is
    True when the winning line names ``scenario`` itself.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    ranked: dict[str, tuple[int, str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(_text_lines(f, path), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, value = line.partition("=")
            parts = name.strip().split(".")
            if not sep or len(parts) != 3 or not value.strip():
                raise ValueError(f"{path}:{lineno}: expected 'model.Scenario.key = value', "
                                 f"got {raw.strip()!r}")
            m, s, key = parts
            if m not in (model, "*") or s not in (scenario, "*"):
                continue
            rank = 2 * (s == scenario) + (m == model)
            if key not in ranked or rank >= ranked[key][0]:
                ranked[key] = (rank, value.strip())
    return {key: (value, rank >= 2) for key, (rank, value) in ranked.items()}


def parse_conf(path: str, model: str, scenario: str) -> dict[str, str]:
    """`read_conf` without the explicit flags: key -> value string."""
    return {key: value for key, (value, _explicit) in read_conf(path, model, scenario).items()}


def _text_lines(f, path: str):
    """The lines of a text file; ValueError naming ``path`` when it is not text (a binary file)."""
    try:
        yield from f
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a LoadGen config file (not text: {exc.reason})") from None


def preset_values(name: str, scenario: str) -> dict[str, Any]:
    """The keys a preset sets for ``scenario`` (seed columns translated to our keys)."""
    return _preset_layer(name, scenario)[0]


def _preset_layer(name: str, scenario: str) -> tuple[dict[str, Any], set[str]]:
    """(values, keys set by the preset's block for ``scenario``)."""
    presets = load_presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    values: dict[str, Any] = {}
    for key, value in presets[name].items():
        if key in _PRESET_META or key in SCENARIOS:
            continue
        if key in SEED_COLUMNS:
            key, convert = SEED_COLUMNS[key]
            value = convert(value)
        values[key] = value
    if (n := seed_row_accelerators(name)) > 1 and "devices" not in values:
        values["devices"] = ",".join(f"cuda:{k}" for k in range(n))  # one worker per accelerator
    block = presets[name].get(scenario, {})
    values.update(block)
    return values, set(block)


def seed_row_accelerators(name: str) -> int:
    """Accelerators of a seed-table system (``tpu_v3_8x_offline`` -> 8); 1 for other presets.

    Each row of the seed table is a system of N accelerators behind one SUT, so its preset asks
    for N pool workers (``cuda:0..N-1``); on a machine with fewer the run is an error naming both
    counts unless ``--devices`` (or a user conf) says otherwise.
    """
    match = re.match(r"^tpu_v3_(\d+)x_", name)
    return int(match.group(1)) if match else 1


def preset_scenario(name: str) -> str | None:
    """The scenario a preset was written for (seed rows name one), or None."""
    presets = load_presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    return presets[name].get("scenario")


def _convert(key: str, value: Any, origin: str) -> Any:
    """Type-check one value; ValueError naming the key and where it came from."""
    if key in SUT_KEYS:
        kind = SUT_KEYS[key]
        try:
            if kind is bool and isinstance(value, str):
                if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.strip().lower() in ("1", "true", "yes")
            return kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{origin}: {key} = {value!r} is not a valid {kind.__name__}") from None
    if key in IGNORED_BY_LOADGEN:
        raise ValueError(f"{origin}: {key} is read by LoadGen 6.x only from its built-in mlperf.conf and "
                         "would be ignored; the seeds are the round's (--round v0.5 .. v2.0)")  # fmt: skip
    if key in LOADGEN_KEYS:
        number = _number(value)
        if number is None:
            raise ValueError(f"{origin}: {key} = {value!r} is not a number")
        rule = LOADGEN_RANGES.get(key, NON_NEGATIVE_INT)  # the other keys are counts
        if isinstance(value, bool) or not rule.ok(number):
            raise ValueError(f"{origin}: {key} must be {rule.describe()}, got {value!r}")
        return number
    raise ValueError(f"{origin}: unknown setting {key!r} (LoadGen keys: {', '.join(LOADGEN_KEYS)}; "
                     f"ssdbench keys: {', '.join(SUT_KEYS)})")  # fmt: skip


def _number(value: Any) -> int | float | None:
    """An int when the value is whole (64-bit seeds stay exact: no detour through float), else a
    float; None when it is no number."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        pass
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else number


def applies(key: str, scenario: str) -> bool:
    """Whether LoadGen reads LoadGen key ``key`` in ``scenario`` (SUT keys always apply)."""
    return scenario in SCENARIO_KEYS.get(key, SCENARIOS)


def resolve(
    scenario: str | None,
    mode: str = "performance",
    preset: str | None = None,
    user_conf: str | None = None,
    flags: dict[str, Any] | None = None,
    round: str | None = None,
) -> RunSettings:
    """Merge round < built-in config < preset < user config < flags (``None`` flag values are unset)."""
    if scenario is None and preset is not None:
        scenario = preset_scenario(preset)
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "find-peak" and scenario != "Server":
        raise ValueError(f"--find-peak searches the highest VALID Server target_qps; not for {scenario}")
    rnd = get_round(round)
    rnd.check_scenario(scenario)
    round_values = rnd.loadgen_values(scenario)
    layers = [(f"round {rnd.name}", round_values, set(round_values)),
              ("built-in ssd-resnet34.conf", *_conf_layer(builtin_conf_path(), scenario))]  # fmt: skip
    if preset is not None:
        layers.append((f"preset {preset}", *_preset_layer(preset, scenario)))
    if user_conf is not None:
        layers.append((user_conf, *_conf_layer(user_conf, scenario)))
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    layers.append(("flags", given, set(given)))
    loadgen, sut, sources, dropped = {}, {}, {}, []
    for origin, values, explicit in layers:
        for key, value in values.items():
            value = _convert(key, value, origin)
            if key not in SUT_KEYS and not applies(key, scenario):
                if key in explicit:
                    raise ValueError(f"{origin}: {key} does not apply to {scenario} (LoadGen reads it "
                                     f"only for {', '.join(SCENARIO_KEYS[key])})")  # fmt: skip
                dropped.append(f"{key} (from {origin})")
                continue
            (sut if key in SUT_KEYS else loadgen)[key] = value
            sources[key] = origin
    return RunSettings(scenario, mode, loadgen, _sut_settings(sut, sources), sources, rnd.name, dropped)


def _conf_layer(path: str, scenario: str) -> tuple[dict[str, str], set[str]]:
    values = read_conf(path, LOADGEN_MODEL, scenario)
    return {k: v for k, (v, _e) in values.items()}, {k for k, (_v, e) in values.items() if e}


def _sut_settings(values: dict[str, Any], sources: dict[str, str]) -> SutSettings:
    """The merged SUT keys as `SutSettings`; ValueError naming a missing key or a value out of range."""
    missing = [key for key in SUT_KEYS if key not in values]
    if missing:
        raise ValueError(f"no value for {', '.join(missing)} (the built-in ssd-resnet34.conf sets every SUT key)")
    for key, minimum in _SUT_MINIMUM.items():
        if values[key] < minimum:
            need = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
            raise ValueError(f"{key} {need}, got {values[key]} (from {sources[key]})")
    for key, rule in SUT_RANGES.items():
        if not rule.ok(values[key]):
            raise ValueError(f"{key} must be {rule.describe()}, got {values[key]} (from {sources[key]})")
    return SutSettings(**values)


def format_settings(settings: RunSettings) -> str:
    """Human table of the resolved settings with their sources."""
    rows = [f"scenario = {settings.scenario}", f"mode = {settings.mode}", f"round = {settings.round}"]
    rows += [f"{key} = {value}   (round {settings.round}, set on TestSettings)"
             for key, value in settings.seeds.items()]  # fmt: skip
    for group in (settings.loadgen, asdict(settings.sut)):
        for key, value in sorted(group.items()):
            rows.append(f"{key} = {value}   ({settings.sources.get(key, 'derived')})")
    rows += [f"not used in {settings.scenario}: {item}" for item in settings.dropped]
    return "\n".join(rows)


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
    atomic_write_text(path, "\n".join(lines) + "\n")


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
