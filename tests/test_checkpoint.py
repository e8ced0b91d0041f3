"""Checkpoints: atomic files behind a `last` pointer, pruning, finding the one to resume, and the
payload round trip (weights, tensor lr, momentum, scheduler, sampler position, generators)."""

import random

import numpy as np
import pytest
import torch

from ssdbench.data.loader import Shard, ShardedSampler
from ssdbench.io import WriteError
from ssdbench.train import checkpoint as C
from ssdbench.train.build import MLPerfSchedule
from ssdbench.train.config import TrainConfig
from ssdbench.train.fast_step import make_sgd
from ssdbench.train.loop import StepParts, TrainState

TRAINING = {"model": {}, "state": {}, "sampler": {}, "rng": []}  # the keys a resume needs
PAYLOAD_KEYS = {"model", "optimizer", "scheduler", "scaler", "state", "sampler", "rng", "config", "world_size",
                "categories"}


def test_checkpoint_files_are_atomic_and_pointed(tmp_path):
    for i in range(4):
        C.save_checkpoint(tmp_path, f"epoch_{i:04d}.pt", {"i": torch.tensor(i)})
    assert (tmp_path / "last").read_text().strip() == "epoch_0003.pt"
    assert C.load_checkpoint(tmp_path / "last.pt")["i"] == 3
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]


def test_a_failed_write_keeps_the_last_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    C.save_checkpoint(tmp_path, "epoch_0001.pt", {"i": torch.tensor(1)})

    def half_written(obj, f):
        f.write(b"PK\x03\x04 truncated")  # a partial file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(WriteError, match=r"cannot write .*epoch_0002.pt: No space left on device"):
        C.save_checkpoint(tmp_path, "epoch_0002.pt", {"i": torch.tensor(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0001.pt", "last", "last.pt"]
    assert C.last_checkpoint(tmp_path).name == "epoch_0001.pt"
    assert C.load_checkpoint(tmp_path / "last.pt")["i"] == 1


def test_pruning_keeps_the_newest_and_ignores_other_files(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "KEEP", 1)
    (tmp_path / "notes.txt").write_text("mine")
    for name in ("epoch_0001.pt", "epoch_0002.pt", "step_0000013.pt"):
        C.save_checkpoint(tmp_path, name, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0002.pt", "last", "last.pt", "notes.txt",
                                                          "step_0000013.pt"]
    assert (tmp_path / "last.pt").resolve().name == "step_0000013.pt"


def test_last_checkpoint_and_find_resume(tmp_path):
    run = tmp_path / "run"
    folder = run / "checkpoints"
    assert C.last_checkpoint(folder) is None and C.find_resume("auto", run) is None
    C.save_checkpoint(folder, "epoch_0001.pt", TRAINING)
    assert C.find_resume("auto", run)[0] == folder / "epoch_0001.pt"
    assert C.find_resume(str(run), run)[0] == folder / "epoch_0001.pt"  # --resume RUN_DIR
    assert C.find_resume("never", run) is None
    assert C.find_resume(str(folder / "epoch_0001.pt"), tmp_path)[0] == folder / "epoch_0001.pt"
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint or run folder at .*nope.pt"):
        C.find_resume(str(tmp_path / "nope.pt"), run)
    (folder / "epoch_0001.pt").unlink()  # `last` names a file that is gone: nothing to resume
    assert C.last_checkpoint(folder) is None


def _training(lr: float = 0.5, seed: int = 0):
    """(net, StepParts with a fused tensor-lr SGD and the MLPerf schedule, training sampler)."""
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    opt = make_sgd(net.parameters(), lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, MLPerfSchedule(iters_per_epoch=5, warmup_iters=3))
    sampler = ShardedSampler(40, Shard(seed=1), drop_last=True, with_epoch=True)
    return net, StepParts(net, opt, sched, None, torch.device("cpu")), sampler


def _step(net, parts) -> None:
    parts.optimizer.zero_grad()
    net(torch.randn(4, 3)).square().sum().backward()
    parts.optimizer.step()
    parts.scheduler.step()


def test_payload_round_trip(tmp_path):
    net, parts, sampler = _training()
    for _ in range(7):
        _step(net, parts)
    sampler.set_epoch(1)
    state = TrainState(epoch=1, step=7, epoch_step=2, train_time_s=3.5,
                       eval_history=[{"epoch": 1, "map": 0.1, "stats": [0.1] * 12}], segments=1)
    cfg = TrainConfig(batch_size=4)
    rngs = [C.rng_state()]
    expected_draws = (torch.rand(3), np.random.rand(), random.random())  # what the restored generators give
    path = C.save_checkpoint(tmp_path, "step_0000007.pt", C.training_payload(C.RunObjects(net, parts, state, sampler, cfg), 1, rngs))
    payload = C.load_checkpoint(path)
    assert set(payload) == PAYLOAD_KEYS and payload["world_size"] == 1 and payload["scaler"] is None
    assert payload["config"]["batch_size"] == 4 and payload["state"]["eval_history"] == state.eval_history
    assert (payload["sampler"]["epoch"], payload["sampler"]["position"]) == (1, 2 * 4)  # epoch_step x batch
    saved_lr = float(parts.optimizer.param_groups[0]["lr"])
    assert saved_lr == pytest.approx(0.5 * MLPerfSchedule(5, 3)(7))

    fresh_net, fresh, fresh_sampler = _training(lr=0.01, seed=1)
    lr_tensor = fresh.optimizer.param_groups[0]["lr"]
    C.restore_training(payload, fresh_net, fresh, fresh_sampler, rank=0, world_size=1, source=path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), fresh_net.state_dict().values()))
    assert fresh.optimizer.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == saved_lr
    for p, q in zip(net.parameters(), fresh_net.parameters()):
        assert torch.equal(parts.optimizer.state[p]["momentum_buffer"], fresh.optimizer.state[q]["momentum_buffer"])
    assert fresh.scheduler.last_epoch == 7
    assert (fresh_sampler.epoch, len(fresh_sampler)) == (1, 40 - 8)  # continues 8 samples into epoch 1
    assert torch.equal(torch.rand(3), expected_draws[0])
    assert (np.random.rand(), random.random()) == expected_draws[1:]
    resumed = C.resume_state(payload)
    assert resumed == TrainState(**{**vars(state), "segments": 2})  # this start counts as a segment
    with pytest.raises(ValueError, match="written with 1 ranks, this run has 2"):
        C.restore_training(payload, fresh_net, fresh, fresh_sampler, rank=0, world_size=2, source=path)


def test_load_optimizer_state_keeps_the_lr_tensor():
    w = torch.nn.Parameter(torch.ones(3))
    saved = make_sgd([w], 0.5)
    saved.param_groups[0]["lr"].fill_(0.125)
    opt = make_sgd([torch.nn.Parameter(torch.ones(3))], 0.5)
    lr = opt.param_groups[0]["lr"]
    C.load_optimizer_state(opt, saved.state_dict())
    assert opt.param_groups[0]["lr"] is lr and float(lr) == 0.125 and opt.defaults["fused"]
    plain = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.5, momentum=0.9)
    C.load_optimizer_state(plain, saved.state_dict())  # a fast checkpoint resumed with step=plain
    assert plain.param_groups[0]["lr"] == 0.125 and not plain.param_groups[0].get("fused")
