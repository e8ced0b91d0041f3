"""Multi-instance CPU serving: core sets, pinned instance processes, the same detections as one backend."""

import multiprocessing as mp
import os
import time

import instance_fakes
import pytest
import torch

from ssdbench import workers
from ssdbench.errors import CliError
from ssdbench.loadgen import device_pool as I
from ssdbench.loadgen.device_pool import InstanceFailed, InstancePool, WorkerRecipe, split_cores


def test_split_cores_without_topology_contiguous_and_balanced(monkeypatch):
    monkeypatch.setattr(I, "read_topology", lambda cpus: None)  # /sys unreadable
    assert split_cores(2, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3, 4]]
    assert split_cores(1, [4, 5]) == [[4, 5]]
    assert split_cores(3, [0, 1, 2]) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="--instances 3 needs at least 3 cores"):
        split_cores(3, [0, 1])
    with pytest.raises(ValueError, match="--instances must be >= 1"):
        split_cores(0, [0])


def _cores_of_instance(pool):
    return [d["cores"] for d in pool.describe]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_two_pinned_instances_answer_like_one_backend(tmp_path):
    from ssdbench.infer.backends import BackendOptions, make_backend
    from ssdbench.model.ssd import build_model

    torch.manual_seed(0)
    model = build_model("ssd128_mini").eval()
    weights = tmp_path / "w.pt"
    torch.save({"model": model.state_dict(), "model_name": "ssd128_mini"}, weights)
    kwargs = {"name": "eager", "model_name": "ssd128_mini", "weights": str(weights),
              "options": BackendOptions(dtype="fp32")}
    cores = [[c] for c in sorted(os.sched_getaffinity(0))[:2]]
    pool = InstancePool(WorkerRecipe(kwargs, warmup=((1, 1),)), 2, cores=cores)
    try:
        assert _cores_of_instance(pool) == cores
        assert all(d["backend"] == "eager" and d["dtype"] == "fp32" for d in pool.describe)
        x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
        ref = make_backend("eager", "ssd128_mini", BackendOptions(dtype="fp32"), model=model).predict(x)
        for _ in range(2):  # both instances (the pool hands them out in turn)
            got = pool.predict(x)
            assert got.counts.tolist() == ref.counts.tolist()
            assert torch.equal(got.labels, ref.labels)
            assert (got.boxes - ref.boxes).abs().max() < 1e-5
    finally:
        pool.close()


def test_an_instance_that_cannot_start_is_one_error(tmp_path):
    kwargs = {"name": "eager", "model_name": "ssd128_mini", "weights": str(tmp_path / "missing.pt")}
    with pytest.raises(InstanceFailed, match=r"^worker 0 of 1 on cpu \(cores \[\d+\]\) failed to start: .*missing\.pt"):
        InstancePool(WorkerRecipe(kwargs), 1, cores=[[min(os.sched_getaffinity(0))]])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_loadgen_offline_with_two_instances(tmp_path, capsys):
    """`ssdbench loadgen --instances 2`: VALID, every response once, the instances recorded."""
    import json

    from data_fixtures import synthetic_coco

    from ssdbench.cli import main

    data = synthetic_coco(tmp_path / "data", train=2, val=6)
    out = tmp_path / "lg"
    code = main(["loadgen", "--scenario", "Offline", "--preset", "cpu", "--instances", "2", "--dtype", "fp32",
                 "--data", str(data), "--count", "6", "--min-duration", "0.5", "--min-query-count", "32",
                 "--qps", "2000", "--warmup", "1", "--no-cache", "--out", str(out)])
    assert code == 0, capsys.readouterr().out
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sut"]["instances"] == 2 and len(settings["instances"]) == 2
    assert sorted(c for inst in settings["instances"] for c in inst["cores"]) == sorted(os.sched_getaffinity(0))
    assert "Result is : VALID" in (out / "mlperf_log_summary.txt").read_text()


def _children() -> set[int]:
    return {p.pid for p in mp.active_children()}


def _fake_topology(packages: int, cores_per_package: int, threads: int = 2):
    """Linux numbering: CPUs 0..P*C-1 are every core's first thread, the next P*C their siblings."""
    physical = packages * cores_per_package
    return {cpu: ((cpu % physical) // cores_per_package, (cpu % physical) % cores_per_package)
            for cpu in range(physical * threads)}


def test_split_cores_keeps_smt_siblings_together(monkeypatch):
    monkeypatch.setattr(I, "read_topology", lambda cpus: {c: _fake_topology(1, 8)[c] for c in cpus})
    cpus = list(range(16))
    assert split_cores(2, cpus) == [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]
    assert split_cores(3, cpus) == [[0, 1, 2, 8, 9, 10], [3, 4, 5, 11, 12, 13], [6, 7, 14, 15]]
    assert split_cores(8, cpus)[7] == [7, 15]
    with pytest.raises(ValueError, match=r"^--instances 9 needs at least 9 physical cores, this process has 8 "
                                         r"\(16 logical CPUs"):
        split_cores(9, cpus)


def test_split_cores_keeps_instances_inside_one_package(monkeypatch):
    monkeypatch.setattr(I, "read_topology", lambda cpus: {c: _fake_topology(2, 4)[c] for c in cpus})
    cpus = list(range(16))  # package 0: cores of CPUs 0-3 + 8-11, package 1: 4-7 + 12-15
    assert split_cores(2, cpus) == [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]
    assert split_cores(4, cpus) == [[0, 1, 8, 9], [2, 3, 10, 11], [4, 5, 12, 13], [6, 7, 14, 15]]
    monkeypatch.setattr(I, "read_topology", lambda cpus: {c: _fake_topology(2, 5, threads=1)[c] for c in cpus})
    # 10 cores, 4 instances: 3+2 per package, not 3+3+2+2 across the package boundary
    assert split_cores(4, list(range(10))) == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]


