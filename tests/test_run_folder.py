"""The run folder: metrics.jsonl appended to and cut back on resume, JSON written atomically,
plots drawn from the metrics, and nothing at all written on ranks other than 0."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssdbench.train.run_folder import RunFolder, default_run_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(step: int) -> dict:
    return {"kind": "train", "step": step, "epoch": 1 + step // 4, "loss": 10.0 / step, "lr": 0.01 * step,
            "img_s": 50.0}


def test_metrics_append_and_truncate_on_resume(tmp_path):
    folder = RunFolder(tmp_path / "run")
    for step in (2, 4):
        folder.log_metrics(_train(step))
    folder.log_metrics({"kind": "eval", "epoch": 1, "map": 0.2, "stats": np.array([0.2, 0.4])})
    folder.log_metrics(_train(6))
    lines = folder.metrics_path.read_text().splitlines()
    assert len(lines) == 4 and all(isinstance(json.loads(x)["time"], float) for x in lines)
    assert json.loads(lines[2])["stats"] == [0.2, 0.4]  # arrays as lists
    folder.truncate_metrics_after(4)  # a checkpoint at step 4: step 6 is trained again
    kept = folder.read_metrics()
    assert [(r["kind"], r.get("step")) for r in kept] == [("train", 2), ("train", 4), ("eval", None)]
    folder.log_metrics(_train(6))
    assert [r.get("step") for r in folder.read_metrics()] == [2, 4, None, 6]
    assert not list(folder.path.glob(".*tmp*"))


def test_write_json_is_atomic(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path)
    path = folder.write_json("summary.json", {"steps": 3, "history": (1, 2), "t": torch.tensor([0.5])})
    assert path.read_text() == json.dumps({"steps": 3, "history": [1, 2], "t": [0.5]}, indent=2) + "\n"
    real_write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        real_write_text(self, text[:5], *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        folder.write_json("summary.json", {"steps": 4})
    monkeypatch.undo()
    assert json.loads(path.read_text())["steps"] == 3  # the previous file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file


def test_plots_are_written_from_the_metrics(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.plot() == []  # no metrics yet
    for step in range(1, 9):
        folder.log_metrics(_train(step))
    assert sorted(p.name for p in folder.plot()) == ["loss.png", "lr.png"]  # no evaluation yet: no map.png
    folder.log_metrics({"kind": "eval", "epoch": 2, "map": 0.1, "stats": [0.1] * 12})
    written = folder.plot()
    assert sorted(p.name for p in written) == ["loss.png", "lr.png", "map.png"]
    assert all(p.parent == tmp_path / "plots" and p.read_bytes()[:8] == PNG_MAGIC for p in written)


def test_other_ranks_write_nothing(tmp_path):
    folder = RunFolder(tmp_path / "rank1", enabled=False)
    folder.log_metrics(_train(1))
    folder.write_json("summary.json", {"a": 1})
    folder.truncate_metrics_after(0)
    assert folder.plot() == [] and not (tmp_path / "rank1").exists()


def test_names():
    folder = RunFolder("/nonexistent/run", enabled=False)
    assert folder.mlperf_log_path(1) == Path("/nonexistent/run/mlperf_log.txt")
    assert folder.mlperf_log_path(3).name == "mlperf_log.resume2.txt"  # a resumed segment's own log
    assert folder.checkpoints == Path("/nonexistent/run/checkpoints")
    name = default_run_dir("demo", "runs")
    assert name.parent == Path("runs") and name.name.startswith("demo-20") and len(name.name) == len("demo-") + 15
