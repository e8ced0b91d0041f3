"""Kill a run mid-epoch (SIGKILL, and SIGTERM as Slurm preemption does), resume it with the same
command, and end bit-identical to an uninterrupted run (deterministic CPU mode).

The checkpoint files themselves (atomic writes, `last`, pruning, payload) are in test_checkpoint.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssdbench.errors import PREEMPTED_EXIT
from ssdbench.train.checkpoint import last_checkpoint, load_checkpoint

EPOCHS, BATCH = 2, 8  # 48 images, fewer after dropping empty ones: ~5 steps per epoch


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from ssdbench.data.synth import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("data") / "coco", train_images=48, val_images=6,
                               workers=1, progress=False)


def _command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ssdbench", "train", "--data", str(data), "--model", "ssd128_mini",
            "--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--lr", "0.02", "--warmup-steps", "3",
            "--eval-every", "0", "--workers", "0", "--log-every", "1", "--deterministic", "--out", str(out)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SSDBENCH_DEBUG": "1"}


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, check=False, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _interrupt(cmd: list[str], out: Path, sig: int, per_epoch: int) -> subprocess.Popen:
    """Start `cmd`, send `sig` once it has logged the second step of epoch 2."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any(json.loads(line).get("step", 0) >= per_epoch + 2 for line in lines if line.strip()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return proc


def _final(out: Path) -> dict:
    return load_checkpoint(last_checkpoint(out / "checkpoints"))


def _assert_same(a: dict, b: dict) -> None:
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), f"model tensor {key} differs"
    for pid, s in a["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["optimizer"]["state"][pid]["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == a["state"]["step"]
    assert a["state"]["eval_history"] == b["state"]["eval_history"]


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    _run(_command(tiny_data, out))
    return _final(out)


def test_sigkill_mid_epoch_then_resume(tiny_data, reference, tmp_path):
    cmd = _command(tiny_data, tmp_path)
    proc = _interrupt(cmd, tmp_path, signal.SIGKILL, reference["state"]["step"] // EPOCHS)
    assert proc.returncode == -signal.SIGKILL
    # No handler runs on SIGKILL: the newest complete checkpoint is the end of epoch 1.
    assert last_checkpoint(tmp_path / "checkpoints").name == "epoch_0001.pt"
    _run(cmd)  # the same command continues the run
    resumed = _final(tmp_path)
    _assert_same(reference, resumed)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed"] and summary["epochs"] == EPOCHS and summary["status"] == "finished"


def test_sigterm_checkpoints_mid_epoch_then_resume(tiny_data, reference, tmp_path):
    cmd = _command(tiny_data, tmp_path)
    per_epoch = reference["state"]["step"] // EPOCHS
    proc = _interrupt(cmd, tmp_path, signal.SIGTERM, per_epoch)
    err = proc.stderr.read()
    assert proc.returncode == PREEMPTED_EXIT, err[-2000:]  # non-zero: a scheduler requeues it
    assert "preempted" in err
    ckpt = last_checkpoint(tmp_path / "checkpoints")
    assert ckpt.name.startswith("step_"), ckpt.name  # a mid-epoch checkpoint with the sampler position
    state = load_checkpoint(ckpt)
    assert 0 < state["state"]["epoch_step"] < per_epoch
    assert state["sampler"]["position"] == state["state"]["epoch_step"] * BATCH
    _run(cmd)
    _assert_same(reference, _final(tmp_path))

