"""Train an SSD model: the MLPerf SSD300-R34 recipe, published system presets, or the CPU demo.

Flags override the preset and the optional --config JSON file; the resolved config is printed and
saved as config.json in the run folder.
"""

from __future__ import annotations

import argparse
import sys

from ssdbench.checks import Range
from ssdbench.errors import PREEMPTED_EXIT
from ssdbench.train.config import PRESETS, RANGES, resolve_config

EPILOG = """presets:
  demo           ssd128_mini on the embedded synthetic dataset (default without --data)
  mlperf         SSD300-R34, MLPerf reference recipe (benchmark.md §6): lr 2.5e-3 x global_batch/32,
                 linear warmup, x0.1 at epochs 40 and 50, eval every 5 epochs, target 0.23 mAP
  dgxa100_x8     NVIDIA DGX A100 x8: 114/GPU, lr 0.09, wd 1.3e-4, 650 warmup it, decay 44/55
  dgxa100_2x8    two DGX A100 nodes (16 GPUs), 56/GPU
  dgx1_x8        DGX-1 x8: 128/GPU, 300 warmup iterations
  modelzoo_8gpu  8 GPUs, global batch 192, 65 epochs

the score (as MLPerf Training scores it):
  time to train = wall time from run_start (after model, data and logger setup) to run_stop (the
  evaluation that first reaches the target mAP, COCO AP@[.5:.95] >= 0.23), in minutes; evaluation
  time counts. The run folder's summary.json holds time_to_train_min, reached_target, epochs and
  eval_history; mlperf_log.txt holds the :::MLLOG lines for the compliance checker. MLPerf takes 5
  runs, drops the fastest and slowest and averages the rest: `ssdbench score RUN_DIR...`.

launches:
  ssdbench train                                       # demo on CPU
  ssdbench train --preset mlperf --data /coco --backbone-weights resnet34-333f7ec4.pth
  torchrun --nproc_per_node 8 -m ssdbench train --preset dgxa100_x8 --data /coco --out runs/a100
  srun --ntasks-per-node 8 python -m ssdbench train ...    # see recipes/train.sbatch

fast path: on CUDA the mlperf, dgx* and modelzoo presets train with --step fast (fused
  SGD, no host sync per step), --cuda-graph, --input-pipeline device (decode and augment on the
  GPU), bf16 and channels_last; on CPU they fall back to the plain step and the CPU loader.

resume: re-run the same command with the same --out (or pass --resume [RUN_DIR|CHECKPOINT]).
  A checkpoint trained with other settings is refused, naming them; --accept-changes applies
  them from the resumed step on. SIGTERM (Slurm preemption) checkpoints and exits with status 75.

closed division = the reference's rules (ssd300_r34 on COCO): last partial batch kept and shards
  padded, crowd boxes trained on, the last warmup lr kept until the first decay, eval at
  --eval-epochs in addition to every --eval-every. --drop-last, --exclude-crowd,
  --restore-lr-after-warmup, --eval-only-listed, --final-eval and --v07-eval make a run open.

submission: ssdbench train --preset mlperf --data /coco --runs 5 --out runs/sub
  then ssdbench package --system NAME --org ORG runs/sub/run_*   (see README)
"""

