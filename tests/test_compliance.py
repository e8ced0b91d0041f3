"""MLPerf compliance tests (`ssdbench.loadgen.compliance`) on CPU.

ssd128_mini on a 32-image synthetic val set, Offline, short runs. The SUT answers with
ssd128_mini run one sample at a time (answers do not depend on batching), each image's answer
computed once and kept, and every sample costs a fixed time (`paced_per_sample`): to LoadGen an
honest SUT at a fixed speed, so the performance comparisons (5-10 %) do not hinge on the load of
a shared CI machine. Failing SUTs are caught: one that caches results by sample (faster on
repeats) fails TEST04; one whose outputs differ run to run goes to TEST01's baseline comparison.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import OrderedDict

import numpy as np
import pytest
import torch
from loadgen_fixtures import Pacer, concat_detections, loadgen_env, paced_per_sample

from ssdbench import cli
from ssdbench.loadgen import compliance
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.compliance import expand_tests, run_compliance
from ssdbench.loadgen.rules import DetailLog, read_detail_log
from ssdbench.loadgen.run import RunInputs, run_loadgen
from ssdbench.loadgen.settings import get_round
from ssdbench.model.postprocess import PaddedDetections

PACE = 0.01  # seconds per sample
FLAGS = {"min_duration": 200, "min_query_count": 48, "target_qps": 100, "warmup": 1, "max_batch_size": 8,
         "threads": 1}  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(data, weights, honest predict, perf run, accuracy run) of a 32-image set."""
    from ssdbench.infer.backends import BackendOptions, make_backend

    for data, weights in loadgen_env(tmp_path_factory, "comp", val_images=32, seed=2, background_bias=5.0):
        backend = make_backend("eager", "ssd128_mini", BackendOptions(device=torch.device("cpu")),
                               weights=weights)
        honest = paced_per_sample(backend.predict, PACE, memo={})
        root = data.parent
        # the accuracy run first: it computes (and keeps) every image's answer
        acc = run_loadgen(S.resolve("Offline", "accuracy", "cpu", flags=FLAGS), root / "acc",
                          RunInputs(data=data, predict=honest), verbose=False)  # fmt: skip
        perf = run_loadgen(S.resolve("Offline", "performance", "cpu", flags=FLAGS), root / "perf",
                           RunInputs(data=data, predict=honest), verbose=False)  # fmt: skip
        assert perf.result == "VALID", perf.summary.reasons
        yield data, weights, honest, perf.out, acc.out


def test_all_four_tests_run_and_pass(env, tmp_path):
    _, _, honest, perf, acc = env
    out = tmp_path / "Offline"
    results = run_compliance(["all"], perf, out, accuracy_run=acc, inputs=RunInputs(predict=honest), verbose=False)
    assert results == {"TEST01": True, "TEST04-A": True, "TEST04-B": True, "TEST05": True}
    # the layout the submission checker reads
    for path in ("TEST01/verify_accuracy.txt", "TEST01/verify_performance.txt", "TEST01/accuracy/accuracy.txt",
                 "TEST01/accuracy/mlperf_log_accuracy.json", "TEST04-A/verify_performance.txt",
                 "TEST05/verify_performance.txt", "compliance.json"):  # fmt: skip
        assert (out / path).is_file(), path
    for test in ("TEST01", "TEST04-A", "TEST04-B", "TEST05"):
        for name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
            assert (out / test / "performance" / "run_1" / name).is_file()
    # verify_accuracy.py's own output (its print("TEST PASS\n") ends in an empty line)
    official = (out / "TEST01" / "verify_accuracy.txt").read_text()
    assert official.startswith("Verifying accuracy. This might take a while...\n") and official.endswith("TEST PASS\n\n")
    assert "num_perf_log_data_mismatch = 0\n" in official and "ssdbench" not in official
    assert not (out / "TEST01" / "accuracy" / "baseline_accuracy.txt").exists()  # responses were equal
    whole = (out / "ssdbench_checks" / "TEST01_whole_response.txt").read_text()
    assert whole.rstrip().endswith("TEST PASS") and "not part of the official result" in whole
    # each run's detail log shows LoadGen read the test's audit.config and applied it
    rnd = get_round("v2.0")
    logs = {t: read_detail_log(out / t / "performance" / "run_1" / "mlperf_log_detail.txt") for t in results}
    assert all(log.found_audit_config and not log.errors for log in logs.values())
    assert logs["TEST01"].get("effective_accuracy_log_sampling_target") == 256
    assert logs["TEST01"].get("effective_accuracy_log_rng_seed") == 720381539243781796
    assert logs["TEST04-A"].get("effective_performance_issue_unique") is True
    assert logs["TEST04-B"].get("effective_performance_issue_same") is True
    assert logs["TEST04-B"].get("effective_performance_issue_same_index") == 3
    test05 = rnd.audit("TEST05", "Offline")
    assert [logs["TEST05"].get(f"effective_{k}") for k in ("qsl_rng_seed", "sample_index_rng_seed")] == [
        test05["qsl_rng_seed"], test05["sample_index_rng_seed"]]
    assert logs["TEST01"].get("effective_qsl_rng_seed") == rnd.seeds["qsl_rng_seed"]
    marker = json.loads((out / "compliance.json").read_text())
    assert marker["tests"] == results and marker["ssdbench_checks"] == {"TEST01 whole-response (ssdbench)": True}


