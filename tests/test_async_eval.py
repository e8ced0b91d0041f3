"""Asynchronous evaluation (`train.async_eval`): the background scorer gives the synchronous
scores; a run with and without --eval-sync reaches the same evaluations (deterministic CPU mode)
while the asynchronous one waits less for scores; a run stops at the first score past the target;
a checkpoint taken with a score in flight is scored on resume; two ranks stop at the same step.
"""

import json
import os
import signal
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ssdbench.eval.coco_scoring import coco_stats
from ssdbench.train.async_eval import Scorer, array_to_results, results_to_array
from ssdbench.train.checkpoint import last_checkpoint, load_checkpoint
from ssdbench.train.config import resolve_config
from ssdbench.train.trainer import run_training


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ssdbench.data.synth import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("data") / "coco", train_images=24, val_images=12,
                               workers=1, progress=False)


def _gt_results(data, jitter: float):
    """COCO results near the validation ground truth (so the stats are not all zero)."""
    gt = json.loads((data / "annotations" / "instances_val2017.json").read_text())
    rng = np.random.default_rng(0)
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
             "bbox": [v + float(rng.normal(0, jitter)) for v in a["bbox"]]} for a in gt["annotations"]], gt


def test_results_array_round_trip_is_exact(data):
    results, _ = _gt_results(data, 3.0)
    assert array_to_results(results_to_array(results)) == results
    assert results_to_array([]).shape == (0, 7) and array_to_results(np.zeros((0, 7))) == []


