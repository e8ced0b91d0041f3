"""The demo model's cache: a key per resolved CPU precision, and waiting for a run in progress."""

import threading
import time

import pytest

from ssdbench.io import FolderLock, FolderLockedError
from ssdbench.train import demo_model
from ssdbench.train.config import resolve_config


def test_cache_key_holds_the_resolved_cpu_precision(monkeypatch):
    cfg = resolve_config("demo", None, {"seed": 1, "device": "cpu"})
    assert cfg.precision == "auto"  # resolved per host: the key must say to what
    keys = {}
    for precision in ("bf16", "fp32"):
        monkeypatch.setattr(demo_model, "default_precision", lambda device, p=precision: p)
        keys[precision] = demo_model.cache_key(cfg)
    assert keys["bf16"] != keys["fp32"]
    assert keys["bf16"].startswith("ssd128_mini-22ep-bf16-") and keys["fp32"].startswith("ssd128_mini-22ep-fp32-")
    # a pinned precision does not depend on the host
    pinned = resolve_config("demo", None, {"seed": 1, "device": "cpu", "precision": "fp32"})
    monkeypatch.setattr(demo_model, "default_precision", lambda device: "bf16")
    assert demo_model.cache_key(pinned).startswith("ssd128_mini-22ep-fp32-")
    assert demo_model.cache_key(pinned) != keys["fp32"]  # other settings: another model
    assert demo_model.cache_key(resolve_config("demo", None, {"seed": 2, "device": "cpu"})) != keys["bf16"]


def _demo_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(demo_model, "LOCK_POLL_S", 0.05)
    return tmp_path / "demo-models" / demo_model.cache_key(resolve_config("demo", None, {"seed": 1, "device": "cpu"}))


def test_a_run_in_progress_elsewhere_is_waited_for(tmp_path, monkeypatch, capsys):
    folder = _demo_folder(tmp_path, monkeypatch)
    lock = FolderLock(folder).acquire()  # "another process" training the same model

    def finish():
        time.sleep(0.5)
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "last.pt").write_bytes(b"trained")
        (folder / "summary.json").write_text('{"status": "finished"}')
        lock.release()

    worker = threading.Thread(target=finish)
    worker.start()
    try:
        assert demo_model.demo_checkpoint() == folder / "checkpoints" / "last.pt"
    finally:
        worker.join()
    assert "waiting for another process to finish the demo model" in capsys.readouterr().err


def test_waiting_for_a_run_in_progress_is_bounded(tmp_path, monkeypatch):
    folder = _demo_folder(tmp_path, monkeypatch)
    monkeypatch.setattr(demo_model, "LOCK_WAIT_S", 0.3)
    lock = FolderLock(folder).acquire()
    try:
        with pytest.raises(FolderLockedError, match=r"is in use by process .*\(waited 0.3 s for it\)$"):
            demo_model.demo_checkpoint()
    finally:
        lock.release()


@pytest.mark.parametrize("status", ["failed", "interrupted", None])
def test_a_killed_run_is_resumed_not_returned(tmp_path, monkeypatch, status):
    """A run killed mid-training (e.g. a test's timeout) leaves a checkpoint and a summary.json saying
    "failed": the model is not finished, so the next call trains on instead of returning it."""
    from ssdbench.train import trainer

    folder = _demo_folder(tmp_path, monkeypatch)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"epoch 6 of 22")
    (folder / "summary.json").write_text("{}" if status is None else f'{{"status": "{status}"}}')
    calls = []

    def resume(cfg, progress=False):
        calls.append(cfg.out)
        (folder / "summary.json").write_text('{"status": "finished"}')
        return {"status": "finished"}

    monkeypatch.setattr(trainer, "run_training", resume)
    assert demo_model.demo_checkpoint() == folder / "checkpoints" / "last.pt"
    assert calls == [str(folder)]
    assert demo_model.demo_checkpoint() == folder / "checkpoints" / "last.pt"  # finished now: no training
    assert len(calls) == 1
