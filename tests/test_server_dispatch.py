"""Server over a device pool: one batcher per device (its own batch timeout) and each batch to the
least-loaded device; stand-in networks (`instance_fakes.tiny`)."""

from __future__ import annotations

import os
import threading
import time

import instance_fakes
import pytest
import torch
from loadgen_fixtures import loadgen_env, one_detection

from ssdbench import cli
from ssdbench.loadgen import run as run_module
from ssdbench.loadgen.device_pool import InstancePool, WorkerRecipe
from ssdbench.loadgen.sut import Batching, BatchingSUT

TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")


def _two_tiny_workers(delay: float) -> InstancePool:
    cores = [[c] for c in sorted(os.sched_getaffinity(0))[:2]] if len(os.sched_getaffinity(0)) > 1 else None
    return InstancePool(WorkerRecipe({"delay": delay}, factory=instance_fakes.tiny), devices=["cpu", "cpu"],
                        cores=cores or [[0], [0]], timeout_s=30)  # fmt: skip


def test_each_batch_goes_to_the_worker_with_fewest_samples_queued_or_in_flight():
    pool = _two_tiny_workers(delay=1.5)  # long enough that every choice falls inside the first batch
    pool.dispatch_least_loaded()
    sizes = [4, 1, 2, 1]  # started 0.1 s apart, all while the first batch still runs
    answers: list = [None] * len(sizes)

    def send(k: int) -> None:
        answers[k] = pool.predict(torch.zeros(sizes[k], 3, 8, 8))

    threads = []
    try:
        for k in range(len(sizes)):
            threads.append(threading.Thread(target=send, args=(k,)))
            threads[-1].start()
            time.sleep(0.1)
        for t in threads:
            t.join(30)
    finally:
        pool.close()
    # loads (samples queued or in flight) at each choice: worker 0 holds 4, worker 1 then 1, then 3
    assert list(pool.choices) == [(0, (0, 0)), (1, (4, 0)), (1, (4, 1)), (1, (4, 3))]
    assert [a.counts.tolist() for a in answers] == [[1] * n for n in sizes]
    assert [s["samples"] for s in pool.stats] == [4, 4] and pool._load == [0, 0]


def test_pull_dispatch_stays_for_offline():
    pool = _two_tiny_workers(delay=0.0)
    try:
        pool.predict(torch.zeros(2, 3, 8, 8))
    finally:
        pool.close()
    assert not pool.least_loaded and not pool.choices


class _RecordingSUT(BatchingSUT):
    """Completions recorded instead of sent to LoadGen (no LoadGen test running here)."""

    def _complete(self, items, arrays):
        self.completed.extend(items)


def test_each_batcher_closes_its_batch_at_its_own_timeout():
    """Two batchers (one per device): a sample arriving while the first batcher waits out its
    timeout starts the second batcher's batch (with its own timeout) instead of joining the first;
    with one batcher it joins."""
    batches: list[list[int]] = []

    def predict_samples(index):
        batches.append(index.tolist())
        return one_detection(len(index))

    for batchers, want in ((2, [[0], [1]]), (1, [[0, 1]])):
        batches.clear()
        batching = Batching(max_batch_size=8, batch_timeout_us=1_500_000, threads=2, batchers=batchers)
        sut = _RecordingSUT(None, None, batching, predict_samples=predict_samples)
        sut.completed = []
        sut.issue_queries([_Sample(0, 0)])
        time.sleep(0.3)  # the first batcher holds sample 0 and waits for more
        sut.issue_queries([_Sample(1, 1)])
        deadline = time.monotonic() + 10
        while len(sut.completed) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        sut.stop()
        assert sorted(batches) == want, batchers


class _Sample:
    def __init__(self, id_: int, index: int):
        self.id, self.index = id_, index


@pytest.fixture(scope="module")
def server_env(tmp_path_factory):
    yield from loadgen_env(tmp_path_factory, "server_dispatch", val_images=12, seed=0, background_bias=3.0)


@TWO_CORES
def test_two_devices_share_a_server_run_least_loaded_first(server_env, tmp_path, monkeypatch, capsys):
    data, weights = server_env
    made = []

    def build(sut, *args, **kwargs):
        made.append(_two_tiny_workers(delay=0.02))
        return made[-1]

    monkeypatch.setattr(run_module, "build_predict", build)
    code = cli.main(["loadgen", "--preset", "cpu", "--dtype", "fp32", "--warmup", "1", "--data", str(data),
                     "--weights", str(weights), "--count", "12", "--out", str(tmp_path / "lg"), "--scenario",
                     "Server", "--devices", "cpu:2", "--qps", "200", "--min-duration", "1", "--latency", "1000",
                     "--min-query-count", "470"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert "Result is : VALID" in (tmp_path / "lg" / "mlperf_log_summary.txt").read_text()
    pool = made[0]
    assert pool.least_loaded and len(pool.choices) >= 50
    for worker, loads in pool.choices:  # every batch went to a least-loaded worker (ties: the lower)
        assert loads[worker] == min(loads) and worker == loads.index(min(loads))
    assert all(s["samples"] > 0 for s in pool.stats)  # both devices served the run
    assert any(loads[0] > 0 for _, loads in pool.choices)  # worker 1 chosen because worker 0 was busy


def test_the_device_report_names_the_servers_dispatch_rule():
    from ssdbench.loadgen.report import device_lines

    stats = [{"worker": 0, "device": "cpu", "cores": [0], "samples": 4, "batches": 1, "busy_fraction": 0.5,
              "samples_per_s": 2.0, "done": [(0.5, 4)]}]  # fmt: skip
    assert "least-loaded device" in "\n".join(device_lines(stats, 100.0, "Server"))
    assert "next batch when it is free" in "\n".join(device_lines(stats, 100.0, "Offline"))