def test_background_scores_equal_synchronous_ones(data):
    results, gt = _gt_results(data, 3.0)
    ann, ids = data / "annotations" / "instances_val2017.json", [im["id"] for im in gt["images"]]
    expected = coco_stats(ann, results, image_ids=ids)
    assert 0.05 < expected[0] < 1.0
    background, inline = Scorer(ann, ids, background=True), Scorer(ann, ids, background=False)
    try:
        for scorer in (background, inline):
            scorer.submit(3, results_to_array(results))
            scorer.submit(5, results_to_array(results[: len(results) // 2]))
        assert [e for e, _a in background.pending()] == [3, 5]  # in flight until polled
        scores = background.wait()
        assert [s.epoch for s in scores] == [3, 5] and background.pending() == [] and background.poll() == []
        assert [s.stats for s in scores] == [s.stats for s in inline.poll()]
        np.testing.assert_array_equal(scores[0].stats, expected)
    finally:
        background.close()


def test_a_dead_worker_falls_back_to_scoring_in_process(data):
    results, gt = _gt_results(data, 3.0)
    ann, ids = data / "annotations" / "instances_val2017.json", [im["id"] for im in gt["images"]]
    scorer = Scorer(ann, ids, background=True)
    try:
        scorer._worker.process.kill()
        scorer._worker.process.join(10)
        with pytest.warns(RuntimeWarning, match="COCO scoring process ended"):
            scorer.submit(1, results_to_array(results))  # the pipe is broken: scored here at once
        scores = scorer.wait()
        np.testing.assert_array_equal(scores[0].stats, coco_stats(ann, results, image_ids=ids))
    finally:
        scorer.close()


# ---------------------------------------------------------------- training runs
def _cfg(data, out, **overrides):
    values = {"data": str(data), "model": "ssd128_mini", "batch_size": 4, "epochs": 3, "lr": 0.015,
              "warmup_steps": 2, "decay_epochs": (3,), "eval_every": 1, "workers": 0, "log_every": 2,
              "deterministic": True, "max_samples": 1, "out": str(out), "dataset_name": "synthetic",
              "steps_per_epoch": 4, **overrides}
    return resolve_config("demo", overrides=values)


def _mllog(out) -> list[dict]:
    lines = (out / "mlperf_log.txt").read_text().splitlines()
    return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in lines if ":::MLLOG" in line]


@pytest.fixture(scope="module")
def sync_and_async(data, tmp_path_factory):
    runs = {}
    for mode in ("sync", "async"):
        out = tmp_path_factory.mktemp(mode)
        runs[mode] = (out, run_training(_cfg(data, out, eval_sync=mode == "sync"), progress=False))
    return runs


def test_sync_and_async_runs_reach_the_same_evaluations(sync_and_async):
    (_, sync), (out, asyn) = sync_and_async["sync"], sync_and_async["async"]
    assert (sync["eval_mode"], asyn["eval_mode"]) == ("sync", "async")
    assert [e["epoch"] for e in sync["eval_history"]] == [1, 2, 3]
    assert asyn["eval_history"] == sync["eval_history"]  # bit-identical stats, same epochs
    assert sync["status"] == asyn["status"] == "finished" and asyn["steps"] == sync["steps"]
    # Synchronous: training waited for every score; asynchronous: only for what was still running
    # at the end (the last evaluation), less than the scores took in all.
    assert sync["score_wait_s"] >= sync["score_s"] > 0
    assert asyn["score_wait_s"] < asyn["score_s"], asyn
    evals = [e for e in _mllog(out) if e["key"] == "eval_accuracy"]
    assert [e["metadata"]["epoch_num"] for e in evals] == [1, 2, 3]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [set(r) for r in metrics if r["kind"] == "eval"] == [{"kind", "epoch", "map", "stats", "per_class", "time"}] * 3


@pytest.mark.parametrize("eval_sync", [False, True])
def test_the_run_stops_at_the_first_score_past_the_target(sync_and_async, data, tmp_path, eval_sync):
    history = sync_and_async["sync"][1]["eval_history"]
    maps = [e["map"] for e in history]
    target = max(maps)
    first = next(i for i, m in enumerate(maps) if m >= target)  # the first evaluation reaching it
    handler = signal.getsignal(signal.SIGTERM)
    summary = run_training(_cfg(data, tmp_path, eval_sync=eval_sync, target_map=target), progress=False)
    assert signal.getsignal(signal.SIGTERM) is handler  # the run put the caller's handler back
    assert summary["status"] == "success" and summary["reached_target"]
    assert summary["eval_history"] == history[: first + 1]
    events = _mllog(tmp_path)
    keys = [e["key"] for e in events]
    stop = keys.index("run_stop")
    assert keys.count("run_stop") == 1 and events[stop]["metadata"]["status"] == "success"
    evals = [e for e in events[:stop] if e["key"] == "eval_accuracy"]
    assert evals[-1]["metadata"]["epoch_num"] == history[first]["epoch"] and evals[-1]["value"] >= target
    assert "eval_accuracy" not in keys[stop:]
    if eval_sync:  # the synchronous run stops right after the evaluation, at the epoch's end
        assert summary["epochs"] == history[first]["epoch"]


def test_a_score_in_flight_is_checkpointed_and_scored_on_resume(sync_and_async, data, tmp_path, monkeypatch):
    """Scores never arrive in the first segment (as if scoring were slow); a signal early in epoch 2
    checkpoints the pending epoch-1 evaluation; the resumed run scores it: the same evaluations."""
    from ssdbench.dist import init_distributed
    from ssdbench.train import async_eval
    from ssdbench.train.config import TrainSetup, resolve_for_device
    from ssdbench.train.run_folder import open_run
    from ssdbench.train.trainer import Trainer

    reference = sync_and_async["sync"][1]["eval_history"]
    monkeypatch.setattr(async_eval.Scorer, "poll", lambda self: [])
    cfg = _cfg(data, tmp_path)
    setup = TrainSetup(resolve_for_device(cfg, "cpu")[0], init_distributed("cpu"))
    with open_run(setup) as start:
        trainer = Trainer(setup, start, progress=False)

        def beat():
            trainer.stop_requested = trainer.state.step >= 5  # one step into epoch 2

        trainer.watchdog.beat = beat
        assert trainer.run()["status"] == "interrupted"
    state = load_checkpoint(last_checkpoint(tmp_path / "checkpoints"))["state"]  # weights_only=True
    assert [p["epoch"] for p in state["pending_evals"]] == [1] and state["eval_history"] == []
    assert state["pending_evals"][0]["results"].dtype == torch.float64
    monkeypatch.undo()
    summary = run_training(cfg, progress=False)
    assert summary["resumed"] and summary["eval_history"] == reference
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in metrics if r["kind"] == "eval"] == [1, 2, 3]  # each evaluation once


# ---------------------------------------------------------------- two ranks agree
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """Rank 0 learns at step 4 that a score reached the target; with 3-step windows every rank
    must stop at step 6, the end of the window."""
    from test_loop import _batches, _parts

    from ssdbench import dist as D
    from ssdbench.train.loop import EpochHooks, StepParts, TrainState, train_one_epoch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    D.init_distributed("cpu", timeout_s=60)
    try:
        parts: StepParts = _parts()
        state = TrainState()
        hooks = EpochHooks(reduce=lambda v: D.all_reduce_sum(v, torch.device("cpu")),
                           target_reached=lambda: rank == 0 and state.step >= 4)
        reason = train_one_epoch(parts, _batches(12), state, log_every=3, hooks=hooks)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"reason": reason, "step": state.step}, f)
        torch.distributed.barrier()
    finally:
        # End without tearing gloo down: on a loaded machine its threads can outlive the peer that
        # hosts the store and abort the process at exit (the results are written already).
        os._exit(0)


def test_every_rank_learns_the_target_at_the_same_step(tmp_path):
    mp.spawn(_stop_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results == [{"reason": "target", "step": 6}] * 2
