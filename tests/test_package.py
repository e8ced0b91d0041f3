"""Runs to an MLPerf submission tree: five short demo runs (`train --runs 5`) packaged
(`ssdbench package`) pass mlperf_logging's package and seed checkers, and `ssdbench score` on the
tree equals the result summarizer's figure; five closed-division logs that converge faster than
the reference get the summarizer's RCP normalisation; `ssdbench check-log` prints one line per
failed rule; a system description with fields this machine cannot tell names them.
"""

import contextlib
import io
import json
import shutil

import pytest
from mlperf_logging.result_summarizer.result_summarizer import summarize_results

from ssdbench.cli import main
from ssdbench.errors import CliError
from ssdbench.train.mllog import MLPerfLogger
from ssdbench.train.mlperf_checks import compliance, package_check, rcp_check, seed_check
from ssdbench.train.package import lay_out, machine_facts
from ssdbench.train.score import score_tree

# What a CPU machine cannot tell about itself (the rest is read: CPU, memory, OS, software).
SYSTEM = {"host_processor_interconnect": "N/A", "host_storage_type": "virtual disk", "host_networking": "N/A",
          "host_networking_topology": "N/A", "host_memory_configuration": "unknown", "cooling": "air",
          "hw_notes": "test machine", "host_processor_frequency": "2000 MHz"}


TRAIN_OUTPUT: dict[str, str] = {}  # what `train --runs 5` printed (its score line)


def _summarizer_score(tree) -> float:
    return float(summarize_results(str(tree), "training", "1.1.0")[0]["ssd"].iloc[0])


@pytest.fixture(scope="module")
def five_runs(tmp_path_factory):
    from ssdbench.data.synth import make_synthetic_coco

    root = tmp_path_factory.mktemp("five")
    data = make_synthetic_coco(root / "coco", train_images=16, val_images=4, workers=1, progress=False)
    out = root / "runs"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", "--preset", "demo", "--data", str(data), "--dataset-name", "synthetic", "--runs", "5",
                     "--epochs", "1", "--eval-every", "1", "--steps-per-epoch", "2", "--batch-size", "4",
                     "--workers", "0", "--out", str(out)]) == 0
    TRAIN_OUTPUT["text"] = printed.getvalue()
    return [out / f"run_{i}" for i in range(5)]


def test_five_demo_runs_have_distinct_seeds(five_runs):
    seeds = [json.loads((r / "summary.json").read_text())["seed"] for r in five_runs]
    assert seeds == [1, 1001, 2001, 3001, 4001]


def test_five_demo_runs_packaged_pass_the_checkers(five_runs, tmp_path, capsys):
    (tmp_path / "system.json").write_text(json.dumps(SYSTEM))
    tree = tmp_path / "submission"
    assert main(["package", "--system", "cpu_test", "--org", "ssdbench", "--system-json", str(tmp_path / "system.json"),
                 "--out", str(tree), *map(str, five_runs)]) == 0
    out = capsys.readouterr().out
    assert "PASS  package checker: no errors" in out and "PASS  seed checker" in out, out
    files = sorted((tree / "results" / "cpu_test" / "ssd").glob("result_*.txt"))
    assert [f.name for f in files] == [f"result_{i}.txt" for i in range(5)]
    desc = json.loads((tree / "systems" / "cpu_test.json").read_text())
    assert (desc["submitter"], desc["division"], desc["system_name"]) == ("ssdbench", "open", "cpu_test")
    assert desc["framework"].startswith("PyTorch ") and desc["host_processor_frequency"] == "2000 MHz"
    # mlperf_logging's own verdicts, independently of the command's printing
    assert package_check(tree)[0] and seed_check(files)[0]
    # ssdbench score on the tree == the result summarizer's figure
    assert main(["score", str(tree)]) == 0
    (entry,) = score_tree(tree)
    assert entry["factor"] == 1.0 and entry["score"] == pytest.approx(_summarizer_score(tree), rel=1e-12)
    assert f"score: {entry['score']:.4f} min" in capsys.readouterr().out


def test_five_runs_of_one_seed_fail_the_seed_checker(five_runs, tmp_path, capsys):
    (tmp_path / "system.json").write_text(json.dumps(SYSTEM))
    tree = lay_out(tmp_path / "t", "cpu_test", "ssdbench", [five_runs[0]] * 5, SYSTEM)
    ok, errors = seed_check(tree["files"])
    assert not ok and any("already logs the same seed" in e for e in errors)
    assert main(["package", "--system", "cpu_test", "--org", "ssdbench", "--system-json", str(tmp_path / "system.json"),
                 "--out", str(tmp_path / "t2"), *[str(five_runs[0])] * 5]) == 1
    assert "FAIL  seed checker" in capsys.readouterr().out


def test_missing_system_fields_are_named_in_one_error(five_runs, tmp_path):
    facts = machine_facts()
    with pytest.raises(CliError) as err:
        lay_out(tmp_path / "t", "cpu_test", "ssdbench", five_runs, {})
    named = str(err.value)
    for field in ("host_processor_interconnect", "host_storage_type", "host_networking", "cooling"):
        assert field in named
    assert "host_processor_model_name" not in named and "host_processor_model_name" in facts
    with pytest.raises(CliError, match="division"):
        lay_out(tmp_path / "t", "cpu_test", "ssdbench", five_runs, {**SYSTEM, "division": "closed"})


