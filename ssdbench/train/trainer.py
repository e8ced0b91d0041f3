"""One training run, config to summary: builds the parts, resumes, trains, evaluates, logs.

``run_training(cfg)`` is what `ssdbench train` and `ssdbench demo` call, under any launcher.
The MLPerf clock (benchmark.md §6): ``run_start`` after the model, data and logger are set up, ``run_stop``
when an evaluation reaches the target (or the epochs run out); time to train is the wall time in
between, summed over resumed segments (a resumed run is not a valid MLPerf timing, and its
summary says so).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import torch

from ssdbench import dist as D
from ssdbench.dist import Launch, Watchdog, all_reduce_sum, init_distributed, shutdown
from ssdbench.train.build import build_data, build_parts, load_optimizer_state, summary_line
from ssdbench.train.checkpoint import (
    last_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ssdbench.train.config import TrainConfig, resolve_for_device
from ssdbench.train.loop import NonFiniteLossError, TrainState, train_one_epoch
from ssdbench.train.run_folder import RunFolder, default_run_dir
from ssdbench.train.sync_bn import average_bn_stats


def run_training(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train with `cfg` under the current launcher; returns the summary (see `Session.summary`)."""
    launch = init_distributed(cfg.device, cfg.dist_timeout_s)
    try:
        cfg, note = resolve_for_device(cfg, launch.device.type)  # "auto" step/pipeline/precision
        if note and launch.is_main:
            print(note, flush=True)
        return Session(cfg, launch, progress).run()
    finally:
        shutdown()


def _resolve_run_dir(cfg: TrainConfig) -> Path:
    """`--out`, else the run folder named by `--resume DIR`, else runs/<preset>-<timestamp>."""
    if cfg.out:
        return Path(cfg.out)
    if cfg.resume not in ("auto", "never") and Path(cfg.resume).is_dir():
        return Path(cfg.resume)
    return default_run_dir(cfg.preset)


def _find_resume(cfg: TrainConfig, run_dir: Path) -> Path | None:
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto" or Path(cfg.resume).is_dir():
        return last_checkpoint(run_dir / "checkpoints")
    path = Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint or run folder at {path}")
    return path


