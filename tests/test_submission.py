"""`ssdbench submission`: a tree from CPU runs of every required datacenter scenario (v2.0: Server,
Offline), checked by ssdbench's checker; broken trees fail with the violation named.

ssd128_mini on a 64-image synthetic val set (64 = the performance sample count the rules ask
for). Offline and the accuracy runs use ssd128_mini (answers kept per image, a fixed time per
sample: see test_compliance.py); Server, which needs ~500 queries for LoadGen's p99 early-stopping
estimate, uses a 0.5 ms stand-in network. Runs are CI-sized, so the duration and query-count
rules are waived (``--waive``) and the tree is an open-division one: ssd128_mini on synthetic
data is no closed result, and the checker says so for the closed division.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from loadgen_fixtures import loadgen_env, one_detection, pace, paced_per_sample

from ssdbench import cli
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.compliance import run_compliance
from ssdbench.loadgen.run import RunInputs, run_loadgen
from ssdbench.loadgen.submission_check import check_tree

WAIVE = "min-duration,min-queries"
SYSTEM = {"status": "available", "host_storage_capacity": "1 TB", "host_storage_type": "SSD",
          "host_memory_configuration": "unknown", "host_processor_interconnect": "N/A", "host_networking": "N/A",
          "host_networking_topology": "N/A", "cooling": "air"}  # fmt: skip
OFFLINE = {"min_duration": 300, "min_query_count": 64, "target_qps": 250, "warmup": 1, "max_batch_size": 8,
           "threads": 1}  # fmt: skip
SERVER = {"min_duration": 300, "min_query_count": 470, "target_qps": 1000, "target_latency": 100, "warmup": 0,
          "max_batch_size": 8,
          "batch_timeout_us": 1000, "threads": 2}  # fmt: skip


def stand_in(batch):
    import time

    start = time.perf_counter()
    out = one_detection(len(batch))
    pace(0.0005, start)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run and compliance folders of a datacenter submission, and the system JSON file."""
    from ssdbench.infer.backends import BackendOptions, make_backend

    for data, weights in loadgen_env(tmp_path_factory, "sub", val_images=64, seed=3, background_bias=4.0):
        root = data.parent
        options = BackendOptions(device=torch.device("cpu"))
        backend = make_backend("eager", "ssd128_mini", options, weights=weights)
        net = paced_per_sample(backend.predict, 0.005, memo={})
        folders = {}
        for scenario, mode, flags, predict in (("Offline", "accuracy", OFFLINE, net),
                                               ("Offline", "performance", OFFLINE, net),
                                               ("Server", "accuracy", SERVER, net),
                                               ("Server", "performance", SERVER, stand_in)):  # fmt: skip
            run = run_loadgen(S.resolve(scenario, mode, "cpu", flags=flags), root / f"{scenario}-{mode}",
                              RunInputs(data=data, predict=predict), verbose=False)  # fmt: skip
            assert run.result in ("VALID", "ACCURACY-ONLY"), (scenario, mode, run.summary.reasons)
            folders[scenario, mode] = run.out
        comp = root / "compliance-Offline"
        results = run_compliance(["all"], folders["Offline", "performance"], comp,
                                 accuracy_run=folders["Offline", "accuracy"], inputs=RunInputs(predict=net),
                                 verbose=False)
        assert all(results.values()), {t: (comp / t / "verify_performance.txt").read_text()
                                       for t in ("TEST01", "TEST04-A", "TEST05")}  # fmt: skip
        system_json = root / "system.json"
        system_json.write_text(json.dumps(SYSTEM))
        yield [*folders.values(), comp], system_json, folders


def _build(runs, out, division="open", extra=()) -> int:
    folders, system_json, _ = runs
    return cli.main(["submission", "--org", "TestOrg", "--system", "cpu2", "--division", division,
                     "--category", "datacenter", *map(str, folders), "--system-json", str(system_json),
                     "--out", str(out), *extra])  # fmt: skip


