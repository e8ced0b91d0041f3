"""Training runs under faults (docs/robustness.md, "Resume", "Disk", "Concurrency", "Exit codes").

Every case runs `ssdbench train` as a subprocess on 16 synthetic images (ssd128_mini, batch 4, 3-4
steps per epoch, a few seconds) and checks the exit status, the one line that names the culprit and what
is left in the run folder. A full disk is simulated two ways: RLIMIT_FSIZE (the kernel fails the
write itself with EFBIG, exactly where a full disk fails with ENOSPC; no root needed) and, for
"the second checkpoint fails", an OSError(ENOSPC) raised by the checkpoint writer after it wrote
part of the file. The SIGTERM exit status is in test_resume.py.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssdbench.io import FolderLock, FolderLockedError
from ssdbench.train.checkpoint import last_checkpoint, load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LR = 0.02


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from data_fixtures import synthetic_coco

    return synthetic_coco(tmp_path_factory.mktemp("data") / "coco", train=16, val=2)


def _argv(data: Path, out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return ["train", "--data", str(data), "--model", "ssd128_mini", "--batch-size", "4", "--epochs", str(epochs),
            "--lr", str(LR), "--warmup-steps", "2", "--eval-every", "1", "--workers", "0", "--log-every", "1",
            "--deterministic", "--restore-lr-after-warmup", "--out", str(out), *extra]


def _train(argv: list[str], preexec=None, prelude: str = "") -> subprocess.CompletedProcess:
    """``ssdbench`` with ``argv`` in a subprocess; ``prelude``: Python run first (a fault to plant)."""
    code = f"{prelude}\nimport sys\nfrom ssdbench import cli\nsys.exit(cli.main({argv!r}))\n"
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                          env=ENV, preexec_fn=preexec)


def _error(proc) -> str:
    """The command's one error line; fails on a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ssdbench train: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _temporary_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished 2-epoch run (an eval after each epoch), copied by the tests that change it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = _train(_argv(data, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run", symlinks=True))


def _steps_per_epoch(run: Path) -> int:
    return load_checkpoint(run / "checkpoints" / "epoch_0001.pt")["state"]["step"]


# ---------------------------------------------------------------- resume with other settings
def test_resume_with_changed_settings_is_refused_naming_them(finished, data, tmp_path):
    out = _copy(finished, tmp_path)
    before = (out / "config.json").read_text(), (out / "metrics.jsonl").read_text()
    proc = _train(_argv(data, out, "--lr", "1e6", epochs=3))
    assert proc.returncode == 2
    line = _error(proc)
    assert "epoch_0002.pt was trained with other settings: lr 0.02 -> 1000000.0, epochs 2 -> 3" in line
    assert "--accept-changes" in line
    assert ((out / "config.json").read_text(), (out / "metrics.jsonl").read_text()) == before  # nothing written
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["epoch_0001.pt", "epoch_0002.pt", "last.pt"]


def test_fixed_settings_cannot_be_accepted(finished, data, tmp_path):
    out = _copy(finished, tmp_path)
    proc = _train(_argv(data, out, "--batch-size", "8", "--accept-changes", epochs=3))
    assert proc.returncode == 2 and "epoch_0002.pt cannot be resumed with a changed batch_size 4 -> 8" in _error(proc)


