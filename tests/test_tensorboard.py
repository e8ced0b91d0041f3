"""`--tensorboard` (`ssdbench.train.tensorboard`) and the per-class results of a training run:
events read back with tensorboard's own reader, metrics.jsonl, summary.json, plots/."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from ssdbench.errors import CliError
from ssdbench.train.config import resolve_config
from ssdbench.train.trainer import run_training

pytest.importorskip("tensorboard")  # the optional extra; part of ssdbench[test]

SHAPES = ["disc", "square", "triangle", "ring", "cross", "star", "bar", "diamond", "ell"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ssdbench.data.synth import make_synthetic_coco

    root = tmp_path_factory.mktemp("tb")
    data = make_synthetic_coco(root / "coco", train_images=16, val_images=6, workers=1, progress=False)
    cfg = resolve_config("demo", overrides={
        "data": str(data), "model": "ssd128_mini", "batch_size": 4, "epochs": 2, "eval_every": 1,
        "warmup_steps": 2, "decay_epochs": (2,), "workers": 0, "log_every": 2, "max_samples": 1,
        "out": str(root / "run"), "dataset_name": "synthetic", "tensorboard": True, "device": "cpu"})
    summary = run_training(cfg, progress=False)  # scores in the background process (the default)
    return root / "run", summary


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_events_hold_the_tags_and_steps(run):
    folder, summary = run
    events = _events(folder / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "eval/mAP", "eval/AP50", "eval/AP75"} <= scalars
    assert {t for t in scalars if t.startswith("eval_ap/")} <= {f"eval_ap/{s}" for s in SHAPES}
    assert any(t.startswith("eval_ap/") for t in scalars)
    train = [r for r in _metrics(folder) if r["kind"] == "train"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in train]
    np.testing.assert_allclose([e.value for e in loss], [r["loss"] for r in train], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in events.Scalars("train/lr")], [r["lr"] for r in train], rtol=1e-6)
    evals = [r for r in _metrics(folder) if r["kind"] == "eval"]
    steps_per_epoch = summary["steps"] // summary["epochs"]  # images without objects are dropped
    maps = events.Scalars("eval/mAP")  # at the step the evaluated network was trained to
    assert [e.step for e in maps] == [r["epoch"] * steps_per_epoch for r in evals]
    assert [r["epoch"] for r in evals] == [1, 2]
    np.testing.assert_allclose([e.value for e in maps], [r["map"] for r in evals], rtol=1e-6, atol=1e-9)
    images = events.Images("eval/predictions")
    assert [e.step for e in images] == [e.step for e in maps] and images[0].width > 0


def test_per_class_in_metrics_summary_and_plots(run):
    folder, summary = run
    evals = [r for r in _metrics(folder) if r["kind"] == "eval"]
    for record in evals:
        with_gt = [r["ap"] for r in record["per_class"] if r["ap"] is not None]
        assert abs(np.mean(with_gt) - record["map"]) < 1e-9
    assert summary["per_class"] == evals[-1]["per_class"]
    assert json.loads((folder / "summary.json").read_text())["per_class"] == summary["per_class"]
    for name in ("per_class_ap.png", "pr_curves.png", "pr_curves_per_class.png", "confusion_matrix.png"):
        assert (folder / "plots" / name).is_file(), name


def test_missing_tensorboard_is_one_line(monkeypatch, tmp_path, capsys):
    from ssdbench.cli import main
    from ssdbench.train.tensorboard import require_tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    with pytest.raises(CliError, match="pip install tensorboard"):
        require_tensorboard()
    assert main(["train", "--preset", "demo", "--tensorboard", "--out", str(tmp_path / "r"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard needs the tensorboard package" in err and "Traceback" not in err
