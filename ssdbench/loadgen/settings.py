"""LoadGen settings for SSD-Large: round < built-in config < preset < user config < flags.

Every setting is one key of a flat namespace per scenario. LoadGen keys (``target_qps``,
``target_latency`` in ms, ``min_duration`` in ms, ...) go to `mlperf_loadgen.TestSettings` and stay
a dict (LoadGen's namespace, written to its ``.conf``); the ssdbench keys, the fields of
`SutSettings` (model, dtype, batcher, QSL size), configure our side and never reach LoadGen.
Sources, lowest precedence first:

1. the round (``--round``, default v2.0): its ``mlperf.conf`` values for ssd-resnet34
   (`ssdbench.loadgen.rounds`, ``ssdbench/configs/rounds.json``);
2. ``ssdbench/configs/ssd-resnet34.conf``: the SUT keys, in LoadGen's ``.conf`` syntax;
3. a named preset from ``ssdbench/configs/loadgen_presets.json`` (the Cloud TPU seed table and
   ``cpu`` / ``gpu_h100``);
4. ``--user-conf FILE`` in the same ``.conf`` syntax;
5. command-line flags.

The RNG seeds are the round's and nothing else sets them: LoadGen 6.x reads seeds and
``accuracy_log_probability`` only from its built-in ``mlperf.conf`` and silently ignores them in a
user config, so any layer naming one is rejected. A key LoadGen does not read in this scenario
(``target_qps`` in SingleStream, ``samples_per_query`` outside MultiStream, ...) is rejected when
a flag or a line for this very scenario sets it, and dropped (listed in ``RunSettings.dropped``)
when a wildcard line or a preset's shared block does. `ssdbench.loadgen.apply` puts the result on
``TestSettings`` directly (no ``FromConfig``: LoadGen 6.x logs ``error_invalid_config`` for a
second one in a process) and checks the detail log's ``effective_*`` values after the run.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, get_type_hints

from ssdbench.checks import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Range
from ssdbench.loadgen.rounds import DEFAULT_ROUND, SEED_KEYS, get_round

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
    instances: int  # model instances, each a process pinned to its own cores (`loadgen.instances`)
    # Pool devices, one worker each: cuda:0,cuda:1 | cuda:all | cpu:N (`loadgen.devices`); auto: one
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
_SUT_RANGES = {"predict_timeout_s": POSITIVE, "max_batch_size": Range(int, ge=1, le=MAX_BATCH),
               "threads": Range(int, ge=1, le=MAX_THREADS)}
SUT_RANGES = _SUT_RANGES  # the loadgen command's flags parse with them
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
    round: str = DEFAULT_ROUND  # the MLPerf round whose seeds and rules apply (`ssdbench.loadgen.rounds`)
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
    text = (resources.files("ssdbench") / "configs" / "loadgen_presets.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


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
    for key, rule in _SUT_RANGES.items():
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
