"""Multi-instance CPU serving: core sets, pinned instance processes, the same detections as one backend."""

import os

import pytest
import torch

from ssdbench.loadgen.instances import InstancePool, split_cores


def test_split_cores_contiguous_and_balanced():
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
    from ssdbench.infer.backends import make_backend
    from ssdbench.model.ssd import build_model

    torch.manual_seed(0)
    model = build_model("ssd128_mini").eval()
    weights = tmp_path / "w.pt"
    torch.save({"model": model.state_dict(), "model_name": "ssd128_mini"}, weights)
    kwargs = {"name": "eager", "model_name": "ssd128_mini", "weights": str(weights), "dtype": "fp32"}
    cores = [[c] for c in sorted(os.sched_getaffinity(0))[:2]]
    pool = InstancePool(kwargs, 2, cores=cores, warmup=[(1, 1)])
    try:
        assert _cores_of_instance(pool) == cores
        assert all(d["backend"] == "eager" and d["dtype"] == "fp32" for d in pool.describe)
        x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
        ref = make_backend("eager", "ssd128_mini", model=model, dtype="fp32").predict(x)
        for _ in range(2):  # both instances (the pool hands them out in turn)
            got = pool.predict(x)
            assert got.counts.tolist() == ref.counts.tolist()
            assert torch.equal(got.labels, ref.labels)
            assert (got.boxes - ref.boxes).abs().max() < 1e-5
    finally:
        pool.close()


def test_an_instance_that_cannot_start_is_one_error(tmp_path):
    kwargs = {"name": "eager", "model_name": "ssd128_mini", "weights": str(tmp_path / "missing.pt")}
    with pytest.raises(ValueError, match=r"model instance on cores \[\d+\] failed to start: .*missing\.pt"):
        InstancePool(kwargs, 1, cores=[[min(os.sched_getaffinity(0))]])


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