# flag -> (config field, type, help). Booleans are store_true flags (with --no-X to turn off).
_VALUE_FLAGS = {
    "--model": ("model", str, "network: ssd300_r34, ssd1200_r34, ssd128_mini"),
    "--data": ("data", str, "COCO 2017 root (annotations/, train2017/, val2017/); default: embedded synthetic"),
    "--backbone-weights": ("backbone_weights", str, "torchvision resnet34 ImageNet file for the trunk"),
    "--batch-size": ("batch_size", int, "images per rank per step (global = x world size)"),
    "--lr": ("lr", float, "base learning rate (default 2.5e-3 x global_batch / 32)"),
    "--momentum": ("momentum", float, "SGD momentum"),
    "--weight-decay": ("weight_decay", float, "SGD weight decay"),
    "--warmup-epochs": ("warmup_epochs", float, "linear warmup length in epochs"),
    "--warmup-steps": ("warmup_steps", int, "linear warmup length in iterations (overrides epochs)"),
    "--warmup-factor": ("warmup_factor", float, "MLPerf warmup factor (0 = warm up from 0)"),
    "--decay-epochs": ("decay_epochs", int, "epochs at whose start the lr is multiplied by 0.1"),
    "--epochs": ("epochs", int, "maximum epochs"),
    "--target-map": ("target_map", float, "stop when eval mAP reaches this"),
    "--eval-every": ("eval_every", int, "evaluate every N epochs (0: only --eval-epochs and the last)"),
    "--eval-epochs": ("eval_epochs", int, "also evaluate at these epochs"),
    "--max-samples": ("max_samples", int, "random-crop attempts per draw (MLPerf: 1 or 50)"),
    "--workers": ("workers", int, "data-loader worker processes per rank"),
    "--eval-batch-size": ("eval_batch_size", int, "eval images per rank per batch"),
    "--steps-per-epoch": ("steps_per_epoch", int, "cap on steps per epoch (smoke runs)"),
    "--bn-span": ("bn_span", int, "ranks per sync-BN group (1 = local BatchNorm)"),
    "--dist-timeout": ("dist_timeout_s", float, "seconds before a stalled rank ends the run"),
    "--device": ("device", str, "auto, cpu, cuda, cuda:N"),
    "--precision": ("precision", str, ("fp32, bf16, fp16 (autocast; fp16 with a grad scaler) or auto "
                                       "(bf16 on CUDA and on CPUs with AMX / AVX512-BF16, else fp32)")),
    "--seed": ("seed", int, "random seed (rank r uses seed + r)"),
    "--out": ("out", str, "run folder (default runs/<preset>-<time>); an existing one is resumed"),
    "--log-every": ("log_every", int, "steps per metrics.jsonl window"),
    "--step": ("step", str, "plain (train_step), fast (FastStep: fused SGD, no host sync) or auto"),
    "--input-pipeline": ("input_pipeline", str, "cpu (workers decode + augment), device (on the GPU) or auto"),
    "--dataset-name": ("dataset_name", str, "MLPerf log dataset (default: detected; coco2017 = closed)"),
    "--submission-org": ("submission_org", str, "MLPerf submission_org"),
    "--submission-platform": ("submission_platform", str, "MLPerf submission_platform"),
    "--submission-status": ("submission_status", str, "cloud, onprem, preview or research"),
    "--submission-division": ("submission_division", str, "auto, closed or open"),
}
_BOOL_FLAGS = {
    "--channels-last": ("channels_last", "NHWC memory format"),
    "--compile": ("compile", "torch.compile the model"),
    "--cuda-graph": ("cuda_graph", "capture the fast step as one CUDA graph (CUDA, --step fast)"),
    "--deterministic": ("deterministic", "deterministic kernels (bit-reproducible CPU runs)"),
    "--allow-pickle": ("allow_pickle", "read a pickled --backbone-weights file (runs its code; trusted files only)"),
    "--eval-sync": ("eval_sync", "training waits for each COCO score (default: scored in the background)"),
    "--tensorboard": ("tensorboard", "TensorBoard events in RUN/tensorboard (needs the tensorboard package)"),
    # ssdbench's own rules; each makes a run open division (docs/DEVIATIONS.md "Training")
    "--drop-last": ("drop_last", "drop each rank's last partial batch (reference: kept, shards padded)"),
    "--exclude-crowd": ("exclude_crowd", "crowd boxes are no training targets (reference: they are)"),
    "--restore-lr-after-warmup": ("restore_lr_after_warmup",
                                  "base lr right after warmup (reference: the last warmup lr until the first decay)"),
    "--eval-only-listed": ("eval_only_listed",
                           "evaluate only at --eval-epochs, then every --eval-every (reference: both)"),
    "--final-eval": ("final_eval", "also evaluate after the last epoch (reference: only at eval epochs)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), help="starting point (default: demo without --data, else mlperf)")
    parser.add_argument("--config", help="JSON file of config keys (applied after the preset)")
    resume = parser.add_mutually_exclusive_group()  # together, the last one used to win silently
    resume.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                        help="continue a run: its folder or a checkpoint (no value: the newest run of the preset)")
    resume.add_argument("--no-resume", action="store_true", help="start fresh even if --out holds a checkpoint")
    parser.add_argument("--accept-changes", action="store_true",
                        help="resume a checkpoint trained with other settings and apply the new ones")
    parser.add_argument("--v07-eval", action="store_true",
                        help="NVIDIA v0.7 eval schedule: only 40, 50, 55, then every 5 (open division)")
    parser.add_argument("--runs", type=Range(int, ge=1), default=1, metavar="N",
                        help="train N runs with distinct seeds (seed + 1000 i), one folder each: OUT/run_i")
    for flag, (field_name, kind, text) in _VALUE_FLAGS.items():
        nargs = "+" if flag in ("--decay-epochs", "--eval-epochs") else None
        # numbers are parsed and range-checked by the config key's rule (`config.RANGES`)
        parser.add_argument(flag, type=RANGES.get(field_name, kind), nargs=nargs, help=text)
    for flag, (field_name, text) in _BOOL_FLAGS.items():
        parser.add_argument(flag, dest=field_name, action=argparse.BooleanOptionalAction, default=None, help=text)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def overrides_from_args(args: argparse.Namespace) -> dict:
    values = {}
    for flag, (field_name, _kind, _text) in _VALUE_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            values[field_name] = tuple(value) if isinstance(value, list) else value
    for field_name, _text in _BOOL_FLAGS.values():
        if getattr(args, field_name) is not None:
            values[field_name] = getattr(args, field_name)
    if args.v07_eval:
        values["eval_epochs"], values["eval_every"], values["eval_only_listed"] = (40, 50, 55), 5, True
    if args.no_resume:
        values["resume"] = "never"
    elif args.resume is not None:
        values["resume"] = _latest_run(args) if args.resume == "latest" else args.resume
    return values


def _latest_run(args: argparse.Namespace) -> str:
    """Newest runs/<preset>-* folder holding a checkpoint (for a bare --resume)."""
    from pathlib import Path

    preset = args.preset or ("mlperf" if args.data else "demo")
    runs = sorted(p for p in Path("runs").glob(f"{preset}-*") if any((p / "checkpoints").glob("*.pt")))
    if not runs:
        raise FileNotFoundError(f"--resume: no run of preset {preset!r} with a checkpoint under runs/")
    return str(runs[-1])


def config_from_args(args: argparse.Namespace):
    return resolve_config(args.preset, args.config, overrides_from_args(args))


def run(args: argparse.Namespace) -> int:
    from ssdbench.train.config import set_up
    from ssdbench.train.trainer import exit_status, train_runs

    setup = set_up(config_from_args(args))  # the device picked and the config resolved, once
    setup.print_note()
    if setup.launch.is_main:  # the printed config is the run's
        print(f"ssdbench train: preset {setup.cfg.preset}, resolved config:\n{setup.cfg.describe()}", flush=True)
    if args.print_config:
        return 0
    status = exit_status(train_runs(setup, args.runs, args.accept_changes))
    if status == PREEMPTED_EXIT:  # a checkpoint was written: a scheduler requeues
        print("ssdbench train: preempted (exit status 75); the same command resumes", file=sys.stderr)
    return status
