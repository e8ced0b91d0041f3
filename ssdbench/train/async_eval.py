"""Evaluation during training: inference on the training devices, COCO scoring beside training.

At an eval epoch the trainer runs the network over the validation set on its own devices
(`infer_results`, sharded over ranks, gathered on rank 0), then hands the COCO results to a
`Scorer`. With ``background=True`` the scorer computes the 12 COCO stats in a separate process
while training goes on (the published systems overlap scoring with training the same way;
benchmark.md §8: "scoring asynchronous"); the trainer polls it and stops the run as soon as a
score reaches the target. ``background=False`` (``--eval-sync``) scores at once, in the
training process: training waits, as the MLPerf reference does (train.py:387-397).

Why a process and not a thread: COCO scoring is CPU-bound Python and C++ that would hold the
interpreter lock against the training loop. The worker is a `spawn`ed process (no copy of the
trainer's CUDA context, threads or data-loader workers), started once per run with the ground
truth loaded once; it ignores SIGINT (the trainer handles Ctrl-C and SIGTERM, checkpoints and
exits; the worker ends when its pipe closes). Results travel as a float64 (K, 7) array file
(`results_to_array`) so that sending never blocks on a busy worker. Until its score arrives,
every submitted evaluation stays in the trainer's memory (`Scorer.pending`), so a checkpoint
records it and a resumed run scores it. If the worker dies, the remaining scores are computed
in the training process, with a warning.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssdbench.workers import Worker, WorkerDied, recv_message, send_message

RESULT_COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")


@dataclass
class Score:
    """One finished evaluation: ``stats`` are the 12 COCO stats (AP@[.5:.95] first)."""

    epoch: int
    stats: list[float]
    score_s: float  # seconds the COCO scoring took
    details: Any = None  # `eval.per_class.CocoDetails`: per-class AP, PR curves, confusion matrix


def results_to_array(results: list[dict]) -> np.ndarray:
    """COCO results -> float64 (K, 7) in `RESULT_COLUMNS` order (exact for ids below 2**53)."""
    if not results:
        return np.zeros((0, 7), np.float64)
    return np.asarray([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in results], np.float64)


def array_to_results(array: np.ndarray) -> list[dict]:
    """The inverse of `results_to_array`."""
    return [{"image_id": int(row[0]), "category_id": int(row[6]), "bbox": [float(v) for v in row[1:5]],
             "score": float(row[5])} for row in np.asarray(array, np.float64).reshape(-1, 7)]


def score_array(gt, array: np.ndarray, image_ids, backend: str) -> list[float]:
    """The 12 COCO stats (`eval.coco_scoring.coco_stats`) of a results array."""
    from ssdbench.eval.coco_scoring import coco_stats

    return [float(v) for v in coco_stats(gt, array_to_results(array), image_ids=image_ids, backend=backend)]


def score_details(gt, array: np.ndarray, image_ids, backend: str):
    """(the 12 COCO stats, `eval.per_class.CocoDetails`) of a results array (`eval.analysis.analyze`)."""
    from ssdbench.eval.analysis import analyze

    details = analyze(gt, array_to_results(array), image_ids=image_ids, backend=backend)
    return [float(v) for v in details.stats], details


def _serve(conn, ann_file: str, image_ids: list[int], backend: str) -> None:
    """The worker: ("score", epoch, path) -> ("done", epoch, stats, seconds) | ("error", epoch, text)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    from ssdbench.eval.coco_scoring import ground_truth_dict

    gt = ground_truth_dict(ann_file)  # parsed once per run
    while True:
        try:
            message, _ = recv_message(conn)
        except (EOFError, OSError):  # the trainer is gone
            return
        if message is None:
            return
        _kind, epoch, path = message
        t0 = time.perf_counter()
        try:
            stats, details = score_details(gt, np.load(path), image_ids, backend)
            reply = ("done", epoch, stats, time.perf_counter() - t0, details)
        except Exception as exc:  # noqa: BLE001  reported to the trainer, which raises it
            reply = ("error", epoch, f"{type(exc).__name__}: {exc}")
        finally:
            Path(path).unlink(missing_ok=True)
        try:
            send_message(conn, reply)
        except (BrokenPipeError, OSError):
            return


