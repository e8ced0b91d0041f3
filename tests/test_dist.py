"""`ssdbench.dist`: ranks from torchrun and Slurm variables, the device choice, collectives without
a process group, the watchdog; and, across processes, a dead rank ends the other in bounded time."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from ssdbench import dist as D

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
               "SLURM_NNODES", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def env(monkeypatch):
    """A process without a launcher; the test sets the variables it needs."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- ranks from the launcher
def test_no_launcher_is_rank_0_of_1(env):
    assert (D.env_rank(), D.env_world_size(), D.get_local_rank()) == (0, 1, 0)
    assert (D.get_rank(), D.get_world_size(), D.is_main()) == (0, 1, True)


def test_torchrun_variables(env):
    env.setenv("RANK", "5")
    env.setenv("WORLD_SIZE", "8")
    env.setenv("LOCAL_RANK", "1")
    assert (D.env_rank(), D.env_world_size(), D.get_local_rank(), D.is_main()) == (5, 8, 1, False)


def test_slurm_variables_and_torchrun_winning(env):
    env.setenv("SLURM_PROCID", "3")
    env.setenv("SLURM_NTASKS", "4")
    env.setenv("SLURM_LOCALID", "3")
    assert (D.env_rank(), D.env_world_size(), D.get_local_rank()) == (3, 4, 3)
    env.setenv("RANK", "0")  # torchrun inside a Slurm job step: torchrun's numbering wins
    env.setenv("WORLD_SIZE", "2")
    env.setenv("LOCAL_RANK", "")  # empty counts as unset: Slurm's value is used
    assert (D.env_rank(), D.env_world_size(), D.get_local_rank()) == (0, 2, 3)


def test_a_bad_value_names_the_variable(env):
    env.setenv("SLURM_NTASKS", "2(x2)")  # Slurm's compressed form is not a task count
    with pytest.raises(ValueError, match=r"environment variable SLURM_NTASKS='2\(x2\)' is not an integer"):
        D.env_world_size()


def test_rendezvous_defaults(env):
    D._default_master_env(1)
    assert "MASTER_ADDR" not in os.environ  # one process needs no rendezvous
    D._default_master_env(2)  # one node: loopback
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("127.0.0.1", "29500")
    env.delenv("MASTER_ADDR")
    env.setenv("SLURM_NNODES", "2")
    with pytest.raises(ValueError, match="multi-node srun needs MASTER_ADDR"):
        D._default_master_env(4)


# ---------------------------------------------------------------- device
def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.pick_device("auto") == D.pick_device(None) == D.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--eval-device 'tpu0' is not a device \(auto, cpu, cuda, cuda:N\)"):
        D.pick_device("tpu0", flag="--eval-device")
    with pytest.raises(ValueError, match="--device cuda:1: CUDA is not available"):
        D.pick_device("cuda:1")


def test_launch():
    one = D.Launch(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    two = D.Launch(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    assert (one.distributed, one.is_main, two.distributed, two.is_main) == (False, True, True, False)


# ---------------------------------------------------------------- collectives without a process group
def test_collectives_without_a_process_group():
    assert not D.is_initialized()
    assert D.all_reduce_sum([1, 2.5], torch.device("cpu")) == [1.0, 2.5]
    obj = {"detections": [1, 2]}
    assert D.all_gather_object(obj) == [obj] and D.gather_object(obj) == [obj]
    assert D.broadcast_object(obj) is obj


# ---------------------------------------------------------------- watchdog
def test_watchdog_beat_and_paused(monkeypatch, capsys):
    exits, exited = [], threading.Event()

    def fake_exit(code):
        exits.append(code)
        exited.set()

    monkeypatch.setattr(D.os, "_exit", fake_exit)
    dog = D.Watchdog(0.5, rank=2, poll_s=0.02).start()
    try:
        for _ in range(15):  # 0.75 s of steps, each well within the timeout
            time.sleep(0.05)
            dog.beat()
        with dog.paused():  # an evaluation or a checkpoint: no beats, no exit
            time.sleep(0.8)
        assert exits == []
        assert exited.wait(5) and exits[0] == 3  # no beat after the pause: the process is ended
    finally:
        dog.stop()
    assert "rank 2: no training progress" in capsys.readouterr().err


def test_watchdog_off_without_a_timeout():
    dog = D.Watchdog(0).start()
    assert not dog._thread.is_alive()
    dog.stop()


def test_watchdog_exits_a_stuck_process():
    code = "import time; from ssdbench.dist import Watchdog; Watchdog(1.0, poll_s=0.2).start(); time.sleep(30)"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "no training progress" in proc.stderr
    assert time.monotonic() - t0 < 20


# ---------------------------------------------------------------- a dead rank
FAILING_RANK = """
import os, sys, time, torch
from ssdbench import dist as L
L.init_distributed("cpu", timeout_s=float(sys.argv[1]))
for step in range(1000):
    if L.get_rank() == 1 and step == 3:
        os._exit(7)  # a crash: no clean shutdown
    L.all_reduce_sum([1.0], torch.device("cpu"))
    time.sleep(0.05)
"""


def test_dead_rank_ends_the_other(tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", FAILING_RANK, "20"], env={**env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in (0, 1)]
    try:
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes[1] == 7
    assert codes[0] != 0, "the surviving rank must fail, not finish"
    assert time.monotonic() - t0 < 45  # bounded: well under the 60 s we waited