def test_a_resumed_run_is_refused(five_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(five_runs[0], run)
    (run / "mlperf_log.resume1.txt").write_text("")
    with pytest.raises(CliError, match="resumed"):
        lay_out(tmp_path / "t", "cpu_test", "ssdbench", [run], SYSTEM)


# ---------------------------------------------------------------- closed division, RCP normalisation
@pytest.fixture(scope="module")
def ssd300():
    from ssdbench.model.ssd import build_model

    return build_model("ssd300_r34")


def closed_log(path, model, seed: int, converge_at: int, target_reached: bool = True):
    """A closed-division log as the trainer writes it (real logger, real tensor names), for a run
    at global batch 4096 (an RCP of 1.1.0) that evaluates every 5 epochs and reaches 0.23 at
    ``converge_at``."""
    log = MLPerfLogger(path)
    log.init_start()
    log.setup({"model": "ssd300_r34", "dataset": "coco2017", "global_batch_size": 4096, "base_lr": 3.2,
               "weight_decay": 4e-5, "warmup_steps": 1145, "warmup_factor": 0, "decay_epochs": [80, 100],
               "bn_span": 64, "max_samples": 1, "seed": seed, "train_samples": 117266, "eval_samples": 4952,
               "submission_org": "ssdbench", "submission_platform": "test", "submission_status": "onprem",
               "submission_benchmark": "ssd", "submission_division": "closed"}, model)
    log.init_stop()
    log.run_start()
    for epoch in range(5, converge_at + 1, 5):
        log.block_start(epoch - 4, 5)
        log.block_stop(epoch - 4)
        log.eval_start(epoch)
        log.eval_accuracy(0.231 if epoch == converge_at and target_reached else 0.2, epoch)
        log.eval_stop(epoch)
    log.run_stop(target_reached)
    log.close()
    return path


def test_closed_runs_faster_than_the_reference_are_normalised_as_the_summarizer_does(ssd300, tmp_path):
    logs = [closed_log(tmp_path / f"log{i}.txt", ssd300, seed=10 + i, converge_at=85) for i in range(5)]
    system = {**SYSTEM, "number_of_nodes": "64"}
    tree = lay_out(tmp_path / "sub", "big", "ssdbench", logs, system)
    assert tree["division"] == "closed"
    passed, message, factor = rcp_check(tree["results"])
    assert passed and message == "RCP found"
    # RCP 4096 (rcps_ssd.json, 1.1.0): 37 runs of 85 or 90 epochs, olympic mean 87.0; ours: 85
    assert factor == pytest.approx(87.0 / 85.0, rel=1e-9)
    ours = score_tree(tmp_path / "sub")[0]  # no scaling.json yet: the factor the RCP checker computes
    assert ours["factor_source"].startswith("RCP checker") and ours["factor"] == pytest.approx(factor)
    assert package_check(tmp_path / "sub")[0]  # closed: seed + RCP inside; writes scaling.json
    scaling = json.loads((tree["results"] / "scaling.json").read_text())["scaling_factor"]
    assert scaling == pytest.approx(factor, rel=1e-12)
    again = score_tree(tmp_path / "sub")[0]
    assert again["factor_source"] == "scaling.json" and again["score"] == pytest.approx(ours["score"], rel=1e-12)
    assert again["score"] == pytest.approx(_summarizer_score(tmp_path / "sub"), rel=1e-12)
    assert again["score"] == pytest.approx(again["olympic"] * 87 / 85, rel=1e-9)


def test_check_log_prints_one_line_per_failed_rule(ssd300, tmp_path, capsys):
    good = closed_log(tmp_path / "good.txt", ssd300, seed=1, converge_at=50)
    bad = closed_log(tmp_path / "bad.txt", ssd300, seed=1, converge_at=50, target_reached=False)
    assert main(["check-log", str(good)]) == 0
    assert capsys.readouterr().out.startswith("PASS")
    assert main(["check-log", str(bad)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("FAIL") and "1 rule(s) failed" in lines[0] and len(lines) == 2
    assert "eval_accuracy" in lines[1] and "0.230" in lines[1]
    assert compliance(bad) == [lines[1].strip()]


def _package(runs, tree, tmp_path) -> None:
    (tmp_path / "system.json").write_text(json.dumps(SYSTEM))
    main(["package", "--system", "cpu_test", "--org", "ssdbench", "--system-json", str(tmp_path / "system.json"),
          "--out", str(tree), *map(str, runs)])


def test_train_runs_score_and_package_score_alike_and_as_the_summarizer(five_runs, tmp_path, capsys):
    """One scoring rule: `train --runs` and `score RUN...` (olympic_mean of read_run), `score TREE` and
    `package` (score_tree) give the summarizer's figure: the demo runs miss the quality target and
    still count (the summarizer reads no target); a run whose log lost its run_stop does not."""
    from ssdbench.train.score import olympic_mean, read_run

    copies = []
    for run in five_runs:
        shutil.copytree(run, tmp_path / "runs" / run.name)
        copies.append(tmp_path / "runs" / run.name)
    for case in ("all count", "one does not"):
        if case == "one does not":
            log = copies[2] / "mlperf_log.txt"
            log.write_text("".join(line for line in log.read_text().splitlines(True) if '"run_stop"' not in line))
        results = [read_run(r) for r in copies]
        assert [r.counted for r in results] == [True, True, case == "all count", True, True]
        assert not any(r.reached for r in results)  # one demo epoch is far below mAP 0.23
        ours = olympic_mean(results)
        tree = tmp_path / case.replace(" ", "_")
        _package(copies, tree, tmp_path)
        (entry,) = score_tree(tree)
        assert ours["score"] == pytest.approx(entry["score"], rel=1e-12) == pytest.approx(_summarizer_score(tree), rel=1e-12)
        capsys.readouterr()
        assert main(["score", *map(str, copies)]) == 0
        assert f"score: {ours['score']:.2f} min" in capsys.readouterr().out
        if case == "all count":  # `train --runs 5` printed the same score for these runs
            assert f"score: {ours['score']:.2f} min" in TRAIN_OUTPUT["text"], TRAIN_OUTPUT["text"][-600:]