class Scorer:
    """COCO scoring of submitted evaluations, in submission order.

    ``ann_file``: the validation annotation file; ``image_ids``: the evaluated images;
    ``background``: score in a worker process (False: at once, inside `submit`). `submit` hands
    over one evaluation; `poll` returns the finished ones without waiting, `wait` all of them;
    `pending` lists those not scored yet (for checkpoints); `close` ends the worker (an
    `ssdbench.workers.Worker`: spawned, stopped by a None message, then SIGTERM, then SIGKILL).
    """

    def __init__(self, ann_file, image_ids, backend: str = "faster", background: bool = True):
        self.ann_file, self.image_ids, self.backend = str(ann_file), [int(i) for i in image_ids], backend
        self.background = background
        self._pending: dict[int, np.ndarray] = {}  # epoch -> results, in submission order
        self._done: list[Score] = []
        self._worker: Worker | None = None
        self._tmp = None
        if background:
            self._start()

    def _start(self) -> None:
        self._tmp = tempfile.mkdtemp(prefix="ssdbench-eval-")
        self._worker = Worker(_serve, (self.ann_file, self.image_ids, self.backend), name="ssdbench-coco-scorer")
        self._worker.start()

    def submit(self, epoch: int, array: np.ndarray) -> None:
        """Score the float64 (K, 7) results of the evaluation after epoch ``epoch``."""
        array = np.asarray(array, np.float64).reshape(-1, 7)
        self._pending[int(epoch)] = array
        if self._worker is None:
            self._score_here(int(epoch))
            return
        path = os.path.join(self._tmp, f"epoch_{int(epoch):04d}.npy")
        np.save(path, array)
        try:
            self._worker.send(("score", int(epoch), path))
        except WorkerDied:  # the worker is gone
            self._worker_lost()

    def _score_here(self, epoch: int) -> None:
        t0 = time.perf_counter()
        stats, details = score_details(self.ann_file, self._pending.pop(epoch), self.image_ids, self.backend)
        self._done.append(Score(epoch, stats, time.perf_counter() - t0, details))

    def _receive(self, timeout: float | None) -> bool:
        """Take one reply from the worker within ``timeout`` seconds (None: until one comes)."""
        if not self._worker.poll(timeout):
            return False
        (kind, epoch, *rest), _ = self._worker.receive()
        if kind == "error":
            raise RuntimeError(f"COCO scoring of the epoch {epoch} evaluation failed: {rest[0]}")
        self._pending.pop(epoch, None)
        self._done.append(Score(epoch, rest[0], rest[1], rest[2] if len(rest) > 2 else None))
        return True

    def _worker_lost(self) -> None:
        """The worker died: score what is left here, from now on."""
        code = self._worker.exitcode
        warnings.warn(f"the COCO scoring process ended (exit code {code}); scoring "
                      f"{len(self._pending)} evaluation(s) in the training process", RuntimeWarning, stacklevel=3)
        self._shutdown()
        for epoch in list(self._pending):
            self._score_here(epoch)

    def poll(self) -> list[Score]:
        """The evaluations scored since the last call, oldest first; never waits."""
        if self._worker is not None:
            try:
                while self._pending and self._receive(0):
                    pass
                lost = bool(self._pending) and not self._worker.alive() and not self._worker.poll(0)
            except WorkerDied:
                lost = True
            if lost:
                self._worker_lost()
        done, self._done = self._done, []
        return done

    def wait(self) -> list[Score]:
        """Every submitted evaluation's score (waits for the pending ones), oldest first."""
        while self._pending and self._worker is not None:
            try:
                if not self._receive(1.0) and not self._worker.alive():
                    self._worker_lost()
            except WorkerDied:
                self._worker_lost()
        return self.poll()

    def pending(self) -> list[tuple[int, np.ndarray]]:
        """(epoch, results) of the evaluations not scored yet, oldest first."""
        return list(self._pending.items())

    def _shutdown(self) -> None:
        if self._worker is not None:
            self._worker.ask_to_stop()
            self._worker.stop(grace_s=5.0)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._worker = self._tmp = None

    def close(self) -> None:
        """End the worker; evaluations still pending are dropped (`pending` first to keep them)."""
        self._shutdown()
        self._pending.clear()


