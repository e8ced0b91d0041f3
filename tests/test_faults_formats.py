"""Malformed files and whole batches of bad samples (docs/robustness.md, "File formats"): each one
gives one line naming the file and, where it applies, the entry; a batch without a readable image
is skipped, never a crash. Every command runs under a time limit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from data_fixtures import synthetic_coco, write_coco
from fault_helpers import cli, cli_process, error_line, listing

from ssdbench.data.coco import CocoDetection
from ssdbench.data.validate import check_dataset
from ssdbench.loadgen.accuracy import decode_log


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_coco(tmp_path_factory.mktemp("formats") / "data", train=4, val=4)


@pytest.fixture(scope="module")
def mini_onnx(tmp_path_factory):
    from ssdbench.infer.export import export_model
    from ssdbench.model.ssd import build_model

    torch.manual_seed(0)
    model = build_model("ssd128_mini", num_classes=10).eval()
    return export_model(model, "ssd128_mini", tmp_path_factory.mktemp("onnx") / "mini.onnx")


# ---------------------------------------------------------------- annotation files
def test_an_annotation_file_that_is_a_list_names_the_file(tmp_path, capsys, data, mini_onnx):
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    for split in ("train", "val"):
        (bad / "annotations" / f"instances_{split}2017.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"instances_val2017.json is not a COCO detection file: a JSON list"):
        CocoDetection(bad, "val")
    rc, _out, err = cli(capsys, "eval", "--data", bad, "--backend", "onnxruntime", "--model-file", mini_onnx)
    assert rc == 2 and "instances_val2017.json is not a COCO detection file: a JSON list" in error_line(err, "eval")
    rc, _out, err = cli(capsys, "train", "--data", bad, "--out", tmp_path / "run", "--epochs", "1")
    assert rc == 2 and "is not a COCO detection file: a JSON list" in error_line(err, "train")
    assert not (tmp_path / "run").exists()  # a failed start leaves nothing


def test_one_file_under_two_ids_and_boxes_outside_are_named(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 32},
              {"id": 2, "file_name": "a.jpg", "width": 32, "height": 32}]
    anns = [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [40, 40, 5, 5], "area": 25, "iscrowd": 0},
            {"id": 8, "image_id": 2, "category_id": 1, "bbox": [-9, 0, 5, 5], "area": 25, "iscrowd": 0}]
    root = write_coco(tmp_path, "train", images, anns, [{"id": 1, "name": "one"}], write_images=False)
    with pytest.warns(UserWarning) as seen:
        CocoDetection(root, "train")
    text = " ".join(str(w.message) for w in seen)
    assert "1 image file(s) listed under several image ids: a.jpg (ids 1, 2)" in text
    assert "skipped 2 box(es) with no pixel inside its image (wholly outside): annotation ids 7, 8" in text
    report = check_dataset(root, splits=("train",), progress=False, decode=False)
    finding = report.findings[("train", "duplicate_file_name")]
    assert finding.is_error and finding.offenders == ["a.jpg (images 1, 2)"]


# ---------------------------------------------------------------- whole batches of bad samples
def test_a_batch_of_only_skipped_images_is_skipped_not_a_crash(tmp_path, data):
    """Every image over the pixel limit: each is skipped, each batch too, and the epoch and the
    eval go on (it used to end in 'cannot reshape tensor of 0 elements')."""
    done = cli_process("train", "--preset", "demo", "--data", data, "--epochs", "1", "--batch-size", "2",
                       "--workers", "0", "--out", tmp_path / "run", seconds=300,
                       env={"SSDBENCH_MAX_IMAGE_PIXELS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped batch 1 of epoch 1: every image in it was a bad sample (no training step)" in done.stderr
    assert "Traceback" not in done.stderr and (tmp_path / "run" / "summary.json").is_file()


# ---------------------------------------------------------------- model files
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_model_file_of_another_input_size_is_refused_naming_both(capsys, data, mini_onnx, backend):
    rc, _out, err = cli(capsys, "eval", "--data", data, "--model", "ssd1200_r34", "--backend", backend,
                        "--model-file", mini_onnx)  # fmt: skip
    line = error_line(err, "eval")
    assert rc == 2 and f"{mini_onnx} takes 128x128 images, but model ssd1200_r34 takes 1200x1200" in line
    assert "pass --model ssd128_mini" in line


def test_loadgen_refuses_a_model_file_of_another_input_size(capsys, tmp_path, data, mini_onnx):
    rc, _out, err = cli(capsys, "loadgen", "--scenario", "Offline", "--data", data, "--model", "ssd1200_r34",
                        "--backend", "onnxruntime", "--model-file", mini_onnx, "--out", tmp_path / "out")  # fmt: skip
    assert rc == 2 and "takes 128x128 images, but model ssd1200_r34" in error_line(err, "loadgen")
    assert not (tmp_path / "out").exists()


def test_truncated_model_files_and_quantize_folders_name_the_file(capsys, tmp_path, data, mini_onnx):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(mini_onnx.read_bytes()[:20000])
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(cut.read_bytes())
    sidecar = json.dumps({"file": "model.onnx", "model": "ssd128_mini", "backend": "onnxruntime"})
    (folder / "quantize.json").write_text(sidecar)
    for model_file in (cut, folder):
        rc, _out, err = cli(capsys, "eval", "--data", data, "--backend", "onnxruntime", "--model-file", model_file)
        assert rc == 2 and "not a readable ONNX file, truncated or damaged (DecodeError" in error_line(err, "eval")
    (folder / "quantize.json").write_text(sidecar[:20])
    rc, _out, err = cli(capsys, "eval", "--data", data, "--backend", "onnxruntime", "--model-file", folder)
    assert rc == 2 and f"quantize folder file {folder / 'quantize.json'} is not valid JSON" in error_line(err, "eval")


# ---------------------------------------------------------------- accuracy logs
def _log(path, entries) -> str:
    path.write_text(json.dumps(entries))
    return str(path)


def _entries(n: int) -> list[dict]:
    """One detection per sample: [qsl_idx, ymin, xmin, ymax, xmax, score, label] as LoadGen logs it."""
    rows = [np.array([[i, 0.1, 0.1, 0.5, 0.5, 0.9, 1]], np.float32) for i in range(n)]
    return [{"seq_id": i, "qsl_idx": i, "data": r.tobytes().hex().upper()} for i, r in enumerate(rows)]


def test_accuracy_logs_name_the_file_and_the_entry(capsys, tmp_path, data):
    cases = {
        "object": ({"qsl_idx": 0}, "not a LoadGen accuracy log (a JSON dict, not a list"),
        "hex": ([*_entries(2), {"seq_id": 2, "qsl_idx": 2, "data": "ZZ00"}],
                "entry 2 (qsl_idx 2) has data that is not hexadecimal bytes"),
        "index": ([{"seq_id": 0, "qsl_idx": "one", "data": ""}], "entry 0 has qsl_idx 'one', not a sample index"),
        "entry": ([[0, "00"]], "entry 0 is not an object with qsl_idx and data"),
    }  # fmt: skip
    for name, (content, message) in cases.items():
        log = _log(tmp_path / f"{name}.json", content)
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            decode_log(log)
        rc, _out, err = cli(capsys, "accuracy", "--log", log, "--data", data)
        assert rc == 2 and log in error_line(err, "accuracy") and message in err


def test_samples_missing_from_an_accuracy_log_are_warned_about(capsys, tmp_path, data):
    entries = [e for e in _entries(4) if e["qsl_idx"] != 2]
    rc, out, err = cli(capsys, "accuracy", "--log", _log(tmp_path / "log.json", entries), "--data", data)
    assert rc == 0 and "(3 images" in out
    assert "warning: 1 of the dataset's 4 samples are not in the log (qsl_idx 2)" in err
    rc, out, err = cli(capsys, "accuracy", "--log", _log(tmp_path / "all.json", _entries(4)), "--data", data)
    assert rc == 0 and "warning" not in err


# ---------------------------------------------------------------- failed and interrupted starts
def test_a_failed_start_leaves_nothing(capsys, tmp_path, data):
    before = listing(tmp_path)
    rc, _out, err = cli(capsys, "train", "--data", tmp_path / "nosuchdir", "--out", tmp_path / "run")
    assert rc == 2 and "--data: no dataset folder at" in error_line(err, "train")
    rc, _out, err = cli(capsys, "train", "--preset", "demo", "--data", data, "--out", tmp_path / "run",
                        "--batch-size", "64", seconds=60)
    assert rc == 2 and "fewer than one global batch (64)" in error_line(err, "train")
    assert listing(tmp_path) == before


def test_a_folder_whose_first_checkpoint_write_was_killed_is_reused(capsys, tmp_path, data):
    """SIGKILL during the first checkpoint write leaves metrics and a temporary file; the same
    command used to refuse the folder ('already holds a run without a checkpoint')."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".epoch_0001.tmp-4242-7f00.pt").write_bytes(b"")
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    (run / "mlperf_log.txt").write_text(":::MLLOG {}\n")
    rc, out, err = cli(capsys, "train", "--preset", "demo", "--data", data, "--epochs", "1", "--batch-size", "2",
                       "--workers", "0", "--out", run, seconds=300)  # fmt: skip
    assert rc == 0, err
    assert "killed while writing its first checkpoint; starting it afresh" in out
    assert not list((run / "checkpoints").glob(".*tmp*")) and (run / "checkpoints" / "epoch_0001.pt").is_file()


