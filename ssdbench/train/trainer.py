"""Training runs, config to summary: starts, trains, evaluates, logs; one run or a series of them.

`ssdbench train` and `ssdbench demo` resolve their config once (`config.set_up`: the device picked,
every "auto" chosen for it) and hand the `TrainSetup` to `train_runs` / `train_run`;
``run_training(cfg)`` does both for one run, under any launcher.
The MLPerf clock (benchmark.md §6): ``run_start`` after the model, data and logger are set up, ``run_stop``
as soon as a score reaches the target (or the epochs run out and every pending score is in);
time to train is the wall time in between, summed over resumed segments (a resumed run is not a
valid MLPerf timing, and its summary says so). Evaluation (`train.async_eval`): inference at
eval epochs on the training devices, COCO scoring in a background process while training goes
on (``--eval-sync``: training waits for it); every rank learns that the target was reached at
the same step.

The pieces, in order: `run_folder.open_run` locks the run folder, finds the checkpoint to resume
and compares its config with this one, all before anything is built, so a finished run is not
built again; `Trainer.__init__` builds everything a run segment needs and restores the checkpoint;
`Trainer.run` is the epoch loop (train, evaluate at eval epochs, checkpoint after every epoch);
`Trainer.summary` is the result; `train_run` unlocks the folder. A run stopped by SIGTERM/SIGINT
checkpoints and ends with status "interrupted" (the command exits with `errors.PREEMPTED_EXIT`).
`train_runs` trains ``--runs N`` runs one after the other (seeds seed + 1000 i, folders OUT/run_i).
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ssdbench.dist import Watchdog, all_reduce_sum, join_group, shutdown
from ssdbench.errors import PREEMPTED_EXIT, CliError
from ssdbench.progress import Progress
from ssdbench.train.async_eval import EvalContext, Evaluator
from ssdbench.train.build import Data, build_data, build_parts, set_determinism
from ssdbench.train.checkpoint import (
    RunObjects,
    describe_changes,
    hyperparameters,
    last_checkpoint,
    restore_hyperparameters,
    restore_training,
    save_training,
)
from ssdbench.train.config import TrainConfig, TrainSetup, set_up
from ssdbench.train.loop import SIGNAL, TARGET, EpochHooks, NonFiniteLossError, TrainState, train_one_epoch
from ssdbench.train.run_folder import (
    RunStart,
    default_run_dir,
    finished_summary,
    open_run,
    remove_failed_start,
)


def run_training(cfg: TrainConfig, progress: bool = True, accept_changes: bool = False) -> dict:
    """Train with `cfg` under the current launcher; returns the summary (see `Trainer.summary`).

    `config.set_up` then `train_run`. ``progress``: show training progress on rank 0
    (`ssdbench.progress.Progress`: a bar on a terminal, a plain line per metrics window otherwise).
    A run folder whose run already finished is not trained again: its summary.json is returned.
    ``accept_changes``: resume a checkpoint whose config differs from ``cfg`` and apply the
    differences (`train.checkpoint`).
    """
    setup = set_up(cfg)
    setup.print_note()
    return train_run(setup, progress, accept_changes)


def train_run(setup: TrainSetup, progress: bool = True, accept_changes: bool = False) -> dict:
    """One run of ``setup`` (config resolved, device picked): joins the process group, locks the run
    folder (`run_folder.open_run`), trains; the folder is unlocked here, and only here, at the end."""
    launch = join_group(setup.launch, setup.cfg.dist_timeout_s)
    start, before = None, None
    try:
        start = open_run(setup, accept_changes)
        if start.finished(setup.cfg):
            return finished_summary(start, launch.is_main)
        before = set(start.folder.path.iterdir()) if launch.is_main else None
        trainer = Trainer(setup, start, progress)
        before = None  # started: from here on the folder is the run's record, failed or not
        return trainer.run()
    finally:
        if start is not None:
            start.release()
            if before is not None:  # the start failed (bad --data, too few images, ...)
                remove_failed_start(start.folder.path, before)
        shutdown()


# ---------------------------------------------------------------- several runs (`--runs N`)
RUN_SEED_STRIDE = 1000  # run i trains with seed + 1000 i; its ranks use that + rank (up to 1000 ranks)


def run_configs(cfg: TrainConfig, runs: int, world_size: int = 1) -> list[TrainConfig]:
    """The configs of ``runs`` runs of ``cfg``: seeds seed + 1000 i (distinct, also per rank), folders
    OUT/run_i (OUT: --out, else runs/<preset>-<time>). ValueError unless runs >= 1."""
    if runs < 1:
        raise ValueError(f"--runs {runs}: must be >= 1")
    if cfg.out is None and world_size > 1:  # ranks must agree on the folders before they meet
        raise ValueError("--runs under a launcher needs --out (the folder of the runs)")
    root = cfg.out or str(default_run_dir(cfg.preset))
    return [replace(cfg, seed=cfg.seed + RUN_SEED_STRIDE * i, out=str(Path(root) / f"run_{i}"))
            for i in range(runs)]


def train_runs(setup: TrainSetup, runs: int = 1, accept_changes: bool = False) -> list[str | None]:
    """`ssdbench train`: one run, or ``runs`` runs one after the other (`run_configs`), each result
    printed by rank 0, a series followed by the runs' olympic mean. A run interrupted by a signal
    ends the series. Returns the runs' statuses (`exit_status` makes them the exit status)."""
    if runs == 1:
        summary = train_run(setup, accept_changes=accept_changes)
        if setup.launch.is_main and summary:
            print_result(summary)
        return [summary.get("status")]
    configs = run_configs(setup.cfg, runs, setup.launch.world_size)
    statuses = []
    for i, run_cfg in enumerate(configs):
        if setup.launch.is_main:
            print(f"ssdbench train: run {i + 1}/{runs}, seed {run_cfg.seed}, folder {run_cfg.out}", flush=True)
        summary = train_run(replace(setup, cfg=run_cfg), accept_changes=accept_changes)
        statuses.append(summary.get("status"))
        if setup.launch.is_main and summary:
            print_result(summary)
        if summary.get("status") == "interrupted":
            break
    if setup.launch.is_main:
        _print_series([c.out for c, s in zip(configs, statuses) if s != "interrupted"])
    return statuses


