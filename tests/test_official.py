"""The round's own tools' values, by hand: the result field each round's submission checker reads
(RESULT_FIELD_NEW, branch r2.0's submission-checker.py), the summary line the round's compliance
scripts misread, the resolved data types of the implementation JSON, the system fields the checker
knows."""

from __future__ import annotations

import json

import pytest

from ssdbench.loadgen.rules import DetailLog, official_result, summary_headline_note

DETAIL = {"result_90.00_percentile_latency_ns": 26_840_000, "early_stopping_latency_ss": 29_570_000,
          "result_99.00_percentile_per_query_latency_ns": 80_000_000, "early_stopping_latency_ms": 84_000_000,
          "effective_samples_per_query": 8, "result_samples_per_second": 123.5,
          "result_scheduled_samples_per_sec": 45.25}  # fmt: skip


def _log(tmp_path) -> DetailLog:
    return DetailLog(tmp_path / "d.txt", [{"key": k, "value": v, "metadata": {}} for k, v in DETAIL.items()])


@pytest.mark.parametrize("round_name,scenario,field,value,unit", [
    ("v2.0", "SingleStream", "early_stopping_latency_ss", 29.57, "ms"),
    ("v2.0", "MultiStream", "early_stopping_latency_ms", 84.0, "ms"),
    ("v2.0", "Offline", "result_samples_per_second", 123.5, "samples/s"),
    ("v2.0", "Server", "result_scheduled_samples_per_sec", 45.25, "samples/s"),
    ("v1.1", "SingleStream", "result_90.00_percentile_latency_ns", 26.84, "ms"),
    ("v1.0", "MultiStream", "effective_samples_per_query", 8, "samples/query"),
    ("v0.7", "SingleStream", "result_90.00_percentile_latency_ns", 26.84, "ms"),
    ("v0.5", "Server", "result_scheduled_samples_per_sec", 45.25, "samples/s"),
])  # fmt: skip
def test_the_result_field_of_each_round(tmp_path, round_name, scenario, field, value, unit):
    result = official_result(_log(tmp_path), round_name, scenario)
    assert (result.field, result.unit) == (field, unit)
    assert result.value == pytest.approx(value, rel=1e-12)


def test_a_missing_field_is_none(tmp_path):
    empty = DetailLog(tmp_path / "d.txt", [])
    assert official_result(empty, "v2.0", "SingleStream").value is None


def test_the_summary_line_the_compliance_scripts_misread(tmp_path):
    summary = tmp_path / "mlperf_log_summary.txt"
    summary.write_text("Scenario : SingleStream\n90.0th percentile latency (ns) : 39542177\nResult is : VALID\n"
                       "90.00 percentile latency (ns)   : 39542177\n")  # fmt: skip
    note = summary_headline_note(summary, "SingleStream")
    assert "'90th percentile latency'" in note and "'90.0th percentile latency (ns)'" in note
    assert summary_headline_note(summary, "Offline") is None
    summary.write_text("Scenario : SingleStream\n90th percentile latency (ns) : 39542177\n")  # an older LoadGen
    assert summary_headline_note(summary, "SingleStream") is None


def test_resolved_data_types():
    from ssdbench.loadgen.submission import resolved_data_types
    from ssdbench.precision import resolve_precision

    sut = {"dtype": "auto"}
    assert resolved_data_types({"sut": sut, "backend_config": {"dtype": "bf16"}}) == ("bf16", "bf16")
    assert resolved_data_types({"sut": sut, "instances": [{"dtype": "fp32"}, {"dtype": "fp32"}]}) == ("fp32", "fp32")
    quantized = {"sut": sut, "backend_config": {"dtype": "fp32", "quantized": True}}
    assert resolved_data_types(quantized) == ("fp32", "int8")
    cpu = resolve_precision("auto", "cpu")
    assert resolved_data_types({"sut": sut, "device": "cpu"}) == (cpu, cpu) and cpu != "auto"


def test_system_fields_are_the_checkers(monkeypatch):
    from ssdbench.loadgen import submission
    from ssdbench.loadgen.rules import known_system_fields

    facts = {"host_processor_model_name": "cpu", "host_processor_vcpu_count": 2, "framework": "PyTorch"}
    monkeypatch.setattr(submission, "machine_facts", lambda: facts)
    given = {k: "x" for k in known_system_fields("v2.0") if k not in facts} | {"power_management": "none"}
    desc = submission.system_description("O", "s", "open", "edge", "v2.0", given)
    assert set(desc) <= set(known_system_fields("v2.0"))  # nothing the checker would call unknown
    assert desc["hw_notes"] == "x"  # the submitter's notes win
    desc = submission.system_description("O", "s", "open", "edge", "v2.0", {k: v for k, v in given.items() if k != "hw_notes"})
    assert desc["hw_notes"] == "host_processor_vcpu_count: 2" and "host_processor_vcpu_count" not in desc
    assert json.loads(json.dumps(desc)) == desc
