"""MLPerf logging: logs written through `MLPerfLogger` pass the official compliance checker."""

from __future__ import annotations

import ast
import json
import os
import warnings

import mlperf_logging
import yaml

from ssdbench import build_model
from ssdbench.train.mllog import MLPerfLogger, ruleset_tensor_names
from ssdbench.train.mlperf_checks import compliance

RULES = os.path.join(os.path.dirname(mlperf_logging.__file__), "compliance_checker", "training_1.1.0")


def ruleset_tensors() -> list[str]:
    """The tensor list of closed_ssd.yaml, read from the installed package (independent source)."""
    with open(os.path.join(RULES, "closed_ssd.yaml")) as f:
        rules = yaml.safe_load(f)
    end = next(r["END"]["CHECK"] for r in rules if "END" in r)
    return ast.literal_eval(end[end.index("sorted([") + 7 : end.rindex(")")])  # the list literal inside sorted(...)


def cfg_for(model: str, dataset: str = "coco2017", division: str = "closed") -> dict:
    return {
        "model": model, "dataset": dataset, "global_batch_size": 32, "base_lr": 2.5e-3,
        "weight_decay": 5e-4, "warmup_steps": 100, "warmup_factor": 0, "decay_epochs": [40, 50],
        "bn_span": 32, "max_samples": 1, "seed": 7, "train_samples": 117266, "eval_samples": 4952,
        "submission_org": "test", "submission_platform": "cpu", "submission_status": "research",
        "submission_division": division, "submission_benchmark": "ssd",
    }


def simulate_run(path, model_name: str, accuracies: list[float], division: str = "closed",
                 dataset: str = "coco2017") -> tuple[str, list[str]]:
    """A training run's log as the training loop writes it: blocks of 5 epochs, eval after each."""
    log = MLPerfLogger(path)
    log.init_start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logged = log.setup(cfg_for(model_name, dataset, division), build_model(model_name))
    log.init_stop()
    log.run_start()
    for i, acc in enumerate(accuracies):
        first = 5 * i + 1
        log.block_start(first, 5)
        for epoch in range(first, first + 5):
            log.epoch_start(epoch)
            log.epoch_stop(epoch)
        log.eval_start(first + 4)
        log.eval_accuracy(acc, first + 4)
        log.eval_stop(first + 4)
        log.block_stop(first)
    log.run_stop(success=max(accuracies) >= 0.23)
    log.close()
    return logged, [str(w.message) for w in caught]


def test_tensor_names_match_ruleset():
    mapping = ruleset_tensor_names(build_model("ssd300_r34"))
    assert sorted(set(mapping.values())) == sorted(ruleset_tensors())
    # spot checks of the mapping documented in mllog.py
    assert mapping["backbone.layer2.0.downsample.0.weight"] == "ssd0_resnetmlperf0_stage2_conv2_weight"
    assert mapping["backbone.layer3.5.bn2.bias"] == "ssd0_resnetmlperf0_stage3_batchnorm12_beta"
    assert mapping["conf.5.weight"] == mapping["loc.5.weight"] == "ssd0_convpredictor5_conv0_weight"


def test_closed_run_reaching_target_passes(tmp_path):
    path = tmp_path / "closed.log"
    assert simulate_run(path, "ssd300_r34", [0.12, 0.2, 0.231]) == ("closed", [])
    failed = compliance(path)
    assert failed == [], failed
    lines = [json.loads(x.split(":::MLLOG ", 1)[1]) for x in path.read_text().splitlines()]
    assert sum(x["key"] == "weights_initialization" for x in lines) == 119


def test_closed_run_below_target_fails_only_quality(tmp_path):
    path = tmp_path / "short.log"
    simulate_run(path, "ssd300_r34", [0.05, 0.1])
    failures = compliance(path)
    assert len(failures) == 1, failures
    assert "eval_accuracy" in failures[0] and "0.230" in failures[0]


def test_other_model_logs_open_and_passes(tmp_path):
    path = tmp_path / "open.log"
    logged, warned = simulate_run(path, "ssd128_mini", [0.05, 0.3], division="closed", dataset="synth")
    assert logged == "open" and any("open division" in w for w in warned)
    failed = compliance(path)
    assert failed == [], failed
    assert '"value": "open"' in path.read_text()


def test_only_rank_zero_writes(tmp_path):
    path = tmp_path / "rank1.log"
    log = MLPerfLogger(path, rank=1)
    log.init_start()
    log.close()
    assert not path.exists() or path.read_text() == ""