def test_a_caching_sut_fails_test04(env, tmp_path):
    """Answers kept per sample (a few recent ones): TEST04-B, one sample again and again, runs far
    faster than TEST04-A's unique samples."""
    _, weights, _, perf, _ = env
    from ssdbench.infer.backends import BackendOptions, make_backend

    base = make_backend("eager", "ssd128_mini", BackendOptions(device=torch.device("cpu")),
                        weights=weights).predict
    cache: OrderedDict[bytes, PaddedDetections] = OrderedDict()
    pacer = Pacer()

    def caching(batch):
        start, computed, parts = time.perf_counter(), 0, []
        for j in range(len(batch)):
            key = batch[j].numpy().tobytes()
            if key not in cache:
                cache[key], computed = base(batch[j:j + 1]), computed + 1
                while len(cache) > 4:
                    cache.popitem(last=False)
            parts.append(cache[key])
        pacer.wait(PACE * computed, start)
        return concat_detections(parts)

    out = tmp_path / "Offline"
    results = run_compliance(["TEST04"], perf, out, inputs=RunInputs(predict=caching), verbose=False)
    assert results == {"TEST04-A": False, "TEST04-B": False}
    text = (out / "TEST04-A" / "verify_performance.txt").read_text()
    assert "TEST FAIL: TEST04-B is much faster than TEST04-A" in text


def _noisy_oracle(dataset, jitter: float):
    """A SUT network answering each image with its ground truth moved by fixed noise (mAP strictly
    between 0 and 1) plus ``jitter`` that differs from call to call (allowed non-determinism)."""
    from ssdbench.data.transforms import preprocess_for_inference

    truth = {}
    for i in range(len(dataset)):
        image, target = dataset.load(i)
        truth[preprocess_for_inference(image, 128).tobytes()] = (target["boxes"], target["labels"])
    fresh, pacer = np.random.default_rng(), Pacer()

    def predict(batch):
        start, n = time.perf_counter(), len(batch)
        out = PaddedDetections(boxes=torch.zeros(n, 12, 4), labels=torch.zeros(n, 12, dtype=torch.long),
                               scores=torch.zeros(n, 12), counts=torch.zeros(n, dtype=torch.long))  # fmt: skip
        for j in range(n):
            key = batch[j].numpy().tobytes()
            if key not in truth:  # the warm-up's zeros
                continue
            boxes, labels = truth[key]
            k = min(len(labels), 12)
            fixed = np.random.default_rng(zlib.crc32(key))
            noisy = boxes[:k] + fixed.normal(0, 0.01, (k, 4)) + fresh.normal(0, jitter, (k, 4))
            out.boxes[j, :k] = torch.from_numpy(np.clip(noisy, 0, 1).astype(np.float32))
            out.labels[j, :k], out.counts[j] = torch.from_numpy(labels[:k]), k
            out.scores[j, :k] = torch.from_numpy(fixed.uniform(0.3, 1.0, k).astype(np.float32))
        if batch.any():  # not the warm-up's zeros (see paced_per_sample)
            pacer.wait(PACE * n, start)
        return out

    return predict


