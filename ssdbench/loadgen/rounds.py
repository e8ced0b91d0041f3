"""The MLPerf Inference rounds with ssd-resnet34 (v0.5 .. v2.0) as data: `ssdbench/configs/rounds.json`.

Each round carries what its own files in mlcommons/inference say (the round's branch; the JSON
names the file of every group of values, benchmark.md §9):

- ``seeds``: the three LoadGen RNG seeds of the round's ``mlperf.conf``. LoadGen 6.x reads seeds
  only from its built-in ``mlperf.conf`` (which no longer knows ssd-resnet34), so ssdbench sets them
  on ``TestSettings`` directly (`ssdbench.loadgen.settings.make_test_settings`);
- ``loadgen``: the ssd-resnet34 keys of that ``mlperf.conf`` per scenario (ms, percent), the lowest
  settings layer of `ssdbench.loadgen.settings.resolve`;
- ``rules``: what the round's submission checker requires of a result (durations, query counts,
  latency bound, percentiles, performance sample count), read by `ssdbench.loadgen.checker`;
- ``accuracy_target`` (mAP in percent: 99 % of 20.0) and the required / optional scenarios per
  system category;
- ``compliance``: the audit settings of TEST01 / TEST04-A / TEST04-B / TEST05 for ssd-resnet34 and
  the tolerances of the round's verification scripts (`ssdbench.loadgen.compliance`).

``legacy_multistream`` marks v0.5 .. v1.1, whose MultiStream (a query of N samples every 66.7 ms,
N the metric) LoadGen 6.x no longer runs: those rounds refuse MultiStream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

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


def _load() -> dict[str, dict]:
    text = (resources.files("ssdbench") / "configs" / "rounds.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def get_round(name: str | None = None) -> Round:
    """The round ``name`` (default v2.0); ValueError naming the rounds for an unknown one."""
    name = name or DEFAULT_ROUND
    data = _load()
    if name not in data:
        raise ValueError(f"unknown round {name!r}; choose one of {', '.join(data)}")
    return Round(name=name, **data[name])