def test_accepted_changes_are_applied_and_recorded(finished, data, tmp_path):
    out, per_epoch = _copy(finished, tmp_path), _steps_per_epoch(finished)
    at = 2 * per_epoch  # the step the run resumes at
    proc = _train(_argv(data, out, "--lr", "0.005", "--accept-changes", epochs=3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"applying changed settings from step {at} on: lr 0.02 -> 0.005, epochs 2 -> 3" in proc.stdout
    assert json.loads((out / "config.json").read_text())["lr"] == 0.005  # what ran from step 4 on
    ckpt = load_checkpoint(last_checkpoint(out / "checkpoints"))
    assert ckpt["scheduler"]["base_lrs"] == [0.005] and ckpt["optimizer"]["param_groups"][0]["lr"] == 0.005
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == 0.005
    records = _metrics(out)
    resume = next(r for r in records if r["kind"] == "resume")
    assert resume["step"] == at and resume["changes"] == {"lr": [LR, 0.005], "epochs": [2, 3]}
    lrs = {r["step"]: r["lr"] for r in records if r["kind"] == "train"}  # the lr after each step
    assert lrs[at] == pytest.approx(LR)  # warmup (2 steps) is over: the base lr
    assert [lrs[s] for s in range(at + 1, 3 * per_epoch + 1)] == pytest.approx([0.005] * per_epoch)


# ---------------------------------------------------------------- damaged or missing checkpoints
def test_damaged_newest_checkpoint_is_named_and_the_previous_one_used(finished, data, tmp_path):
    out, per_epoch = _copy(finished, tmp_path), _steps_per_epoch(finished)
    newest = out / "checkpoints" / "epoch_0002.pt"
    newest.write_bytes(newest.read_bytes()[:100_000])  # truncated, as a copy cut short leaves it
    proc = _train(_argv(data, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warning: checkpoint {newest}: damaged PyTorch zip archive, truncated or corrupted" in proc.stderr
    assert "resuming from epoch_0001.pt, the newest checkpoint that loads" in proc.stderr
    evals = [r["epoch"] for r in _metrics(out) if r["kind"] == "eval"]
    steps = [r["step"] for r in _metrics(out) if r["kind"] == "train"]
    assert evals == [1, 2] and steps == list(range(1, 2 * per_epoch + 1))  # epoch 2 again, logged once
    load_checkpoint(newest)  # rewritten whole


def test_resume_finds_checkpoints_without_the_last_pointer(finished, data, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "checkpoints" / "last").unlink()
    (out / "checkpoints" / "last.pt").unlink()
    proc = _train(_argv(data, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is already finished" in proc.stdout and "without a checkpoint" not in proc.stderr


def test_no_loadable_checkpoint_is_one_line(finished, data, tmp_path):
    out = _copy(finished, tmp_path)
    for path in (out / "checkpoints").glob("epoch_*.pt"):
        path.write_bytes(os.urandom(1000))
    proc = _train(_argv(data, out))
    assert proc.returncode == 2
    assert f"no checkpoint of {out / 'checkpoints'} loads (2 damaged: checkpoint" in _error(proc)


# ---------------------------------------------------------------- full disk
def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_at_the_first_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    proc = _train(_argv(data, out), preexec=_file_size_limit(1 << 20))  # a checkpoint is ~5 MB
    assert proc.returncode == 2
    assert _error(proc) == f"ssdbench train: error: cannot write {out / 'checkpoints' / 'epoch_0001.pt'}: File too large"
    assert not _temporary_files(out) and not list((out / "checkpoints").glob("*.pt"))
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"  # no claim of a result


ENOSPC_ON_SECOND_CHECKPOINT = """
import errno
from ssdbench.train import checkpoint as C
_real, _calls = C._write_payload, []
def _full(payload, tmp):
    _calls.append(tmp)
    if len(_calls) < 2:
        return _real(payload, tmp)
    with open(tmp, "wb") as f:
        f.write(b"PK\\x03\\x04" + bytes(1000))  # part of the file, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device")
C._write_payload = _full
"""


def test_full_disk_keeps_the_last_good_checkpoint_and_resume_logs_once(data, tmp_path):
    out = tmp_path / "run"
    proc = _train(_argv(data, out), prelude=ENOSPC_ON_SECOND_CHECKPOINT)
    assert proc.returncode == 2
    assert _error(proc) == (f"ssdbench train: error: cannot write {out / 'checkpoints' / 'epoch_0002.pt'}: "
                            "No space left on device")
    assert not _temporary_files(out)
    assert last_checkpoint(out / "checkpoints").name == "epoch_0001.pt"
    assert [r["epoch"] for r in _metrics(out) if r["kind"] == "eval"] == [1, 2]  # epoch 2 was evaluated
    proc = _train(_argv(data, out))  # space again: the same command resumes from epoch 1
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _metrics(out)
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2]  # not [1, 2, 2]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) % 2 == 0  # each step once, 2 epochs


def test_a_second_failed_write_does_not_hide_the_first(data, tmp_path):
    """The disk stays full: summary.json cannot be written either. Still one error line (the
    checkpoint's), one note for the summary, no traceback."""
    out = tmp_path / "run"
    prelude = ENOSPC_ON_SECOND_CHECKPOINT.replace("len(_calls) < 2", "False") + """
from ssdbench.train.run_folder import RunFolder
_real_json = RunFolder.write_json
def _no_space(self, name, data):  # full from the first checkpoint on
    if _calls:
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / name))
    return _real_json(self, name, data)
RunFolder.write_json = _no_space
"""
    proc = _train(_argv(data, out), prelude=prelude)
    assert proc.returncode == 2
    assert _error(proc) == (f"ssdbench train: error: cannot write {out / 'checkpoints' / 'epoch_0001.pt'}: "
                            "No space left on device")
    assert "note: the run summary was not written either" in proc.stdout


# ---------------------------------------------------------------- two runs, one folder
def test_a_second_run_into_a_locked_folder_fails_at_once(data, tmp_path):
    out = tmp_path / "run"
    hold = ("import sys, time\nfrom ssdbench.io import FolderLock\n"
            "lock = FolderLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        proc = _train(_argv(data, out))
        elapsed = time.monotonic() - start
        assert proc.returncode == 2
        line = _error(proc)
        assert f"{out} is in use by process {holder.pid} on host {socket.gethostname()}" in line
        assert elapsed < 30 and not (out / "metrics.jsonl").exists()  # refused before anything is built
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL left the lock file behind; the kernel dropped the lock: the next run takes it over.
    assert (out / ".lock").exists()
    proc = _train(_argv(data, out, epochs=1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"note: taking over the lock of process {holder.pid}" in proc.stderr
    assert not (out / ".lock").exists()  # released at the end


def test_folder_lock_in_one_process(tmp_path):
    first = FolderLock(tmp_path).acquire()
    with pytest.raises(FolderLockedError, match=f"is in use by process {os.getpid()} on host"):
        FolderLock(tmp_path).acquire()
    first.release()
    second = FolderLock(tmp_path).acquire()  # free again
    second.release()
    assert not (tmp_path / ".lock").exists()


# ---------------------------------------------------------------- no claim of a checkpoint not written
def test_preempted_run_whose_checkpoint_fails_does_not_claim_one(data, tmp_path):
    """SIGTERM asks for a checkpoint; the disk is full: the error names the file, nothing says
    'preempted' or 'checkpoint written', and the status is an error, not the requeue code."""
    out = tmp_path / "run"
    prelude = ENOSPC_ON_SECOND_CHECKPOINT.replace("len(_calls) < 2", "False") + """
import os, signal
from ssdbench.train import loop as L
_real_epoch = L.train_one_epoch
def _epoch(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # as Slurm does, once the first epoch starts
    return _real_epoch(*args, **kwargs)
import ssdbench.train.trainer as T
T.train_one_epoch = _epoch
"""
    proc = _train(_argv(data, out), prelude=prelude)
    assert proc.returncode == 2
    assert _error(proc).startswith(f"ssdbench train: error: cannot write {out / 'checkpoints' / 'step_'}")
    assert "preempted at step" not in proc.stdout and "exit status 75" not in proc.stderr
    assert not _temporary_files(out) and not list((out / "checkpoints").glob("*.pt"))


def test_divergence_without_a_checkpoint_says_so(data, tmp_path):
    out = tmp_path / "run"
    proc = _train(_argv(data, out, "--lr", "1e9", "--warmup-steps", "0", epochs=1))
    assert proc.returncode == 2
    line = _error(proc)
    assert "non-finite loss at step" in line and line.endswith("no checkpoint was written"), line


def test_accepted_changes_reach_a_tensor_learning_rate():
    """The fast step's fused SGD keeps its lr in a device tensor that a CUDA graph reads: accepted
    changes fill that same tensor (the run above uses the plain step, CPU has no graph)."""
    from ssdbench.train.build import MLPerfSchedule
    from ssdbench.train.checkpoint import hyperparameters, load_optimizer_state, restore_hyperparameters
    from ssdbench.train.fast_step import make_sgd
    from ssdbench.train.loop import StepParts

    def parts(lr, decay):
        import torch

        opt = make_sgd([torch.nn.Parameter(torch.ones(3))], lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, MLPerfSchedule(5, 2, decay_epochs=decay, plateau=False))
        return StepParts(None, opt, sched, None, torch.device("cpu"))

    old = parts(0.5, (40,))
    for _ in range(12):
        old.optimizer.step()
        old.scheduler.step()
    new = parts(0.1, (2,))  # new lr and an earlier decay: epoch 2 starts at step 10
    fresh, lr_tensor = hyperparameters(new), new.optimizer.param_groups[0]["lr"]
    load_optimizer_state(new.optimizer, old.optimizer.state_dict())
    new.scheduler.load_state_dict(old.scheduler.state_dict())
    assert float(lr_tensor) == 0.5  # what a plain restore leaves: the checkpoint's lr
    assert restore_hyperparameters(new, fresh) == [pytest.approx(0.1 * 0.1)]
    assert new.optimizer.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == pytest.approx(0.01)
    new.optimizer.step()
    new.scheduler.step()  # the schedule goes on with the new values
    assert float(lr_tensor) == pytest.approx(0.01) and new.scheduler.base_lrs == [0.1]