def test_a_sut_whose_outputs_differ_run_to_run_goes_to_the_baseline_comparison(env, tmp_path):
    """Scores differ from the accuracy run's: verify_accuracy.py (first byte of each response, the
    sample index) passes, which is the official TEST01 result; ssdbench's whole-response comparison
    fails and its own baseline comparison (the accuracy run's answers for the sampled images vs the
    compliance log, within 1 %) is reported apart, outside the official files."""
    from ssdbench.loadgen.accuracy import open_val_dataset

    data, _, _, perf, _ = env
    predict = _noisy_oracle(open_val_dataset(data), jitter=1e-4)
    acc = run_loadgen(S.resolve("Offline", "accuracy", "cpu", flags=FLAGS), tmp_path / "acc",
                      RunInputs(data=data, predict=predict), verbose=False)  # fmt: skip
    assert 0.1 < acc.map < 0.98
    out = tmp_path / "Offline"
    assert run_compliance(["TEST01"], perf, out, accuracy_run=acc.out, inputs=RunInputs(predict=predict), verbose=False) == {
        "TEST01": True}
    official = (out / "TEST01" / "verify_accuracy.txt").read_text()
    assert "num_perf_log_data_mismatch = 0\n" in official and official.endswith("TEST PASS\n\n")
    text = (out / "ssdbench_checks" / "TEST01_whole_response.txt").read_text()
    assert "num_perf_log_data_mismatch = 0" not in text and "TEST FAIL" in text
    assert "baseline comparison: PASS" in text
    for name in ("baseline_accuracy.txt", "compliance_accuracy.txt"):
        assert (out / "ssdbench_checks" / name).read_text().startswith("mAP="), name
        assert not (out / "TEST01" / "accuracy" / name).exists(), name  # the official path did not need them
    for name in ("accuracy.txt", "mlperf_log_accuracy.json"):
        assert (out / "TEST01" / "accuracy" / name).read_text().strip(), name
    marker = json.loads((out / "compliance.json").read_text())
    assert marker["tests"] == {"TEST01": True} and marker["ssdbench_checks"] == {"TEST01 whole-response (ssdbench)": True}


def test_official_verify_accuracy_compares_the_first_byte_as_the_script(tmp_path):
    """verify_accuracy.py (--dtype byte): per performance response, the first byte of its data
    against the accuracy-mode response of the sample; its counters, then TEST PASS / TEST FAIL.
    Computed here independently with numpy as the script reads the logs."""
    import numpy as np

    from ssdbench.loadgen.rules import official_verify_accuracy

    def entry(i, floats):
        return {"seq_id": i, "qsl_idx": i, "data": np.asarray(floats, np.float32).tobytes().hex().upper()}

    acc = [entry(i, [i, 0.1, 0.2, 0.3, 0.4, 0.9, 1]) for i in range(6)] + [entry(2, [2, 0.5, 0, 0, 0, 0, 1])]
    same_first = [entry(i, [i, 0.11, 0.2, 0.3, 0.4, 0.8, 1]) for i in (1, 3, 5)]  # other scores: still equal
    other_first = [entry(4, [4.1, 0.1, 0.2, 0.3, 0.4, 0.9, 1]), entry(9, [9])]  # a differing first byte; unknown 9
    for name, perf in (("pass", same_first), ("fail", same_first + other_first)):
        (tmp_path / "acc.json").write_text(json.dumps(acc))
        (tmp_path / f"{name}.json").write_text(json.dumps(perf))
        passed, text = official_verify_accuracy(tmp_path / "acc.json", tmp_path / f"{name}.json")
        ref = {}
        for e in acc:
            ref.setdefault(e["qsl_idx"], e["data"])
        mismatch = sum(np.frombuffer(bytes.fromhex(e["data"]), np.byte)[0]
                       != np.frombuffer(bytes.fromhex(ref[e["qsl_idx"]]), np.byte)[0]
                       for e in perf if e["qsl_idx"] in ref)  # fmt: skip
        missing = sum(e["qsl_idx"] not in ref for e in perf)
        assert passed == (mismatch == 0) == (name == "pass")
        assert f"num_acc_log_entries = {len(acc)}\nnum_acc_log_duplicate_keys = 1\nnum_acc_log_data_mismatch = 1\n" in text
        assert f"num_perf_log_data_mismatch = {mismatch}\nnum_missing_qsl_idxs = {missing}\n" in text
        assert text.endswith(("TEST PASS" if passed else "TEST FAIL") + "\n\n")