def _print_series(done: list[str]) -> None:
    from ssdbench.train.score import format_table, olympic_mean, read_run

    if done:
        results = [read_run(out) for out in done]
        print(format_table(results, olympic_mean(results)))
    print(f"package them: ssdbench package --system NAME --org ORG {' '.join(done)}")


def exit_status(statuses: list[str | None]) -> int:
    """`errors.PREEMPTED_EXIT` when a run was interrupted (checkpointed: the same command resumes),
    0 when every run succeeded or finished (None: a rank other than 0 of a finished run), else 1."""
    if "interrupted" in statuses:
        return PREEMPTED_EXIT
    return 0 if all(s in ("success", "finished", None) for s in statuses) else 1


def print_result(summary: dict) -> None:
    """A run's result as the commands print it: per-class AP (if scored), the summary line, the folder."""
    if summary.get("per_class"):
        from ssdbench.eval.per_class import format_table

        print(f"per-class AP (epoch {summary['eval_history'][-1]['epoch']}):")
        print(format_table(summary["per_class"]))
    print(f"result: {summary['summary']}")
    print(f"run folder: {summary['run_dir']} (summary.json, metrics.jsonl, plots/, checkpoints/, "
          f"{summary['mlperf_log'].rsplit('/', 1)[-1]})")