def test_topology_reader_reads_sys_or_gives_none():
    cpus = sorted(os.sched_getaffinity(0))
    topology = I.read_topology(cpus)
    if os.path.isdir("/sys/devices/system/cpu/cpu0/topology"):
        assert topology is not None and set(topology) == set(cpus)
    assert I.read_topology([10**6]) is None  # no such CPU: the plain split
    assert sorted(c for s in split_cores(1) for c in s) == cpus


def test_an_instance_that_dies_while_starting_is_one_quick_error():
    before = _children()
    start = time.monotonic()
    with pytest.raises(InstanceFailed, match=r"^worker 0 of 1 on cpu \(cores \[\d+\]\) died while starting "
                                             r"\(exit code 3\)$"):
        InstancePool(WorkerRecipe({}, factory=instance_fakes.die), 1, cores=[[min(os.sched_getaffinity(0))]])
    assert time.monotonic() - start < 120  # not READY_TIMEOUT_S (900 s)
    assert _children() <= before
    assert issubclass(InstanceFailed, CliError)  # `ssdbench loadgen` prints it as one line, exit status 2


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_a_dead_instance_stops_the_others_still_starting():
    before = _children()
    c0, c1 = sorted(os.sched_getaffinity(0))[:2]
    start = time.monotonic()
    with pytest.raises(InstanceFailed, match=rf"^worker 0 of 2 on cpu \(cores \[{c0}\]\) died while starting"):
        InstancePool(WorkerRecipe({}, factory=instance_fakes.die_if_one_thread_else_hang), 2, cores=[[c0], [c0, c1]])
    assert time.monotonic() - start < 120  # the hanging instance is terminated, not waited for
    assert _children() <= before


def test_an_instance_not_ready_in_time_is_one_error(monkeypatch):
    monkeypatch.setattr(I, "READY_TIMEOUT_S", 1.0)
    before = _children()
    with pytest.raises(InstanceFailed, match=r"^worker 0 of 1 on cpu \(cores \[\d+\]\) not ready after 1 s"):
        InstancePool(WorkerRecipe({}, factory=instance_fakes.hang), 1, cores=[[min(os.sched_getaffinity(0))]])
    assert _children() <= before


def test_an_interrupted_start_leaves_no_instance(monkeypatch):
    def interrupted(conns, timeout=None):
        assert mp.active_children()  # the instance runs
        raise KeyboardInterrupt

    monkeypatch.setattr(workers, "_wait", interrupted)
    before = _children()
    with pytest.raises(KeyboardInterrupt):
        InstancePool(WorkerRecipe({}, factory=instance_fakes.hang), 1, cores=[[min(os.sched_getaffinity(0))]])
    assert _children() <= before


def test_a_broken_instance_is_set_aside_and_named():
    before = _children()
    core = min(os.sched_getaffinity(0))
    pool = InstancePool(WorkerRecipe({"die_at": 2}, factory=instance_fakes.tiny), 2, cores=[[core], [core]])
    try:
        assert pool.predict(torch.zeros(1, 3, 8, 8)).counts.tolist() == [1]
        with pytest.raises(InstanceFailed, match=rf"^worker \d of 2 on cpu \(cores \[{core}\]\) stopped answering "
                                                 r"\(EOFError.*\(exit code 5\)$"):
            pool.predict(torch.zeros(2, 3, 8, 8))
        # the other instance still answers, every time: the broken one is never handed out again
        for _ in range(4):
            assert pool.predict(torch.zeros(3, 3, 8, 8)).counts.tolist() == [1, 1, 1]
        with pytest.raises(InstanceFailed, match="stopped answering"):
            pool.predict(torch.zeros(2, 3, 8, 8))
        for _ in range(2):  # none left: an error, not a caller waiting forever
            with pytest.raises(InstanceFailed, match=r"^every pool worker has failed \(2 of 2\)$"):
                pool.predict(torch.zeros(1, 3, 8, 8))
    finally:
        pool.close()
    assert _children() <= before