class Session:
    """State of one run segment on one rank (see `run_training`)."""

    def __init__(self, cfg: TrainConfig, launch: Launch, progress: bool = True):
        self.cfg, self.launch, self.progress = cfg, launch, progress and launch.is_main
        run_dir = D.broadcast_object(str(_resolve_run_dir(cfg)) if launch.is_main else None)
        self.folder = RunFolder(run_dir, enabled=launch.is_main)
        resume = D.broadcast_object(_find_resume(cfg, Path(run_dir)) if launch.is_main else None)
        self.ckpt = load_checkpoint(resume) if resume else None
        self.resume_path = resume
        self.state = TrainState(**self.ckpt["state"]) if self.ckpt else TrainState()
        self.state.segments += 1
        self.stop_requested = False
        self.watchdog = Watchdog(0 if launch.world_size == 1 else cfg.dist_timeout_s, launch.rank)

    def say(self, message: str) -> None:
        if self.launch.is_main:
            print(message, flush=True)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from ssdbench.train.mllog import MLPerfLogger

        cfg, launch = self.cfg, self.launch
        if self.ckpt is None and self.state.segments == 1 and self.folder.metrics_path.exists():
            raise ValueError(f"run folder {self.folder.path} already holds a run without a checkpoint; "
                             "choose another --out")
        self.mllog = MLPerfLogger(self.folder.mlperf_log_path(self.state.segments), launch.rank)
        self.mllog.init_start()
        _set_determinism(cfg)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
        self.data = build_data(cfg, launch)
        self.parts, self.net = build_parts(cfg, launch, self.data.num_classes, self.data.iters_per_epoch,
                                            self.data.warmup_iters)
        torch.manual_seed(cfg.seed + launch.rank)  # per-rank seeds (benchmark.md §6)
        if self.ckpt is not None:
            self._restore(self.ckpt)
        cfg.save(self.folder.path / "config.json") if launch.is_main else None
        self.division = self.mllog.setup(self._mllog_config(), self.net)

    def _mllog_config(self) -> dict:
        cfg, data = self.cfg, self.data
        return {
            "model": cfg.model, "dataset": data.name, "global_batch_size": data.global_batch,
            "base_lr": cfg.base_lr(self.launch.world_size), "weight_decay": cfg.weight_decay,
            "warmup_steps": data.warmup_iters, "warmup_factor": cfg.warmup_factor,
            "decay_epochs": list(cfg.decay_epochs), "bn_span": cfg.bn_span, "max_samples": cfg.max_samples,
            "seed": cfg.seed, "train_samples": len(data.train_set), "eval_samples": len(data.val_set),
            "submission_org": cfg.submission_org, "submission_platform": cfg.submission_platform,
            "submission_status": cfg.submission_status, "submission_benchmark": cfg.submission_benchmark,
            "submission_division": cfg.division(data.name),
        }

    def _restore(self, ckpt: dict) -> None:
        if ckpt.get("world_size") != self.launch.world_size:
            raise ValueError(f"checkpoint {self.resume_path} was written with {ckpt.get('world_size')} "
                             f"ranks, this run has {self.launch.world_size}")
        p = self.parts
        self.net.load_state_dict(ckpt["model"])
        load_optimizer_state(p.optimizer, ckpt["optimizer"])  # keeps a fast step's device lr tensor
        p.scheduler.load_state_dict(ckpt["scheduler"])
        if p.scaler is not None and ckpt.get("scaler"):
            p.scaler.load_state_dict(ckpt["scaler"])
        self.data.train_loader.sampler.load_state_dict(ckpt["sampler"])
        set_rng_state(ckpt["rng"][self.launch.rank])
        self.folder.truncate_metrics_after(self.state.step)
        self.say(f"resuming {self.resume_path}: epoch {self.state.epoch} done, step {self.state.step}")

    # ------------------------------------------------------------------ checkpoints and signals
    def save(self, name: str) -> None:
        sampler = self.data.train_loader.sampler
        consumed = self.state.epoch_step * self.cfg.batch_size
        rngs = D.all_gather_object(rng_state())
        if not self.launch.is_main:
            return
        p = self.parts
        payload = {
            "model": self.net.state_dict(), "optimizer": p.optimizer.state_dict(),
            "scheduler": p.scheduler.state_dict(), "scaler": p.scaler.state_dict() if p.scaler else None,
            "state": vars(self.state), "sampler": sampler.state_dict(consumed=consumed), "rng": rngs,
            "config": self.cfg.to_dict(), "world_size": self.launch.world_size,
        }
        save_checkpoint(self.folder.checkpoints, name, payload)

    def _on_signal(self, signum, _frame) -> None:
        # Slurm preemption sends SIGTERM: finish the step, checkpoint, exit. A second signal kills.
        self.stop_requested = True
        signal.signal(signum, signal.SIG_DFL)
        print(f"rank {self.launch.rank}: {signal.Signals(signum).name} received; checkpointing at the "
              "next step boundary (send again to exit now)", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ the run
    def finished(self) -> bool:
        return self.state.reached_target or self.state.epoch >= self.cfg.epochs

    def run(self) -> dict:
        if self.ckpt is not None and self.finished():
            self.say(f"run in {self.folder.path} is already finished; see summary.json (use another --out)")
            return json.loads((self.folder.path / "summary.json").read_text()) if self.launch.is_main else {}
        self.setup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.watchdog.start()
        self.mllog.init_stop()
        self.mllog.run_start()
        self.t_start = time.perf_counter()
        status = "running"
        try:
            status = self._epochs()
        except NonFiniteLossError as exc:
            status = "diverged"
            self.say(f"error: {exc}" + (f" ({self._last_name()})" if self._last_name() else ""))
            raise ValueError(str(exc)) from None
        finally:
            self.watchdog.stop()
            self._finish(status)
        return self.summary(status)

    def _epochs(self) -> str:
        cfg, state = self.cfg, self.state
        while state.epoch < cfg.epochs and not state.reached_target:
            first = state.epoch + 1  # MLPerf epoch numbers count from 1
            block_end = next(e for e in range(first, cfg.epochs + 1) if cfg.is_eval_epoch(e))
            self.mllog.block_start(first, block_end - first + 1)
            for epoch in range(first, block_end + 1):
                if self._train_epoch(epoch):
                    self.save(f"step_{state.step:07d}.pt")
                    self.say(f"stopped at step {state.step}; resume with the same command or --resume")
                    return "interrupted"
                if epoch == block_end:
                    self.mllog.block_stop(first)
                    self._evaluate(epoch)
                with self.watchdog.paused():
                    self.save(f"epoch_{epoch:04d}.pt")  # every epoch, after its eval if any
        return "success" if state.reached_target else "finished"

    def _train_epoch(self, epoch: int) -> bool:
        """Train epoch `epoch` (1-based); True when a signal asked to stop mid-epoch."""
        from tqdm import tqdm

        state, sampler = self.state, self.data.train_loader.sampler
        sampler.set_epoch(epoch - 1)  # keeps a resumed position inside this epoch
        self.mllog.epoch_start(epoch)
        total = self.data.iters_per_epoch
        bar = tqdm(total=total, initial=state.epoch_step, desc=f"epoch {epoch}/{self.cfg.epochs}",
                   unit="step", dynamic_ncols=True, disable=not self.progress, leave=False)

        def on_window(record: dict) -> None:
            bar.update(state.epoch_step - bar.n)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                            img_s=f"{record['img_s']:.0f}")
            self.folder.log_metrics({"kind": "train", **record})

        stopped = train_one_epoch(self.parts, self.data.train_batches(), state, self.cfg.log_every,
                                  lambda v: all_reduce_sum(v, self.launch.device), on_window,
                                  lambda: self.stop_requested, self.cfg.steps_per_epoch,
                                  self.watchdog.beat)
        bar.close()
        if stopped:
            return True
        self.mllog.epoch_stop(epoch)
        state.epoch, state.epoch_step = epoch, 0
        return False

    def _evaluate(self, epoch: int) -> None:
        from ssdbench.eval.evaluate import evaluate

        self.mllog.eval_start(epoch)
        with self.watchdog.paused():
            average_bn_stats(self.net, self.launch.world_size)  # benchmark.md §6
            stats, _ = evaluate(self.net, self.data.val_loader, self.data.val_set, self.launch.device,
                                distributed=self.launch.distributed, progress=self.progress,
                                autocast_dtype=self.parts.amp_dtype)
        value = float(stats[0])
        self.mllog.eval_accuracy(value, epoch)
        self.mllog.eval_stop(epoch)
        self.state.eval_history.append({"epoch": epoch, "map": value, "stats": [float(s) for s in stats]})
        self.folder.log_metrics({"kind": "eval", "epoch": epoch, "map": value, "stats": list(stats)})
        target = self.cfg.target_map
        self.state.reached_target = target is not None and value >= target
        self.say(f"epoch {epoch}: mAP {value:.4f}" + (f" (target {target})" if target is not None else ""))

    def _last_name(self) -> str | None:
        path = last_checkpoint(self.folder.checkpoints)
        return f"last good checkpoint: {path}" if path else None

    def _finish(self, status: str) -> None:
        self.state.train_time_s += time.perf_counter() - self.t_start
        if status != "interrupted":
            self.mllog.run_stop(status == "success")
        self.mllog.close()
        if self.launch.is_main:
            self.folder.write_json("summary.json", self.summary(status))
            self.folder.plot()

    def summary(self, status: str) -> dict:
        """The result as MLPerf scores it (read by `ssdbench score`)."""
        s, cfg = self.state, self.cfg
        return {
            "status": status, "reached_target": s.reached_target, "target_map": cfg.target_map,
            "time_to_train_min": s.train_time_s / 60.0, "epochs": s.epoch, "steps": s.step,
            "eval_history": s.eval_history, "final_map": s.eval_history[-1]["map"] if s.eval_history else None,
            "model": cfg.model, "preset": cfg.preset, "dataset": self.data.name,
            "world_size": self.launch.world_size, "global_batch_size": self.data.global_batch,
            "division": getattr(self, "division", None), "resumed": s.segments > 1,
            "segments": s.segments, "run_dir": str(self.folder.path),
            "mlperf_log": str(self.folder.mlperf_log_path(s.segments)),
            "summary": summary_line(s, cfg),
        }


def _set_determinism(cfg: TrainConfig) -> None:
    if cfg.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # CUDA determinism needs it
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