# ---------------------------------------------------------------- the run
class Trainer:
    """One run segment on one rank: `__init__` builds and restores everything, `run` trains.

    ``setup``: the resolved config and launch (`config.set_up`); ``start``: from `run_folder.open_run`,
    whose lock the caller releases. Attributes: ``cfg``, ``launch``,
    ``folder`` (`RunFolder`), ``state`` (`TrainState`), ``mllog``, ``data`` (`build.Data`),
    ``parts`` (`loop.StepParts`), ``net`` (the bare network), ``division`` (as logged),
    ``watchdog`` and ``stop_requested`` (set by SIGTERM/SIGINT; polled at step boundaries).
    """

    def __init__(self, setup: TrainSetup, start: RunStart, progress: bool = True):
        from ssdbench.train.mllog import MLPerfLogger

        cfg, launch = setup.cfg, setup.launch
        if cfg.tensorboard and launch.is_main:
            from ssdbench.train.tensorboard import require_tensorboard

            require_tensorboard()  # one line before anything is built
        self.setup, self.cfg, self.launch, self.show_progress = setup, cfg, launch, progress and launch.is_main
        self.folder, self.state = start.folder, start.state
        if start.payload is None and self.folder.metrics_path.exists() and self.folder.first_write_interrupted():
            self.say(f"note: {self.folder.path} holds a run killed while writing its first checkpoint; "
                     "starting it afresh")
            self.folder.clear()
        if start.payload is None and self.folder.metrics_path.exists():
            raise ValueError(f"run folder {self.folder.path} already holds a run without a checkpoint; "
                             "choose another --out")
        self.mllog = MLPerfLogger(self.folder.mlperf_log_path(self.state.segments), launch.rank)
        self.mllog.init_start()
        set_determinism(cfg)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
        self.data = build_data(cfg, launch)
        self.parts, self.net = build_parts(cfg, launch, self.data.num_classes, self.data.iters_per_epoch,
                                           self.data.warmup_iters)
        torch.manual_seed(cfg.seed + launch.rank)  # per-rank seeds (benchmark.md §6)
        if start.payload is not None:
            self._resume(start)
        if launch.is_main:
            self.folder.write_json("config.json", cfg.to_dict())  # what runs from here on
        if cfg.division(self.data.name) == "closed" and self.data.warmup_iters < 1:
            raise ValueError(f"warmup: {self.data.warmup_iters} iterations; the 1.1.0 closed ruleset needs at "
                             "least 1 (opt_learning_rate_warmup_steps >= 1): raise --warmup-epochs or --warmup-steps")
        self.division = self.mllog.setup(mllog_config(cfg, self.data, launch.world_size), self.net)
        self.stop_requested = False
        self.watchdog = Watchdog(0 if launch.world_size == 1 else cfg.dist_timeout_s, launch.rank)
        self.evaluator: Evaluator | None = None  # started by `run`
        self.tensorboard = None  # `train.tensorboard.TensorBoardLog` (rank 0, --tensorboard), opened by `run`
        self._t_start: float | None = None  # the MLPerf clock of this segment, None once stopped

    def _resume(self, start: RunStart) -> None:
        fresh = hyperparameters(self.parts) if start.changes else None  # this config's values
        restore_training(start.payload, self.net, self.parts, self.data.train_loader.sampler,
                         self.launch.rank, self.launch.world_size, start.checkpoint)
        self.folder.truncate_metrics_after(self.state.step, self.state.epoch,
                                           [e["epoch"] for e in self.state.pending_evals])
        self.say(f"resuming {start.checkpoint}: epoch {self.state.epoch} done, step {self.state.step}")
        if fresh is not None:  # accepted changes, applied truthfully (`train.checkpoint`)
            rates = restore_hyperparameters(self.parts, fresh)
            self.folder.log_metrics({"kind": "resume", "step": self.state.step,
                                     "changes": {k: list(v) for k, v in start.changes.items()}})
            self.say(f"applying changed settings from step {self.state.step} on: "
                     f"{describe_changes(start.changes)} (lr now {rates[0]:.3g})")

    def say(self, message: str) -> None:
        if self.launch.is_main:
            print(message, flush=True)

    def run(self) -> dict:
        """Train to the target or the last epoch, or until a signal; returns `summary(status)`.

        status: "success" (target reached), "finished" (epochs ran out), "interrupted" (a signal;
        a mid-epoch checkpoint was written). A non-finite loss raises ValueError ("diverged").
        """
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        context = EvalContext(self.mllog, self.folder, self.state, self.say, self.watchdog, self.show_progress)
        self.evaluator = Evaluator(self.setup, self.data, self.net, self.parts.amp_dtype, context)
        self._open_tensorboard()
        self.watchdog.start()
        self.mllog.init_stop()
        self.mllog.run_start()
        self._t_start, status, done = time.perf_counter(), "running", False
        try:
            status, done = self._epochs(), True
        except NonFiniteLossError as exc:
            status = "diverged"
            last = last_checkpoint(self.folder.checkpoints)
            raise ValueError(f"{exc}; " + (f"last good checkpoint: {last}" if last else
                                           "no checkpoint was written")) from None
        except BaseException:
            status = "failed"
            raise
        finally:
            self.watchdog.stop()
            self.evaluator.close()
            self._finish(status, failing=not done)
            if self.tensorboard is not None:
                self.tensorboard.close()
            for sig, handler in previous.items():  # the caller's handlers again (forked workers inherit them)
                signal.signal(sig, handler)
        return self.summary(status)

    def _open_tensorboard(self) -> None:
        if self.cfg.tensorboard and self.launch.is_main:
            from ssdbench.train.tensorboard import TensorBoardLog

            self.tensorboard = TensorBoardLog(self.folder.path / "tensorboard", self.data.val_set)
            self.evaluator.on_results, self.evaluator.on_score = self.tensorboard.evaluated, self.tensorboard.scored

    def _on_signal(self, signum, _frame) -> None:
        # Slurm preemption sends SIGTERM: finish the step, checkpoint, exit. A second signal kills.
        self.stop_requested = True
        signal.signal(signum, signal.SIG_DFL)
        print(f"rank {self.launch.rank}: {signal.Signals(signum).name} received; checkpointing at the "
              "next step boundary (send again to exit now)", file=sys.stderr, flush=True)

    def _save(self, name: str) -> Path | None:
        # Scores still being computed are recorded in the checkpoint and scored on resume.
        self.state.pending_evals = self.evaluator.records() if self.evaluator is not None else []
        try:
            categories = list(getattr(self.data.train_set, "cat_ids", None) or []) or None
            run = RunObjects(self.net, self.parts, self.state, self.data.train_loader.sampler, self.cfg, categories)
            return save_training(self.folder.checkpoints, name, run, self.launch)
        finally:
            self.state.pending_evals = []

    def _stop_clock(self, success: bool) -> None:
        """run_stop and this segment's time to train, once (before any final checkpoint)."""
        if self._t_start is not None:
            self.state.train_time_s += time.perf_counter() - self._t_start
            self._t_start = None
            self.mllog.run_stop(success)

    def _reached(self, name: str) -> str:
        """A score reached the target: stop the clock first, then checkpoint the finished run."""
        self._stop_clock(success=True)
        with self.watchdog.paused():
            self._save(name)
        return "success"

    def _epochs(self) -> str:
        """Blocks of epochs ending at an eval epoch (MLPerf block_start/stop); a checkpoint per epoch.
        Scores are polled during the epochs (`loop.train_one_epoch`) and decided at each epoch end."""
        cfg, state = self.cfg, self.state
        while state.epoch < cfg.epochs and not state.reached_target:
            first = state.epoch + 1  # MLPerf epoch numbers count from 1
            block_end = next((e for e in range(first, cfg.epochs + 1) if cfg.is_eval_epoch(e)), cfg.epochs)
            self.mllog.block_start(first, block_end - first + 1)
            for epoch in range(first, block_end + 1):
                stopped = self._train_epoch(epoch)
                if stopped == SIGNAL:
                    path = self._save(f"step_{state.step:07d}.pt")  # raises when it cannot be written
                    self.say(f"preempted at step {state.step}: checkpoint {path} written; resume with the "
                             "same command or --resume")
                    return "interrupted"
                if stopped == TARGET:  # a background score reached the target during this epoch
                    state.reached_target = True  # rank 0 knew; the window's all-reduce told the others
                    return self._reached(f"step_{state.step:07d}.pt")
                if epoch == block_end:
                    self.mllog.block_stop(first)
                    if cfg.is_eval_epoch(epoch):
                        self.evaluator.run(epoch)
                # the last epoch waits for every score before its checkpoint (training is over)
                if self.evaluator.drain() if epoch == cfg.epochs else self.evaluator.decide():
                    return self._reached(f"epoch_{epoch:04d}.pt")
                with self.watchdog.paused():
                    self._save(f"epoch_{epoch:04d}.pt")  # every epoch, after its eval if any
        if not state.reached_target and self.evaluator.drain():  # the last scores may reach it
            return self._reached(f"step_{state.step:07d}.pt")
        return "success" if state.reached_target else "finished"

    def _train_epoch(self, epoch: int) -> str:
        """Train epoch `epoch` (1-based); why it stopped early (`loop.train_one_epoch`), "" if not.

        Every ``log_every`` steps a window record goes to metrics.jsonl and to the progress
        display: step of the epoch, global img/s since the epoch (re)started, loss, lr, ETA, memory.
        """
        state, data = self.state, self.data
        data.train_loader.sampler.set_epoch(epoch - 1)  # keeps a resumed position inside this epoch
        self.mllog.epoch_start(epoch)
        with Progress(data.iters_per_epoch, f"epoch {epoch}/{self.cfg.epochs}", unit="step",
                      initial=state.epoch_step, enabled=self.show_progress, rate_unit="img",
                      min_interval_s=0) as shown:

            def on_window(record: dict) -> None:
                images = (state.epoch_step - shown.done) * data.global_batch  # over all ranks
                shown.update(state.epoch_step, items=images, loss=f"{record['loss']:.3f}",
                             lr=f"{record['lr']:.2e}")
                self.folder.log_metrics({"kind": "train", **record})
                if self.tensorboard is not None:
                    self.tensorboard.window(record)

            hooks = EpochHooks(lambda v: all_reduce_sum(v, self.launch.device), on_window,
                               lambda: self.stop_requested, self.watchdog.beat, self.evaluator.poll)
            stopped = train_one_epoch(self.parts, data.train_batches(), state, self.cfg.log_every, hooks,
                                      self.cfg.steps_per_epoch)
        if stopped:
            return stopped
        self.mllog.epoch_stop(epoch)
        state.epoch, state.epoch_step = epoch, 0
        return ""

    def _finish(self, status: str, failing: bool = False) -> None:
        """Stop the MLPerf clock (if still running), close the log; rank 0 writes summary.json and the plots.

        ``failing``: an error is on its way out; a write that fails here too (the same full
        disk) is noted in one line instead of replacing that error with a second traceback.
        """
        try:
            if status == "interrupted" and self._t_start is not None:  # no run_stop: the run goes on later
                self.state.train_time_s += time.perf_counter() - self._t_start
                self._t_start = None
            self._stop_clock(status == "success")
            self.mllog.close()
            if self.launch.is_main:
                self.folder.write_json("summary.json", self.summary(status))
                self.folder.plot()
                if self.evaluator is not None:  # per-class AP, PR curves, confusion matrix
                    self.evaluator.write_pictures(self.folder.path / "plots")
        except (OSError, CliError) as exc:
            if not failing:
                raise
            self.say(f"note: the run summary was not written either ({exc})")

    def summary(self, status: str) -> dict:
        """The result as MLPerf scores it (summary.json, read by `ssdbench score`)."""
        s, cfg = self.state, self.cfg
        return {
            "status": status, "reached_target": s.reached_target, "target_map": cfg.target_map,
            "time_to_train_min": s.train_time_s / 60.0, "epochs": s.epoch, "steps": s.step,
            "eval_mode": "sync" if cfg.eval_sync else "async", "eval_wait_s": s.eval_wait_s,
            "score_wait_s": s.score_wait_s, "score_s": s.score_s,
            "seed": cfg.seed,
            "eval_history": s.eval_history, "final_map": s.eval_history[-1]["map"] if s.eval_history else None,
            "model": cfg.model, "preset": cfg.preset, "dataset": self.data.name,
            "world_size": self.launch.world_size, "global_batch_size": self.data.global_batch,
            "division": self.division, "resumed": s.segments > 1,
            "segments": s.segments, "run_dir": str(self.folder.path),
            "mlperf_log": str(self.folder.mlperf_log_path(s.segments)),
            "summary": summary_line(s, cfg),
            "per_class": self.evaluator.per_class() if self.evaluator is not None else None,  # newest score
        }