def test_a_category_order_other_than_the_checkpoints_is_warned_about(capsys, tmp_path, data):
    """Shuffled `categories` in the eval file: every label is scored as another category (0.058%
    mAP used to come without a word)."""
    from ssdbench.model.weights import checkpoint_categories

    rc, _out, err = cli(capsys, "train", "--preset", "demo", "--data", data, "--epochs", "1", "--batch-size", "2",
                        "--workers", "0", "--out", tmp_path / "run", seconds=300)  # fmt: skip
    assert rc == 0, err
    weights = tmp_path / "run" / "checkpoints" / "epoch_0001.pt"
    trained = checkpoint_categories(weights)
    assert trained == CocoDetection(data, "train").cat_ids
    rc, _out, err = cli(capsys, "eval", "--data", data, "--weights", weights, "--out", tmp_path / "a.json")
    assert rc == 0 and "warning" not in err
    shuffled = tmp_path / "shuffled"
    shutil.copytree(data, shuffled)
    ann = shuffled / "annotations" / "instances_val2017.json"
    content = json.loads(ann.read_text())
    content["categories"] = content["categories"][::-1]
    ann.write_text(json.dumps(content))
    rc, _out, err = cli(capsys, "eval", "--data", shuffled, "--weights", weights, "--out", tmp_path / "b.json")
    assert rc == 0 and f"warning: {weights} was trained with category ids {trained[:8]}" in err
    assert "the same categories in another order" in err
