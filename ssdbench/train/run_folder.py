"""The run folder: everything one training run leaves behind, and where a run segment starts in it.

``<run>/config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object per step window
``{"kind": "train", step, epoch, loss, lr, img_s, time}`` and per evaluation ``{"kind": "eval",
epoch, map, stats}``), ``plots/{loss,lr,map}.png``, ``checkpoints/``, ``mlperf_log.txt`` and
``summary.json`` (the MLPerf-style result, read by ``ssdbench score``; keys in
`train.trainer.Trainer.summary`). Only rank 0 writes. JSON files are written atomically
(`ssdbench.io.atomic_write_json`); metrics.jsonl is appended to, one line per record.

`open_run` locks the folder (`ssdbench.io.FolderLock`: a second run into it fails at once, naming
the first), finds the checkpoint to resume and compares its config with this one
(`train.checkpoint.resume_changes`), all before anything is built, so a finished run is not built
again; the `RunStart` it returns holds the lock until `RunStart.release`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ssdbench import dist as D
from ssdbench.checks import output_folder
from ssdbench.errors import CliError
from ssdbench.io import FolderLock, WriteError, atomic_write_json, atomic_write_text, jsonable, read_json
from ssdbench.train.checkpoint import (
    check_changes,
    find_resume,
    load_checkpoint,
    resume_changes,
    resume_state,
)
from ssdbench.train.config import TrainConfig, TrainSetup
from ssdbench.train.loop import TrainState


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


# ---------------------------------------------------------------- where a run segment starts
@dataclass
class RunStart:
    """A run segment's folder, the checkpoint it resumes (None: a fresh run) and its counters."""

    folder: RunFolder
    checkpoint: Path | None
    payload: dict | None  # the loaded checkpoint (`checkpoint.training_payload`)
    state: TrainState  # the checkpoint's counters, ``segments`` including this start
    changes: dict | None = None  # accepted config changes {key: (old, new)} (`train.checkpoint`)
    lock: FolderLock | None = None  # held by rank 0 while the run writes the folder

    def finished(self, cfg: TrainConfig) -> bool:
        """A resumed run that already reached the target, or its last epoch with every score in."""
        return self.payload is not None and (self.state.reached_target or (
            self.state.epoch >= cfg.epochs and not self.state.pending_evals))

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_ERRORS = {"FileNotFoundError": FileNotFoundError, "ValueError": ValueError}


def open_run(setup: TrainSetup, accept_changes: bool = False) -> RunStart:
    """Rank 0 chooses and locks the run folder and finds the checkpoint; every rank gets the same
    and loads it. Refuses (ValueError) a checkpoint whose config differs, unless accepted. The lock
    is the returned `RunStart`'s; a start that fails here releases it."""
    cfg, launch = setup.cfg, setup.launch
    run_dir = D.broadcast_object(str(_run_dir(cfg)) if launch.is_main else None)
    lock = FolderLock(run_dir) if launch.is_main else None
    try:
        resume, payload = _agree_on_checkpoint(cfg.resume, run_dir, lock)
        changes = resume_changes(payload.get("config", {}), cfg) if payload else {}
        check_changes(changes, accept_changes, resume)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return RunStart(RunFolder(run_dir, enabled=launch.is_main), resume, payload, resume_state(payload),
                    changes or None, lock)


def _agree_on_checkpoint(resume: str, run_dir: str, lock: FolderLock | None) -> tuple[Path | None, dict | None]:
    """(checkpoint path or None, its payload): rank 0 (the one with ``lock``) takes the lock and finds
    the newest checkpoint that loads; every rank gets its path, or rank 0's error, and loads it."""
    found, shared = None, {}
    if lock is not None:
        try:
            output_folder(run_dir, "--out")
            lock.acquire()
            found = find_resume(resume, run_dir)  # (path, payload): the newest one that loads
            shared = {"path": str(found[0]) if found else None}
        except (CliError, FileNotFoundError, ValueError) as exc:
            shared = {"error": (type(exc).__name__, str(exc))}
            if D.get_world_size() == 1:
                raise
    shared = D.broadcast_object(shared)  # every rank fails alike, none waits for the others
    if "error" in shared:
        kind, message = shared["error"]
        raise _ERRORS.get(kind, CliError)(message)
    path = Path(shared["path"]) if shared["path"] else None
    return path, found[1] if found else (load_checkpoint(path) if path else None)


def _run_dir(cfg: TrainConfig) -> Path:
    """`--out`, else the run folder named by `--resume DIR`, else runs/<preset>-<timestamp>."""
    if cfg.out:
        return Path(cfg.out)
    if cfg.resume not in ("auto", "never") and Path(cfg.resume).is_dir():
        return Path(cfg.resume)
    return default_run_dir(cfg.preset)


def finished_summary(start: RunStart, is_main: bool) -> dict:
    """A finished run's summary.json (rank 0; {} elsewhere), with a line saying it is not trained again."""
    if not is_main:
        return {}
    print(f"run in {start.folder.path} is already finished; see summary.json (use another --out)", flush=True)
    return read_json(start.folder.path / "summary.json", "summary")