def _log(path, **values) -> DetailLog:
    return DetailLog(path, [{"key": k, "value": v, "metadata": {}} for k, v in values.items()])


def test_verification_rules_by_hand(tmp_path):
    """Tolerances and directions of verify_performance.py / verify_test4_performance.py, with the
    round's relaxations, and the baseline delta."""
    v20, v07 = get_round("v2.0"), get_round("v0.7")
    off = {"result_validity": "VALID", "effective_scenario": "Offline"}
    ref = _log(tmp_path, **off, result_samples_per_second=100.0)
    assert compliance.verify_performance(ref, _log(tmp_path, **off, result_samples_per_second=104.9), v20, "TEST05").passed
    assert not compliance.verify_performance(ref, _log(tmp_path, **off, result_samples_per_second=105.1), v20,
                                         "TEST05").passed  # fmt: skip
    assert compliance.verify_performance(ref, _log(tmp_path, **off, result_samples_per_second=91), v20, "TEST01").passed
    invalid = _log(tmp_path, **{**off, "result_validity": "INVALID"}, result_samples_per_second=100.0)
    assert "invalid" in compliance.verify_performance(ref, invalid, v20, "TEST01").text
    ss = {"result_validity": "VALID", "effective_scenario": "SingleStream"}
    fast = _log(tmp_path, **ss, **{"result_90.00_percentile_latency_ns": 150_000})
    slower = _log(tmp_path, **ss, **{"result_90.00_percentile_latency_ns": 175_000})
    assert compliance.verify_performance(fast, slower, v20, "TEST01").passed  # <= 0.2 ms: 20 % from v1.0
    assert not compliance.verify_performance(fast, slower, v07, "TEST01").passed  # v0.7's scripts never relax
    a = _log(tmp_path, **off, result_samples_per_second=100.0, effective_performance_issue_unique=True)
    b_slow = _log(tmp_path, **off, result_samples_per_second=50.0, effective_performance_issue_same=True)
    b_fast = _log(tmp_path, **off, result_samples_per_second=150.0, effective_performance_issue_same=True)
    assert compliance.verify_test04(a, b_slow, v20).passed and not compliance.verify_test04(a, b_fast, v20).passed
    assert not compliance.verify_test04(a, _log(tmp_path, **off, result_samples_per_second=100.0), v20).passed
    assert compliance.compare_accuracy(20.0, 19.81, v20).passed and not compliance.compare_accuracy(20.0, 19.7, v20).passed


def test_test_names_and_bad_input(env, tmp_path, capsys, monkeypatch):
    _, _, _, perf, acc = env
    assert expand_tests(["test04", "TEST01"]) == ["TEST01", "TEST04-A", "TEST04-B"]
    assert expand_tests(["all"]) == ["TEST01", "TEST04-A", "TEST04-B", "TEST05"]
    with pytest.raises(ValueError, match="unknown compliance test 'TEST02'"):
        expand_tests(["TEST02"])
    cases = [(["TEST01", "--run", perf], "TEST01 needs --accuracy-run"),
             (["TEST05", "--run", acc], "is not a performance run (it is a accuracy run)"),
             (["TEST05", "--run", tmp_path], "not an ssdbench loadgen run folder")]  # fmt: skip
    for argv, message in cases:
        assert cli.main(["compliance", *map(str, argv), "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err


def test_the_command_builds_the_network_from_the_run(env, tmp_path, capsys):
    """`ssdbench compliance` without a stand-in: the backend comes from the run's settings.json (the
    network itself, unpaced: the verdict depends on the machine's load, the layout does not)."""
    _, _, _, perf, _ = env
    out = tmp_path / "Offline"
    assert cli.main(["compliance", "TEST04", "--run", str(perf), "--out", str(out)]) in (0, 1)
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines if ln.startswith("TEST04")] == ["TEST04-A", "TEST04-B"]
    assert "TEST PASS" in (text := (out / "TEST04-A" / "verify_performance.txt").read_text()) or "TEST FAIL" in text
    for test in ("TEST04-A", "TEST04-B"):
        saved = json.loads((out / "runs" / test / "settings.json").read_text())
        assert saved["audit_test"] == test and (out / "runs" / test / "audit.config").is_file()
