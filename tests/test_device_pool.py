"""The device pool (`--devices`): device lists, samples by index, the CUDA path with the device
as a parameter, LoadGen runs over two CPU workers, and a worker that dies or hangs mid-run."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import re
import threading
import time

import instance_fakes
import numpy as np
import pytest
import torch
from loadgen_fixtures import loadgen_env

from ssdbench import cli
from ssdbench.data.jitter import MEAN, STD
from ssdbench.loadgen import run as run_module
from ssdbench.loadgen.accuracy import decode_log
from ssdbench.loadgen.device_pool import (
    InstancePool,
    WorkerRecipe,
    describe_devices,
    parse_devices,
    pool_devices,
)
from ssdbench.loadgen.samples import (
    Normaliser,
    SampleReader,
    SharedSamples,
    normalise_uint8,
    pack_detections,
    unpack_detections,  # fmt: skip
)
from ssdbench.model.postprocess import PaddedDetections

TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")


# ---------------------------------------------------------------- device lists
def test_device_lists_name_what_was_asked_and_what_exists():
    assert parse_devices("cuda:0,cuda:1", visible_cuda=2) == ["cuda:0", "cuda:1"]
    assert parse_devices("cuda:all", visible_cuda=3) == ["cuda:0", "cuda:1", "cuda:2"]
    assert parse_devices("cuda", visible_cuda=1) == ["cuda:0"]
    assert parse_devices("cpu:1", visible_cuda=0) == ["cpu"]
    with pytest.raises(ValueError, match=r"^--devices asks for cuda:2; this machine has 2 CUDA device\(s\) "
                                         r"\(cuda:0, cuda:1\)$"):
        parse_devices("cuda:0,cuda:2", visible_cuda=2)
    with pytest.raises(ValueError, match=r"asks for cuda:0; this machine has 0 CUDA device\(s\) \(none\)"):
        parse_devices("cuda:0", visible_cuda=0)
    with pytest.raises(ValueError, match="'cuda:all': this machine has no CUDA device"):
        parse_devices("cuda:all", visible_cuda=0)
    with pytest.raises(ValueError, match="names cuda:1 more than once"):
        parse_devices("cuda:1,cuda:1", visible_cuda=2)
    with pytest.raises(ValueError, match="mixes CPU and CUDA"):
        parse_devices("cpu:1,cuda:0", visible_cuda=1)
    with pytest.raises(ValueError, match=r"'tpu:0' is not a device"):
        parse_devices("tpu:0", visible_cuda=0)
    with pytest.raises(ValueError, match=r"asks for 99999 CPU workers; this process has \d+ cores"):
        parse_devices("cpu:99999", visible_cuda=0)
    with pytest.raises(ValueError, match="an empty entry"):
        parse_devices("cuda:0,", visible_cuda=1)


def test_instances_is_cpu_n_and_a_disagreement_is_an_error():
    assert pool_devices("auto", 1) is None  # one device in the SUT's process
    assert pool_devices("auto", 2) == ["cpu", "cpu"]
    assert pool_devices("cpu:1", 1) == ["cpu"]
    with pytest.raises(ValueError, match="--instances 2 and --devices cuda:0 disagree"):
        pool_devices("cuda:0", 2, visible_cuda=1)
    assert describe_devices(["cpu", "cpu"], "cpu") == "cpu:2"
    assert describe_devices(["cuda:0", "cuda:1"], "cpu") == "cuda:0,cuda:1"
    assert describe_devices(None, "cuda:0") == "cuda:0"


def test_the_cli_refuses_devices_that_are_not_there(tmp_path, capsys):
    code = cli.main(["loadgen", "--preset", "cpu", "--scenario", "Offline", "--devices", "cuda:0,cuda:1",
                     "--out", str(tmp_path / "lg")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert re.search(r"error: --devices asks for cuda:0; this machine has 0 CUDA device\(s\) \(none\)$", err.strip())
    assert not (tmp_path / "lg").exists() or not any((tmp_path / "lg").iterdir())


def test_seed_rows_are_systems_of_n_devices(tmp_path, capsys):
    from ssdbench.loadgen import settings as S

    eight = S.resolve(None, preset="tpu_v3_8x_offline")
    assert eight.sut.devices == ",".join(f"cuda:{k}" for k in range(8))
    assert eight.sources["devices"] == "preset tpu_v3_8x_offline"
    assert S.resolve(None, preset="tpu_v3_1x_offline").sut.devices == "auto"  # one accelerator: no pool
    assert S.resolve(None, preset="tpu_v3_2x_offline", flags={"devices": "cpu:2"}).sut.devices == "cpu:2"
    code = cli.main(["loadgen", "--preset", "tpu_v3_4x_offline", "--out", str(tmp_path / "lg")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert err.endswith("this machine has 0 CUDA device(s) (none) (preset tpu_v3_4x_offline is a 4-device "
                        "system: devices = cuda:0,cuda:1,cuda:2,cuda:3; --devices overrides)") or torch.cuda.is_available()


# ---------------------------------------------------------------- samples by index, the CUDA path
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_normalised_on_the_device_equals_the_qsl_input(device):
    """The worker's input is bit for bit the QSL's own float32 preprocessing (numpy, samples.py)."""
    u8 = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    mean, std = (np.asarray(v, np.float32).reshape(3, 1, 1) for v in (MEAN, STD))
    expected = (u8.astype(np.float32) / np.float32(255.0) - mean) / std
    got = normalise_uint8(torch.from_numpy(u8), device)
    assert got.device.type == torch.device(device).type and got.dtype == torch.float32
    assert np.array_equal(got.cpu().numpy(), expected)
    normalise = Normaliser(device)  # a worker's: its buffer is reused from batch to batch
    for batch in (u8, u8[:1], u8[::-1].copy()):
        want = (batch.astype(np.float32) / np.float32(255.0) - mean) / std
        assert np.array_equal(normalise(torch.from_numpy(batch)).cpu().numpy(), want)


def test_shared_samples_by_slot_and_a_full_store_is_an_error():
    store = SharedSamples(2, (3, 4, 4))
    try:
        a, b = (np.full((3, 4, 4), v, np.uint8) for v in (7, 9))
        store.put(10, a)
        store.put(11, b)
        with pytest.raises(RuntimeError, match="shared sample store full: 2 slots"):
            store.put(12, a)
        path, shape = store.handle()
        batch = SampleReader().batch(path, shape, store.slots([11, 10]))  # another process's view
        assert batch.dtype == torch.uint8 and torch.equal(batch, torch.from_numpy(np.stack([b, a])))
        store.drop(10)
        store.put(12, a)  # the freed slot is reused
        with pytest.raises(KeyError):
            store.slots([10])
        with pytest.raises(ValueError, match="the store holds uint8"):
            store.put(13, a.astype(np.float32))
    finally:
        store.close()
    assert not os.path.exists(path)


def test_packed_detections_round_trip_in_a_few_kb():
    n, width = 3, 200
    counts = torch.tensor([0, 3, width])
    keep = torch.arange(width)[None] < counts[:, None]
    g = torch.Generator().manual_seed(0)
    dets = PaddedDetections(torch.rand(n, width, 4, generator=g) * keep[..., None],
                            torch.randint(1, 81, (n, width), generator=g) * keep,
                            torch.rand(n, width, generator=g) * keep, counts)  # fmt: skip
    packed = pack_detections(dets)
    back = unpack_detections(packed)
    for got, want in zip(back, dets):
        assert torch.equal(got, want)
    # a full image (200 detections) costs 22 bytes a detection: under 5 KB, not 17 MB of pixels
    assert len(pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)) < 5 * 1024 * 203 / 200


# ---------------------------------------------------------------- LoadGen over two workers
@pytest.fixture(scope="module")
def pool_env(tmp_path_factory):
    yield from loadgen_env(tmp_path_factory, "pool", val_images=12, seed=0, background_bias=3.0)


def _children() -> set[int]:
    return {p.pid for p in mp.active_children()}


def _loadgen(data, weights, out, *flags) -> int:
    return cli.main(["loadgen", "--preset", "cpu", "--dtype", "fp32", "--warmup", "1", "--data", str(data),
                     "--weights", str(weights), "--count", "12", "--out", str(out), *map(str, flags)])  # fmt: skip


def _device_rows(out) -> list[tuple[str, int]]:
    """(worker, samples) of report.md's device table, after checking the section's other parts."""
    report = (out / "report.md").read_text()
    assert "## Devices" in report and (out / "device_throughput.png").stat().st_size > 1000
    per_sample = float(re.search(r"Pipe bytes per sample .*: (\d+)", report).group(1))
    assert 0 < per_sample < 8 * 1024  # indices out and valid detections back: a few KB at most
    rows = re.findall(r"^\| (\d) \| cpu \| \d+ \| (\d+) \|.* \| ([0-9.]+) \|$", report, re.MULTILINE)
    # the devices' samples/s add up to LoadGen's own figure (both over the run's span)
    loadgen = float(re.search(r"samples per second\s*:\s*([0-9.]+)", (out / "mlperf_log_summary.txt").read_text(),
                              re.IGNORECASE).group(1))  # fmt: skip
    assert abs(sum(float(r) for _, _, r in rows) - loadgen) < 0.25 * loadgen, (rows, loadgen)
    return [(w, int(n)) for w, n, _ in rows]


@TWO_CORES
def test_two_cpu_workers_offline_valid_with_a_device_report(pool_env, tmp_path, capsys):
    """The real network in both workers; samples by index; per-device report; pipe bytes."""
    data, weights = pool_env
    out = tmp_path / "lg"
    code = _loadgen(data, weights, out, "--scenario", "Offline", "--devices", "cpu:2", "--min-duration", 0.3,
                    "--min-query-count", 200, "--qps", 2000)  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert "Result is : VALID" in (out / "mlperf_log_summary.txt").read_text()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sut"]["devices"] == "cpu:2" and settings["pool_devices"] == "cpu:2"
    assert [w["device"] for w in settings["instances"]] == ["cpu", "cpu"]
    rows = _device_rows(out)
    assert [w for w, _ in rows] == ["0", "1"] and sum(n for _, n in rows) >= 200  # every sample served


@TWO_CORES
def test_two_cpu_workers_server_valid(pool_env, tmp_path, monkeypatch, capsys):
    """Server's batches go to the free (least loaded) worker; a stand-in network of 2 ms a batch
    keeps the run inside the latency bound on a loaded machine."""
    data, weights = pool_env
    _patched_pool(monkeypatch, delay=0.002)
    out = tmp_path / "lg"
    code = _loadgen(data, weights, out, "--scenario", "Server", "--devices", "cpu:2", "--min-duration", 0.5,
                    "--min-query-count", 470, "--qps", 200, "--latency", 1000, "--max-batch-size", 4)  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert "Result is : VALID" in (out / "mlperf_log_summary.txt").read_text()
    rows = _device_rows(out)
    assert sum(n for _, n in rows) >= 470 and all(n > 0 for _, n in rows)  # both workers served


@TWO_CORES
def test_two_workers_write_the_same_detections_and_map_as_one(pool_env, tmp_path, capsys):
    data, weights = pool_env
    logs, maps = [], []
    for devices in ("cpu:1", "cpu:2"):
        out = tmp_path / devices.replace(":", "")
        # 4 resident samples of 12: LoadGen walks the QSL in sets that fit the 4 shared slots
        code = _loadgen(data, weights, out, "--scenario", "Offline", "--mode", "accuracy", "--devices", devices,
                        "--qps", 100, "--max-batch-size", 4, "--performance-sample-count", 4)  # fmt: skip
        assert code == 0, capsys.readouterr()
        logs.append(decode_log(out / "mlperf_log_accuracy.json"))
        maps.append(re.search(r"mAP[^0-9]*([0-9.]+)", (out / "accuracy.txt").read_text()).group(1))
    one, two = logs
    assert sorted(one) == sorted(two) == list(range(12))
    for i in one:  # sample for sample
        assert one[i].shape == two[i].shape, i
        np.testing.assert_allclose(one[i], two[i], rtol=0, atol=1e-5)
        assert np.array_equal(one[i][:, 6], two[i][:, 6])  # labels
    assert maps[0] == maps[1]


def _patched_pool(monkeypatch, **fake):
    """`run.build_predict` -> a two-worker pool of `instance_fakes.tiny` (module-level: spawnable)."""
    made = []

    def build(sut, *args, **kwargs):
        cores = [[c] for c in sorted(os.sched_getaffinity(0))[:2]]
        pool = InstancePool(WorkerRecipe(fake, factory=instance_fakes.tiny), devices=["cpu", "cpu"], cores=cores,
                            timeout_s=sut.predict_timeout_s)  # fmt: skip
        made.append(pool)
        return pool

    monkeypatch.setattr(run_module, "build_predict", build)
    return made


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("ssdbench loadgen: error:")]
    assert len(lines) == 1, err
    return lines[0]


@TWO_CORES
def test_a_worker_killed_mid_run_ends_it_quickly_naming_the_device(pool_env, tmp_path, monkeypatch, capsys):
    data, weights = pool_env
    made = _patched_pool(monkeypatch, delay=0.02)
    killed: list[float] = []

    def killer():
        while not made or sum(s["batches"] for s in made[0].stats) < 4:
            time.sleep(0.05)
        os.kill(made[0]._workers[1].process.pid, 9)
        killed.append(time.monotonic())

    before = _children()
    threading.Thread(target=killer, daemon=True).start()
    out = tmp_path / "lg"
    # ~20,000 samples at ~800/s: a run of about 25 s unless it ends early
    code = _loadgen(data, weights, out, "--scenario", "Offline", "--devices", "cpu:2", "--min-duration", 0,
                    "--min-query-count", 20000, "--qps", 800)  # fmt: skip
    assert code == 2 and killed and time.monotonic() - killed[0] < 10
    line = _one_error_line(capsys)
    assert re.search(r"worker 1 of 2 on cpu \(cores \[\d+\]\) stopped answering .*exit code -9", line), line
    failed = [p for p in out.iterdir() if p.name.startswith("failed-")]
    assert len(failed) == 1 and "worker 1 of 2 on cpu" in (failed[0] / "RUN_FAILED.txt").read_text()
    assert not (out / "mlperf_log_summary.txt").exists()
    assert _children() <= before


@TWO_CORES
def test_a_hung_worker_is_stopped_and_named(pool_env, tmp_path, monkeypatch, capsys):
    data, weights = pool_env
    _patched_pool(monkeypatch, delay=0.01, hang_at=3)
    before = _children()
    start = time.monotonic()
    code = _loadgen(data, weights, tmp_path / "lg", "--scenario", "Offline", "--devices", "cpu:2",
                    "--min-duration", 0, "--min-query-count", 20000, "--qps", 800, "--predict-timeout", 2)  # fmt: skip
    assert code == 2 and time.monotonic() - start < 60
    line = _one_error_line(capsys)
    assert re.search(r"worker \d of 2 on cpu \(cores \[\d+\]\) gave no answer to a batch of \d+ within 2 s", line)
    assert _children() <= before


def test_the_system_description_counts_the_accelerators_the_runs_used(tmp_path):
    from ssdbench.errors import CliError
    from ssdbench.loadgen.submission import accelerators_of_runs

    def run(name, **settings):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "settings.json").write_text(json.dumps(settings))
        return folder

    eight = run("off", device="cuda:0", pool_devices=",".join(f"cuda:{k}" for k in range(8)))
    also_eight = run("srv", device="cuda:0", pool_devices="cuda:0,cuda:1,cuda:2,cuda:3,cuda:4,cuda:5,cuda:6,cuda:7")
    assert accelerators_of_runs([eight, also_eight]) == {"accelerators_per_node": 8}
    assert accelerators_of_runs([run("cpu", device="cpu", pool_devices="cpu:2")]) == {"accelerators_per_node": 0}
    assert accelerators_of_runs([run("one", device="cuda:0")]) == {"accelerators_per_node": 1}  # no pool
    with pytest.raises(CliError, match="different numbers of accelerators"):
        accelerators_of_runs([eight, run("two", device="cuda:0", pool_devices="cuda:0,cuda:1")])


def test_a_rate_with_many_digits_is_applied_as_loadgen_prints_it():
    """The detail log prints 6 significant digits: 0.0872493 is the 0.08724931999550634 that was
    set (a benchmark's computed --qps made every run INVALID), 0.0873 is not."""
    from ssdbench.loadgen.settings import effective_mismatches

    want = {"effective_target_qps": 0.08724931999550634}
    assert effective_mismatches(want, {"effective_target_qps": "0.0872493"}) == []
    assert effective_mismatches(want, {"effective_target_qps": "0.0873"})
    assert effective_mismatches({"effective_target_qps": 2000.0}, {"effective_target_qps": "2000"}) == []


def test_gpu_workers_get_their_share_of_the_cores(monkeypatch):
    from ssdbench.loadgen import device_pool as I

    monkeypatch.setattr(I, "read_topology", lambda cpus: None)
    assert I.worker_cores(["cuda:0", "cuda:1"], [0, 1, 2, 3]) == [[0, 1], [2, 3]]
    # more GPUs than cores: they share every core (a GPU worker mostly waits on its device)
    assert I.worker_cores(["cuda:0", "cuda:1", "cuda:2"], [0, 1]) == [[0, 1]] * 3
    assert I.worker_cores(["cpu", "cpu"], [0, 1, 2]) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="--instances 3 needs at least 3 cores"):
        I.worker_cores(["cpu"] * 3, [0, 1])