@pytest.fixture(scope="module")
def tree(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tree")
    assert _build(runs, out, extra=("--waive", WAIVE)) == 0
    return out


def test_tree_from_cpu_runs_passes_the_checker(runs, tree):
    base = tree / "open" / "TestOrg"
    for path in ("systems/cpu2.json", "code/ssd-resnet34/ssdbench/README.md",
                 "code/ssd-resnet34/ssdbench/ssdbench/loadgen/submission_check.py"):  # fmt: skip
        assert (base / path).is_file(), path
    for scenario in ("Server", "Offline"):
        m = base / "measurements" / "cpu2" / "ssd-resnet34" / scenario
        for name in ("mlperf.conf", "user.conf", "README.md", f"cpu2_ssdbench_{scenario}.json"):
            assert (m / name).is_file(), name
        r = base / "results" / "cpu2" / "ssd-resnet34" / scenario
        assert sorted(p.name for p in (r / "performance" / "run_1").iterdir()) == ["mlperf_log_detail.txt",
                                                                                  "mlperf_log_summary.txt"]
        assert sorted(p.name for p in (r / "accuracy").iterdir()) == ["accuracy.txt", "mlperf_log_accuracy.json",
                                                                      "mlperf_log_detail.txt", "mlperf_log_summary.txt"]
        # hash of the full log, then the truncation rule: first and last 4 KiB
        full = (runs[2][scenario, "accuracy"] / "mlperf_log_accuracy.json").read_text()
        assert len(full) > 10 * 1024
        text = (r / "accuracy" / "accuracy.txt").read_text()
        assert f"hash={hashlib.sha256(full.encode()).hexdigest()}\n" in text and text.startswith("mAP=")
        assert (r / "accuracy" / "mlperf_log_accuracy.json").read_text() == full[:4096] + "\n\n...\n\n" + full[-4096:]
    assert "*.*.qsl_rng_seed = 6655344265603136530" in (m / "mlperf.conf").read_text()
    server = base / "measurements" / "cpu2" / "ssd-resnet34" / "Server"
    assert "ssd-resnet34.Server.target_qps = 1000" in (server / "user.conf").read_text()
    assert "ssd-resnet34.Server.target_latency = 100" in (server / "mlperf.conf").read_text()
    desc = json.loads((base / "systems" / "cpu2.json").read_text())
    assert desc["host_processor_model_name"] and desc["host_memory_capacity"].endswith("GB")
    assert desc["status"] == "available" and desc["system_type"] == "datacenter" and desc["accelerators_per_node"] == 0
    assert (base / "compliance" / "cpu2" / "ssd-resnet34" / "Offline" / "TEST01" / "verify_accuracy.txt").is_file()
    from ssdbench.precision import resolve_precision

    for scenario in ("Server", "Offline"):  # the data types the run resolved, never "auto"
        impl = json.loads((base / "measurements" / "cpu2" / "ssd-resnet34" / scenario / f"cpu2_ssdbench_{scenario}.json")
                          .read_text())  # fmt: skip
        assert impl["input_data_types"] == impl["weight_data_types"] == resolve_precision("auto", "cpu")
    result = check_tree(tree, "v2.0", waive=WAIVE.split(","))
    assert result.ok, [str(v) for v in result.violations]
    assert not [w for w in result.warnings if "unknown" in w], result.warnings  # only fields the checker knows
    assert result.units["cpu2/Offline"] == "samples/s (result_samples_per_second)"
    assert {v.rule for v in result.waived} == {"min-duration", "min-queries"}
    assert set(result.results) == {"cpu2/Server", "cpu2/Offline"}
    unwaived = check_tree(tree, "v2.0")  # without waivers: exactly the CI-sized durations and counts
    assert not unwaived.ok and {v.rule for v in unwaived.violations} == {"min-duration", "min-queries"}


def _broken(tree, tmp_path, change) -> list[str]:
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy)
    change(copy / "open" / "TestOrg")
    return [str(v) for v in check_tree(copy, "v2.0", waive=WAIVE.split(",")).violations]


def test_a_removed_file_a_wrong_seed_or_an_untruncated_log_fail_with_the_violation_named(runs, tree, tmp_path):
    server = "results/cpu2/ssd-resnet34/Server"

    def remove(base):
        (base / server / "performance" / "run_1" / "mlperf_log_detail.txt").unlink()

    def wrong_seed(base):
        path = base / server / "performance" / "run_1" / "mlperf_log_detail.txt"
        path.write_text(path.read_text().replace('"effective_qsl_rng_seed", "value": 6655344265603136530',
                                                 '"effective_qsl_rng_seed", "value": 2085463073848966840'))

    def untruncated(base):
        shutil.copy2(runs[2]["Offline", "accuracy"] / "mlperf_log_accuracy.json",
                     base / "results/cpu2/ssd-resnet34/Offline/accuracy/mlperf_log_accuracy.json")

    def no_test05(base):
        shutil.rmtree(base / "compliance/cpu2/ssd-resnet34/Offline/TEST05")

    (v,) = _broken(tree, tmp_path / "a", remove)
    assert v == f"open/TestOrg/{server}/performance/run_1/mlperf_log_detail.txt: missing [files]"
    (v,) = _broken(tree, tmp_path / "b", wrong_seed)
    assert "effective_qsl_rng_seed is 2085463073848966840, round v2.0 needs 6655344265603136530 [seeds]" in v
    (v,) = _broken(tree, tmp_path / "c", untruncated)
    assert v.startswith("open/TestOrg/results/cpu2/ssd-resnet34/Offline/accuracy/mlperf_log_accuracy.json: ")
    assert v.endswith("not truncated (at most 10240) [truncation]")
    # the open division: compliance problems are warnings (the round's checker checks closed only)
    assert _broken(tree, tmp_path / "d", no_test05) == []
    warnings = check_tree(tmp_path / "d" / "copy", "v2.0", waive=WAIVE.split(",")).warnings
    assert "open/TestOrg/compliance/cpu2/ssd-resnet34/Offline/TEST05: missing [compliance] (open division: " \
           "compliance is not checked by the round's checker)" in warnings


