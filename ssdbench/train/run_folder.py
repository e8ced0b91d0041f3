"""The run folder: everything one training run leaves behind.

``<run>/config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object per step window
``{"kind": "train", step, epoch, loss, lr, img_s, time}`` and per evaluation ``{"kind": "eval",
epoch, map, stats}``), ``plots/{loss,lr,map}.png``, ``checkpoints/``, ``mlperf_log.txt`` and
``summary.json`` (the MLPerf-style result, read by ``ssdbench score``; keys in
`train.trainer.Trainer.summary`). Only rank 0 writes. JSON files are written atomically
(`ssdbench.io.atomic_write_json`); metrics.jsonl is appended to, one line per record.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime
from pathlib import Path

from ssdbench.io import WriteError, atomic_write_json, atomic_write_text, jsonable


def default_run_dir(preset: str, root: str | Path = "runs") -> Path:
    """``runs/<preset>-YYYYmmdd-HHMMSS`` (local time)."""
    return Path(root) / f"{preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class RunFolder:
    """Writes the run folder's files; every method is a no-op on ranks other than 0."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def mlperf_log_path(self, segment: int) -> Path:
        """First run segment: mlperf_log.txt; a resumed one gets its own file (one run_start each)."""
        return self.path / ("mlperf_log.txt" if segment <= 1 else f"mlperf_log.resume{segment - 1}.txt")

    def first_write_interrupted(self) -> bool:
        """True when checkpoints/ holds no checkpoint but a temporary file of one (`io.atomic_write`):
        the run was killed in its first checkpoint write, so nothing of it can be resumed."""
        found = list(self.checkpoints.glob("*.pt")) if self.checkpoints.is_dir() else []
        return not [p for p in found if not p.name.startswith(".")] and any(".tmp-" in p.name for p in found)

    def clear(self) -> None:
        """Remove the records of a run that left nothing resumable (`first_write_interrupted`)."""
        if not self.enabled:
            return
        for path in self.path.iterdir():
            if path.name != ".lock":
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def write_json(self, name: str, data: dict) -> Path:
        """``<run>/name`` as indented JSON, written atomically; returns its path."""
        path = self.path / name
        if self.enabled:
            atomic_write_json(path, data)
        return path

    def log_metrics(self, record: dict) -> None:
        """Append ``record`` plus ``time`` (Unix seconds) as one line of metrics.jsonl."""
        if self.enabled:
            record = {**record, "time": round(time.time(), 3)}
            try:
                with self.metrics_path.open("a") as f:
                    f.write(json.dumps(record, default=jsonable) + "\n")
            except OSError as exc:  # full disk, read-only folder: one line naming the file
                raise WriteError(self.metrics_path, exc) from exc

    def read_metrics(self) -> list[dict]:
        """Every record of metrics.jsonl, in order ([] when there is none)."""
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics_after(self, step: int, epoch: int | None = None, pending=()) -> None:
        """On resume, drop windows logged after the checkpoint's step and evaluations after its
        ``epoch`` (completed epochs), and those of the ``pending`` epochs (scores the checkpoint
        recorded as still being computed): all are run again, and must not appear twice."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        pending = set(pending)
        kept = [r for r in self.read_metrics()
                if not (r.get("kind") == "train" and r["step"] > step)
                and not (r.get("kind") == "eval" and ((epoch is not None and r["epoch"] > epoch)
                                                     or r["epoch"] in pending))]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def plot(self) -> list[Path]:
        """loss.png and lr.png over steps, map.png over epochs; returns the files written."""
        if not self.enabled:
            return []
        records = self.read_metrics()
        train = [r for r in records if r.get("kind") == "train"]
        evals = [r for r in records if r.get("kind") == "eval"]
        out = self.path / "plots"
        out.mkdir(exist_ok=True)
        written = []
        for key, label in (("loss", "training loss"), ("lr", "learning rate")):
            if train:
                written.append(_plot(out / f"{key}.png", [r["step"] for r in train],
                                     [r[key] for r in train], "step", label))
        if evals:
            written.append(_plot(out / "map.png", [r["epoch"] for r in evals],
                                 [r["map"] for r in evals], "epoch", "COCO mAP@[.5:.95]", marker="o"))
        return written


def _plot(path: Path, xs, ys, xlabel: str, ylabel: str, marker: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(xs, ys, marker=marker)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def remove_failed_start(folder: Path, before: set[Path]) -> None:
    """Remove what a failed start added to ``folder`` (an MLPerf log, config.json), and the folder
    itself when nothing else is left in it: a failed start leaves nothing behind."""
    for path in set(folder.iterdir()) - before:
        if path.name != ".lock":
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    rest = [p for p in folder.iterdir() if p.name != ".lock"]
    if not rest:
        (folder / ".lock").unlink(missing_ok=True)
        folder.rmdir()