def summary_line(state: TrainState, cfg: TrainConfig) -> str:
    """One line: the MLPerf score of the run."""
    text = f"time to train {state.train_time_s / 60:.2f} min, {state.epoch} epochs"
    if state.eval_history:
        best = state.eval_history[-1]
        text += f", last mAP {best['map']:.4f} at epoch {best['epoch']}"
    if cfg.target_map is not None:
        text += f", target {cfg.target_map} " + ("reached" if state.reached_target else "not reached")
    return text


def mllog_config(cfg: TrainConfig, data: Data, world_size: int) -> dict:
    """The run facts `MLPerfLogger.setup` logs (benchmark.md §6 "Logs": the keys the checker reads)."""
    return {
        "model": cfg.model, "dataset": data.name, "global_batch_size": data.global_batch,
        "base_lr": cfg.base_lr(world_size), "weight_decay": cfg.weight_decay,
        "warmup_steps": data.warmup_iters, "warmup_factor": cfg.warmup_factor,
        "decay_epochs": list(cfg.decay_epochs), "bn_span": cfg.bn_span, "max_samples": cfg.max_samples,
        "seed": cfg.seed, "train_samples": len(data.train_set), "eval_samples": len(data.val_set),
        "submission_org": cfg.submission_org, "submission_platform": cfg.submission_platform,
        "submission_status": cfg.submission_status, "submission_benchmark": cfg.submission_benchmark,
        "submission_division": cfg.division(data.name),
    }