def test_an_open_tree_without_compliance_passes_with_a_warning(tree, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy)
    shutil.rmtree(copy / "open" / "TestOrg" / "compliance")
    assert cli.main(["submission", "--check", str(copy), "--waive", WAIVE]) == 0
    out = capsys.readouterr().out
    for scenario in ("Offline", "Server"):
        assert (f"warning: open/TestOrg/compliance/cpu2/ssd-resnet34/{scenario}: no compliance tests (open division: "
                "the round's checker checks compliance for the closed division only)") in out
    assert "check (v2.0): PASS" in out
    closed = tmp_path / "closed"
    shutil.copytree(copy / "open", closed / "closed")
    violations = [str(v) for v in check_tree(closed, "v2.0", waive=WAIVE.split(",")).violations]
    assert "closed/TestOrg/compliance/cpu2/ssd-resnet34/Offline/TEST01: missing [compliance]" in violations


def test_closed_division_says_this_is_no_closed_result(runs, tmp_path, capsys):
    assert _build(runs, tmp_path, "closed", ("--waive", WAIVE)) == 1
    err = capsys.readouterr().err
    assert "the closed division needs ssd1200_r34 (SSD-ResNet34 1200x1200); this is ssd128_mini [closed-model]" in err
    assert "the closed division needs the 5000 COCO val 2017 images; the accuracy run had 64 [closed-model]" in err
    assert "% < 19.8% (99% of 20.0) [accuracy]" in err
    assert "compliance/cpu2/ssd-resnet34/Server/TEST01: missing [compliance]" in err


def test_missing_system_fields_are_named_in_one_error(runs, tmp_path, capsys):
    folders = runs[0]
    rc = cli.main(["submission", "--org", "O", "--system", "s", "--division", "open", "--category", "datacenter",
                   *map(str, folders), "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "lacks required field(s) status, host_storage_type" in err[0]
    assert "host_storage_capacity" not in err[0]  # read from the working folder's disk (ssdbench.sysinfo)
    assert "--system-json" in err[0] and not (tmp_path / "open").exists()
    rc = cli.main(["submission", "--org", "O", "--system", "s", "--division", "open", "--category", "datacenter",
                   str(folders[0]), str(folders[0]), "--out", str(tmp_path)])  # fmt: skip
    assert rc == 2 and "two Offline accuracy folders" in capsys.readouterr().err


def test_hash_and_truncation_rule(tmp_path):
    """sha256 of the full log in accuracy.txt; a log over 10 KiB keeps its first and last 4 KiB with
    "\\n\\n...\\n\\n" between (truncate_accuracy_log.py), a smaller one stays whole."""
    from ssdbench.loadgen.submission import hash_and_truncate

    for size in (9000, 30000):
        folder = tmp_path / str(size)
        folder.mkdir()
        text = "[\n" + "".join(f'{{"seq_id": {i}, "qsl_idx": {i}, "data": "00"}},\n' for i in range(size // 40))
        (folder / "mlperf_log_accuracy.json").write_text(text)
        (folder / "accuracy.txt").write_text("mAP=1.000%\n")
        digest = hash_and_truncate(folder)
        assert (folder / "accuracy.txt").read_text() == f"mAP=1.000%\nhash={hashlib.sha256(text.encode()).hexdigest()}\n"
        kept = (folder / "mlperf_log_accuracy.json").read_text()
        assert digest in (folder / "accuracy.txt").read_text()
        assert kept == (text if len(text) <= 10240 else text[:4096] + "\n\n...\n\n" + text[-4096:])