def infer_results(model, loader, dataset, device, distributed: bool, progress: bool,
                  autocast_dtype=None) -> np.ndarray | None:
    """The network over the validation loader (this rank's shard) -> COCO results of every image,
    gathered on rank 0 as a float64 (K, 7) array (`results_to_array`); None on other ranks.
    The model is left in eval mode."""
    from ssdbench import dist as D
    from ssdbench.eval.evaluate import merge_shards, predict_shard

    model.eval()
    shard = predict_shard(model, loader, dataset.label_to_cat_id, device, autocast_dtype,
                          progress and (not distributed or D.is_main()))
    shards = D.gather_object(shard, dst=0) if distributed else [shard]
    if shards is None:
        return None
    return results_to_array(merge_shards(shards))


@dataclass(frozen=True)
class EvalContext:
    """What a run segment's evaluations work with besides the network: the MLPerf log
    (`mllog.MLPerfLogger`), the run folder (`run_folder.RunFolder`), the counters
    (`loop.TrainState`), rank 0's printer, the watchdog (paused while evaluating) and whether
    progress is shown."""

    mllog: Any
    folder: Any
    state: Any
    say: Any
    watchdog: Any
    show_progress: bool


class Evaluator:
    """The evaluations of one run segment, for `train.trainer.Trainer`.

    `run(epoch)` (every rank, at an eval epoch): BN statistics averaged over ranks, inference,
    results submitted to rank 0's `Scorer`; `decide()` (every rank, collective): records the
    scores that have arrived and tells every rank whether one reached the target; `poll()`
    (rank 0, between steps, no collective: the training loop reduces its answer at window ends);
    `drain()` (every rank, collective): waits for every pending score; `records()`: the pending
    evaluations as a checkpoint stores them (`loop.TrainState.pending_evals`).

    A score is recorded in submission order: MLPerf ``eval_accuracy`` and ``eval_stop`` with
    the epoch it belongs to, metrics.jsonl, ``state.eval_history``; after the first score that
    reaches the target, later ones are dropped (the run is over). ``state.eval_wait_s`` adds up
    the seconds training waited: BN averaging, inference, and scores it had to wait for (those
    alone: ``state.score_wait_s``); ``state.score_s`` the seconds the recorded scores took.
    """

    def __init__(self, setup, data, net, amp_dtype, context: EvalContext):
        """``setup``: `config.TrainSetup` (config and launch); ``data``: `build.Data`; ``net``: the
        bare network; ``amp_dtype``: inference autocast dtype (None: fp32)."""
        cfg, launch, state = setup.cfg, setup.launch, context.state
        self.cfg, self.launch, self.data, self.net, self.amp_dtype = cfg, launch, data, net, amp_dtype
        self.mllog, self.folder, self.state = context.mllog, context.folder, state
        self.say, self.watchdog, self.show_progress = context.say, context.watchdog, context.show_progress
        self.last_details = None  # the newest recorded score's `CocoDetails` (pictures, summary)
        self.on_score = None  # called with each recorded `Score` (TensorBoard)
        self.on_results = None  # rank 0: called with (epoch, step, results array) after inference
        self.scorer = None
        if launch.is_main:
            self.scorer = Scorer(data.val_set.ann_file, data.val_set.ids, background=not cfg.eval_sync)
            for record in state.pending_evals:  # evaluations a checkpoint recorded unscored
                self.scorer.submit(record["epoch"], record["results"].numpy())
        state.pending_evals = []

    def run(self, epoch: int) -> None:
        """Evaluate the network as trained after epoch ``epoch`` (every rank)."""
        from ssdbench.train.build import average_bn_stats

        t0 = time.perf_counter()
        self.mllog.eval_start(epoch)
        with self.watchdog.paused():
            average_bn_stats(self.net, self.launch.world_size)  # benchmark.md §6
            array = infer_results(self.net, self.data.val_loader, self.data.val_set, self.launch.device,
                                  self.launch.distributed, self.show_progress, self.amp_dtype)
            if self.on_results is not None and array is not None:
                self.on_results(epoch, self.state.step, array)
            if self.scorer is not None:
                t_score = time.perf_counter()
                self.scorer.submit(epoch, array)  # --eval-sync: scored here, training waits
                self.state.score_wait_s += time.perf_counter() - t_score
        self.state.eval_wait_s += time.perf_counter() - t0

    def poll(self) -> bool:
        """Rank 0: record the scores that have arrived; True once one reached the target."""
        if self.scorer is not None and not self.state.reached_target:
            for score in self.scorer.poll():
                self._record(score)
        return self.state.reached_target

    def _agree(self, reached: bool) -> bool:
        from ssdbench import dist as D

        self.state.reached_target = bool(D.broadcast_object(reached, src=0))
        return self.state.reached_target

    def decide(self) -> bool:
        """Every rank: whether a score recorded so far reached the target (rank 0 decides)."""
        return self._agree(self.poll())

    def drain(self) -> bool:
        """Every rank: wait for every pending score, record them; whether one reached the target."""
        t0 = time.perf_counter()
        if self.scorer is not None and not self.state.reached_target:
            with self.watchdog.paused():
                for score in self.scorer.wait():
                    self._record(score)
        self.state.eval_wait_s += time.perf_counter() - t0
        self.state.score_wait_s += time.perf_counter() - t0
        return self._agree(self.state.reached_target)

    def _record(self, score: Score) -> None:
        if self.state.reached_target:
            return  # the run already ended at an earlier score
        value, epoch = float(score.stats[0]), score.epoch
        self.state.score_s += score.score_s
        self.mllog.eval_accuracy(value, epoch)
        self.mllog.eval_stop(epoch)
        self.state.eval_history.append({"epoch": epoch, "map": value, "stats": score.stats})
        per_class = _per_class(score)
        self.folder.log_metrics({"kind": "eval", "epoch": epoch, "map": value, "stats": score.stats,
                                 **({"per_class": per_class} if per_class is not None else {})})
        self.last_details = score.details if score.details is not None else self.last_details
        if self.on_score is not None:
            self.on_score(score)
        target = self.cfg.target_map
        self.state.reached_target = target is not None and value >= target
        self.say(f"epoch {epoch}: mAP {value:.4f}" + (f" (target {target})" if target is not None else ""))

    def per_class(self) -> list[dict] | None:
        """The newest recorded score's per-class rows (`eval.per_class.per_class_rows`), if any."""
        if self.last_details is None:
            return None
        from ssdbench.eval.per_class import per_class_rows

        return per_class_rows(self.last_details)

    def write_pictures(self, folder) -> list:
        """The newest score's pictures into ``folder`` (`eval.plots.write_eval_pictures`)."""
        if self.last_details is None:
            return []
        from ssdbench.eval.plots import write_eval_pictures

        return write_eval_pictures(self.last_details, folder)

    def records(self) -> list[dict]:
        """The evaluations not scored yet, as `TrainState.pending_evals` holds them."""
        import torch

        if self.scorer is None or self.state.reached_target:
            return []
        return [{"epoch": e, "results": torch.from_numpy(a)} for e, a in self.scorer.pending()]

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()


def _per_class(score: Score) -> list[dict] | None:
    """The per-class rows of a score (`eval.per_class.per_class_rows`), None without details."""
    if score.details is None:
        return None
    from ssdbench.eval.per_class import per_class_rows

    return per_class_rows(score.details)
