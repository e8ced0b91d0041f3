"""The training configuration: one typed dataclass, named presets, overrides from a file and flags.

Resolution order (later wins): dataclass defaults (the MLPerf reference recipe, benchmark.md §6) <- preset
<- JSON config file <- command-line flags. The resolved config is printed and saved as
``config.json`` in the run folder, so every run records exactly what it trained with.
`set_up` is where a training command starts: the device picked and the config resolved for it once
(`resolve_for_device`), handed down as one `TrainSetup`.

The closed division is the reference's run. "The reference" below is mlcommons/training
``retired_benchmarks/ssd-v1/ssd/`` (train.py, utils.py, run_and_time.sh, config_DGX1_*.sh); each
rule cites the file and line it follows. ssdbench's own choices (`REFERENCE_RULES`) stay
available as options; a run that uses any of them is logged as open division
(docs/DEVIATIONS.md "Training").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ssdbench.checks import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    SEED,
    Range,
    check_all,
    usable_cores,
)
from ssdbench.precision import default_precision

if TYPE_CHECKING:
    from ssdbench.dist import Launch

COCO_TRAIN_IMAGES = 117266  # benchmark.md §5: non-empty train2017 images; MLPerf's epoch size
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DIVISIONS = ("auto", "closed", "open")
STEPS = ("plain", "fast", "auto")
INPUT_PIPELINES = ("cpu", "device", "auto")


@dataclass
class TrainConfig:
    """Every knob of `ssdbench train`. Defaults are the MLPerf reference recipe (benchmark.md §6)."""

    preset: str = "mlperf"  # name of the preset this config started from
    # --- model and data ---
    model: str = "ssd300_r34"  # benchmark.md §1: the training benchmark's network
    data: str | None = None  # COCO root (benchmark.md §5 layout); None = the embedded synthetic dataset
    train_split: str = "train"  # benchmark.md §5: train2017
    val_split: str = "val"  # benchmark.md §5: val2017
    # MLPerf log name (closed division needs "coco2017"). None = detected (`build.dataset_name`):
    # "coco2017" for COCO's 80 categories in instances_train2017.json, "synthetic" for the
    # embedded dataset, else the data folder's name (open division).
    dataset_name: str | None = None
    backbone_weights: str | None = None  # benchmark.md §6: torchvision ImageNet resnet34-333f7ec4.pth
    allow_pickle: bool = False  # read a pickled backbone_weights file (unpickling runs its code)
    # --- batch and optimiser ---
    batch_size: int = 32  # per rank; global batch = batch_size x world size (benchmark.md §6)
    lr: float | None = None  # None = 2.5e-3 x global_batch / 32 (benchmark.md §6 linear scaling rule)
    momentum: float = 0.9  # benchmark.md §6: SGD momentum
    weight_decay: float = 5e-4  # benchmark.md §6: reference value (submitters tuned it, e.g. 1.3e-4)
    # Linear warmup length in epochs, made iterations as train.py:309 does: int(warmup x 117266 /
    # global batch). run_and_time.sh passes no --warmup (train.py:307-313: no warmup, and no
    # opt_learning_rate_warmup_steps in the log), which the 1.1.0 closed ruleset rejects (warmup
    # steps >= 1); so the default is the only value the reference ships, config_DGX1_singlenode.sh:6
    # and config_DGX1_multinode.sh:6: 2.619685 epochs (299 iterations at 8 x 128). docs/DEVIATIONS.md.
    warmup_epochs: float = 2.619685
    warmup_steps: int | None = None  # explicit warmup iterations; overrides warmup_epochs (NVIDIA: 650)
    warmup_factor: float = 0.0  # reference `--warmup-factor`: warmup starts at lr x (1 - 2**-f); 0 = from 0
    decay_epochs: tuple[int, ...] = (40, 50)  # benchmark.md §6: x decay_factor at the start of these epochs
    decay_factor: float = 0.1  # benchmark.md §6
    epochs: int = 70  # run_and_time.sh:42 NUMEPOCHS=70; the run stops as soon as eval reaches target_map
    target_map: float | None = 0.23  # benchmark.md §6: COCO AP@[.5:.95] quality target; None = never stop early
    eval_every: int = 5  # train.py:46 --val-interval 5: evaluate every 5 epochs ...
    eval_epochs: tuple[int, ...] = ()  # ... and, in addition, at these (train.py:48 --val-epochs, :370-371)
    # --- ssdbench's own rules (True = not the reference: the run logs as open division) ---
    drop_last: bool = False  # drop each rank's last partial batch; reference keeps it (train.py:242-250)
    exclude_crowd: bool = False  # crowd boxes are no training targets; reference trains on them (utils.py:545-550)
    restore_lr_after_warmup: bool = False  # base lr right after warmup; reference keeps the last warmup lr
    eval_only_listed: bool = False  # eval only at eval_epochs, then every eval_every after the last of them
    final_eval: bool = False  # also evaluate after the last epoch when it is no eval epoch
    # --- evaluation ---
    # False: COCO scoring runs in a background process while training goes on (inference stays
    # on the training devices); True: training waits for the score (`train.async_eval`).
    eval_sync: bool = False
    # --- data pipeline ---
    max_samples: int = 1  # benchmark.md §5 random-crop attempts per draw (1 or 50); NVIDIA v0.7 logs 1
    max_objects: int = 200  # docs/ARCHITECTURE.md "Padded targets": objects per image
    workers: int = 4  # data-loader worker processes per rank
    eval_batch_size: int | None = None  # None = batch_size
    steps_per_epoch: int | None = None  # cap on training steps per epoch (smoke runs); None = full epoch
    # --- distributed ---
    bn_span: int = 1  # benchmark.md §6 `model_bn_span`: ranks per SyncBatchNorm group; 1 = local BN
    dist_timeout_s: float = 300.0  # process-group timeout: a dead rank ends the others in bounded time
    # --- device and precision ---
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # "auto" and None below are resolved per device at run time (`resolve_for_device`): the GPU
    # presets ask for the fast path on CUDA; elsewhere step, input pipeline and CUDA graph fall
    # back to the plain CPU path while precision auto and channels_last None still resolve per
    # device (bf16 where the CPU computes it natively, NHWC on), and the run's note lists them.
    # auto = bf16 on CUDA and on CPUs with native bf16 (AMX / AVX512-BF16, `ssdbench.precision`), else fp32
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler) | auto
    # NHWC; None = on (CUDA; and CPU, where it measured 1.13x the NCHW fp32 SSD300 step and 1.1-1.2x
    # ssd128_mini's in fp32 and bf16, benchmarks/RESULTS.md)
    channels_last: bool | None = False
    compile: bool = False  # torch.compile the model (step=fast: encode + forward + loss)
    # plain = `loop.train_step` (float lr, any precision, GradScaler for fp16). fast =
    # `fast_step.FastStep`: fused SGD with a device-tensor lr and no host sync inside the
    # step (eager on CPU); fp32 or bf16 only (it has no GradScaler). auto = fast on CUDA.
    step: str = "plain"
    # Capture the whole fast step (forward, backward, SGD) as one CUDA graph: removes the per-kernel
    # launch cost that dominates small per-GPU batches. CUDA + step=fast only; None = on for CUDA.
    cuda_graph: bool | None = False
    # cpu = `data.loader` (workers decode + augment). device = `data.gpu_pipeline` (workers only read
    # bytes; decode, crop, flip, resize, jitter and target encoding batched on the device, so the GPU
    # is not starved at 3,000 img/s; CPU decode fallback elsewhere). auto = device on CUDA.
    input_pipeline: str = "cpu"
    deterministic: bool = False  # deterministic kernels, workers=0: bit-reproducible CPU runs and resume
    seed: int = 1  # base seed; rank r uses seed + r for augmentation (benchmark.md §6 per-rank seeds)
    # --- run folder ---
    out: str | None = None  # run folder; None = runs/<preset>-<timestamp>
    log_every: int = 20  # steps per metrics.jsonl window
    tensorboard: bool = False  # also write TensorBoard events to <out>/tensorboard (`train.tensorboard`)
    resume: str = "auto"  # auto = continue from <out>/checkpoints/last.pt if present | never | PATH
    # --- MLPerf submission keys (benchmark.md §6 logs) ---
    submission_org: str = "ssdbench"
    submission_platform: str = ""  # "" = described from the device (e.g. "1xcpu", "8xNVIDIA A100")
    submission_status: str = "research"  # cloud | onprem | preview | research
    submission_division: str = "auto"  # auto = closed for ssd300_r34 on coco2017, else open
    submission_benchmark: str = "ssd"
    extra: dict = field(default_factory=dict)  # free-form notes saved with the run

    # ----- derived values -----
    def global_batch(self, world_size: int) -> int:
        return self.batch_size * world_size

    def base_lr(self, world_size: int) -> float:
        """benchmark.md §6: lr = 2.5e-3 x global_batch / 32 unless given."""
        return self.lr if self.lr is not None else 2.5e-3 * self.global_batch(world_size) / 32

    def warmup_iters(self, num_train_images: int, global_batch: int) -> int:
        """Warmup length in iterations: explicit steps, else the reference's
        int(warmup_epochs x train images / global_batch) (train.py:309; 299 at 2.619685 epochs, batch 1024)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_epochs * num_train_images / global_batch)

    def own_rules(self) -> list[str]:
        """The ssdbench rules (`REFERENCE_RULES`) this config turns on; [] = the reference's run."""
        return [name for name in REFERENCE_RULES if getattr(self, name)]

    def division(self, dataset_name: str) -> str:
        """auto: closed for the benchmark as defined (ssd300_r34 on COCO 2017, the reference's
        rules), else open. An explicit choice is returned as given (`validate` refuses closed with
        ssdbench's own rules)."""
        if self.submission_division != "auto":
            return self.submission_division
        benchmark = (self.model, dataset_name) == ("ssd300_r34", "coco2017")
        return "closed" if benchmark and not self.own_rules() else "open"

    def is_eval_epoch(self, epoch: int) -> bool:
        """`epoch` counts completed epochs (1-based), as MLPerf's eval_accuracy epoch_num does.

        Reference (train.py:370-371): epoch in eval_epochs, or a multiple of eval_every.
        ``eval_only_listed``: eval_epochs, then multiples of eval_every after the last of them.
        ``final_eval``: also the last epoch.
        """
        if epoch in self.eval_epochs or (self.final_eval and epoch == self.epochs):
            return True
        after = max(self.eval_epochs, default=0) if self.eval_only_listed else 0
        return epoch > after and self.eval_every > 0 and epoch % self.eval_every == 0

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def describe(self) -> str:
        """The resolved config, one `key = value` per line (printed at start)."""
        return "\n".join(f"  {k:22s} = {v!r}" for k, v in self.to_dict().items())


# The options that make a run ssdbench's rather than the reference's (each is False in the reference).
REFERENCE_RULES = ("drop_last", "exclude_crowd", "restore_lr_after_warmup", "eval_only_listed", "final_eval")
# The demo keeps ssdbench's rules (it is open division anyway: another model, synthetic data).
SSDBENCH_RULES = dict.fromkeys(REFERENCE_RULES, True)

_V07_EVAL = (40, 50, 55)  # benchmark.md §6: NVIDIA v0.7 evaluates at 40, 50, 55 then every 5

# The GPU presets' fast path, resolved per device (`resolve_for_device`): on CUDA step=fast with a
# CUDA graph, the device input pipeline, bf16 and channels_last; on CPU the plain step, the CPU
# loader and no graph, with bf16 only where the CPU computes bf16 natively (else fp32) and
# channels_last on (docs/DEVIATIONS.md: a host-dependent precision; --precision fp32 pins it).
# Deviation: the published DGX runs used fp16 AMP (benchmark.md §6); bf16 needs no loss scaling, trains
# the same on A100/H100, and is what the graph-captured FastStep supports. --precision fp16
# --step plain restores the published setting.
_GPU_FAST = {"step": "auto", "cuda_graph": None, "input_pipeline": "auto", "precision": "auto",
             "channels_last": None}

# Each preset lists only what differs from the defaults (the MLPerf reference recipe).
PRESETS: dict[str, dict] = {
    # benchmark.md §6 reference recipe: SSD300-R34, lr by the scaling rule, decay [40, 50], eval every 5.
    "mlperf": {**_GPU_FAST},
    # NVIDIA DGX A100 (8x A100-40GB), MLPerf v0.7 (benchmark.md §6): 114/GPU, lr 0.09, wd 1.3e-4,
    # 650 warmup iterations, decay [44, 55] (allowed variant [40,50] x 1.1), AMP, NHWC.
    "dgxa100_x8": {
        "batch_size": 114, "lr": 0.09, "weight_decay": 1.3e-4, "warmup_steps": 650,
        "decay_epochs": (44, 55), "eval_epochs": _V07_EVAL, "workers": 8, **_GPU_FAST,
    },
    # Two DGX A100 nodes (16 GPUs) at 56/GPU (global 896 ~ the 1-node 912); other values as 1 node.
    "dgxa100_2x8": {
        "batch_size": 56, "lr": 0.09, "weight_decay": 1.3e-4, "warmup_steps": 650,
        "decay_epochs": (44, 55), "eval_epochs": _V07_EVAL, "workers": 8, **_GPU_FAST,
    },
    # DGX-1 (8x V100), config_DGX1_singlenode.sh: 128/GPU (global 1024), --warmup 2.619685 epochs
    # (int() at train.py:309: 299 iterations), reference lr rule (0.08), decay [40, 50].
    "dgx1_x8": {
        "batch_size": 128, "warmup_epochs": 2.619685, "workers": 8, **_GPU_FAST,
    },
    # Model-zoo run of the seeds: 8 GPUs, global batch 192 (24/GPU), 65 epochs, reference recipe.
    "modelzoo_8gpu": {"batch_size": 24, "epochs": 65, **_GPU_FAST},
    # Small model on the embedded synthetic dataset: ~2.5 minutes on 2 CPU cores with native bf16
    # (one compute thread + one data worker, ~300 img/s). lr: 6x the reference's per-image rule;
    # 0.04 and above made the from-scratch trunk's last ReLU die in our trials. Eval every 5 epochs
    # (mAP plot) and at the last.
    "demo": {
        "model": "ssd128_mini", "data": None, "batch_size": 16, "lr": 0.015, "weight_decay": 5e-4,
        "warmup_epochs": 0.5, "decay_epochs": (18,), "epochs": 22, "eval_every": 5,
        "target_map": None, "max_samples": 50, "max_objects": 32, "workers": 1, "log_every": 10,
        "submission_division": "open", **SSDBENCH_RULES,
        # bf16 where the CPU computes bf16 natively, fp32 elsewhere; channels_last on both
        # (bf16 + NHWC: 1.5x the fp32 NCHW step of ssd128_mini, benchmarks/RESULTS.md). 22 epochs
        # (decay at 18, 0.8 of the run as before): mAP 0.245 in 2.5 min where 20 fp32 epochs gave
        # 0.237 in 3.05 min on the same 2 cores.
        "precision": "auto", "channels_last": None,
    },
}

SYSTEM_WORLD_SIZES = {"dgxa100_x8": 8, "dgxa100_2x8": 16, "dgx1_x8": 8, "modelzoo_8gpu": 8}


def _coerce(name: str, value, current):
    """JSON lists become tuples where the field is a tuple."""
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def apply_overrides(cfg: TrainConfig, overrides: dict, source: str) -> TrainConfig:
    """Return `cfg` with `overrides` applied; an unknown key raises ValueError naming `source`."""
    known = {f.name for f in fields(TrainConfig)}
    for key in overrides:
        if key not in known:
            raise ValueError(f"{source}: unknown config key {key!r}")
    values = {k: _coerce(k, v, getattr(cfg, k)) for k, v in overrides.items()}
    return replace(cfg, **values)


def load_config_file(path: str | Path) -> dict:
    from ssdbench.io import read_json

    data = read_json(path, "config file")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a JSON object of config keys")  # noqa: TRY004  a user-file error, printed as one line
    return data


def resolve_config(preset: str | None = None, config_file: str | None = None,
                   overrides: dict | None = None) -> TrainConfig:
    """Defaults <- preset <- config file <- overrides. No preset: `demo` without data, else `mlperf`."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    file_values = load_config_file(config_file) if config_file else {}
    if preset is None:
        preset = file_values.get("preset")
    if preset is None:
        preset = "mlperf" if (overrides.get("data") or file_values.get("data")) else "demo"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = apply_overrides(TrainConfig(preset=preset), PRESETS[preset], f"preset {preset}")
    cfg = apply_overrides(cfg, {k: v for k, v in file_values.items() if k != "preset"},
                          str(config_file))
    cfg = apply_overrides(cfg, overrides, "command line")
    validate(cfg)
    return cfg


# What every numeric key accepts (`ssdbench.checks`): `validate` checks the config with it and the
# train command's flags parse with it, so "--lr nan" and {"lr": NaN} fail alike, naming the culprit.
MAX_BATCH = 4096  # images per rank per step: 4096 SSD300 inputs are 4.4 GB of fp32 already
RANGES: dict[str, Range] = {
    "batch_size": Range(int, ge=1, le=MAX_BATCH), "lr": Range(float, gt=0, optional=True), "momentum": Range(float, ge=0, lt=1),
    "weight_decay": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE,
    "warmup_steps": Range(int, ge=0, optional=True), "warmup_factor": NON_NEGATIVE,
    "decay_epochs": POSITIVE_INT, "decay_factor": Range(float, gt=0, le=1), "epochs": POSITIVE_INT,
    "target_map": Range(float, ge=0, le=1, optional=True), "eval_every": NON_NEGATIVE_INT,
    "eval_epochs": POSITIVE_INT, "max_samples": POSITIVE_INT, "max_objects": POSITIVE_INT,
    "workers": NON_NEGATIVE_INT, "eval_batch_size": Range(int, ge=1, le=MAX_BATCH, optional=True),
    "steps_per_epoch": Range(int, ge=1, optional=True), "bn_span": POSITIVE_INT, "dist_timeout_s": POSITIVE,
    "seed": SEED, "log_every": POSITIVE_INT,
}  # fmt: skip


def validate(cfg: TrainConfig) -> None:
    """Raise ValueError naming the first bad field."""
    from ssdbench.model.specs import MODEL_NAMES

    if cfg.model not in MODEL_NAMES:
        raise ValueError(f"model: unknown {cfg.model!r}; choose one of {', '.join(MODEL_NAMES)}")
    check_all(cfg.to_dict(), RANGES, prefix="config ")
    checks = [
        ("precision", cfg.precision in PRECISIONS, f"choose one of {', '.join(PRECISIONS)}"),
        ("step", cfg.step in STEPS, f"choose one of {', '.join(STEPS)}"),
        ("input_pipeline", cfg.input_pipeline in INPUT_PIPELINES,
         f"choose one of {', '.join(INPUT_PIPELINES)}"),
        ("precision", not (cfg.precision == "fp16" and cfg.step == "fast"),
         "fp16 needs --step plain (the fast step has no grad scaler); use bf16 with --step fast"),
        ("submission_division", cfg.submission_division in DIVISIONS, f"choose one of {DIVISIONS}"),
        ("decay_epochs", list(cfg.decay_epochs) == sorted(cfg.decay_epochs), "must be increasing"),
        # The 1.1.0 closed ruleset requires opt_learning_rate_warmup_steps >= 1.
        ("warmup_steps", not (cfg.submission_division == "closed" and cfg.warmup_steps == 0),
         "closed division needs a warmup (the 1.1.0 ruleset requires at least 1 warmup step)"),
        ("submission_division", not (cfg.submission_division == "closed" and cfg.own_rules()),
         f"closed division follows the reference; {', '.join(cfg.own_rules())} make(s) it open"),
    ]
    for name, ok, message in checks:
        if not ok:
            raise ValueError(f"config {name}={getattr(cfg, name)!r}: {message}")


def resolve_for_device(cfg: TrainConfig, device_type: str) -> tuple[TrainConfig, str | None]:
    """(cfg with every "auto"/None device choice made for ``device_type``, one-line note or None).

    On CUDA the GPU presets get step=fast, a CUDA graph, the device input pipeline, bf16 and
    channels_last. Elsewhere step, input pipeline and CUDA graph fall back to plain, cpu and off,
    while precision auto becomes `default_precision` of the device (bf16 on a CPU with native bf16,
    else fp32) and channels_last None becomes on; the note lists every value chosen for the
    fall-back, precision and channels_last included. Idempotent. Raises ValueError for a CUDA
    graph asked for on a non-CUDA device, or fp16 with the fast step.
    """
    cuda = device_type == "cuda"
    native_bf16 = default_precision(device_type) == "bf16"  # CUDA, or a CPU with AMX / AVX512-BF16
    step = cfg.step if cfg.step != "auto" else ("fast" if cuda else "plain")
    values = {
        "step": step,
        "input_pipeline": cfg.input_pipeline if cfg.input_pipeline != "auto" else ("device" if cuda else "cpu"),
        "precision": cfg.precision if cfg.precision != "auto" else ("bf16" if native_bf16 else "fp32"),
        "channels_last": True if cfg.channels_last is None else cfg.channels_last,
        "cuda_graph": (cuda and step == "fast") if cfg.cuda_graph is None else cfg.cuda_graph,
        "workers": min(cfg.workers, usable_cores()),  # more loader processes than cores only contend
    }
    if values["cuda_graph"] and not cuda:
        raise ValueError(f"--cuda-graph needs a CUDA device, this run is on {device_type} "
                         "(drop --cuda-graph or pass --device cuda)")
    if values["cuda_graph"] and step != "fast":
        raise ValueError(f"--cuda-graph needs --step fast (the graph captures FastStep), got --step {step}")
    resolved = replace(cfg, **values)
    validate(resolved)
    fell_back = [k for k in ("step", "input_pipeline", "cuda_graph") if getattr(cfg, k) in ("auto", None)]
    note = None
    if fell_back and not cuda:
        # precision / channels_last are chosen per device too; on a CPU the choice depends on the host
        chosen = [f"{k}={values[k]}" for k in fell_back]
        if cfg.precision == "auto":
            why = "this CPU computes bf16 natively" if values["precision"] == "bf16" else "no native bf16 here"
            chosen.append(f"precision={values['precision']} (auto: {why}; --precision fp32 pins it)")
        if cfg.channels_last is None:
            chosen.append("channels_last=True")
        note = f"note: preset {cfg.preset}'s GPU fast path needs CUDA; on {device_type}: {', '.join(chosen)}"
    if values["workers"] < cfg.workers:
        capped = (f"note: workers {cfg.workers} capped at {values['workers']}, the CPU cores this process may "
                  "use (--workers)")
        note = f"{note}\n{capped}" if note else capped
    return resolved, note


@dataclass(frozen=True)
class TrainSetup:
    """What a training command resolves once, before it trains: the config made for this process's
    device, where the process runs, and the note saying what the resolution chose (or None)."""

    cfg: TrainConfig  # every "auto"/None device choice made (`resolve_for_device`)
    launch: Launch  # rank, world size, local rank and the device (`dist.local_launch`)
    note: str | None = None

    def print_note(self) -> None:
        if self.note and self.launch.is_main:
            print(self.note, flush=True)


def set_up(cfg: TrainConfig) -> TrainSetup:
    """The one start of `ssdbench train` and `ssdbench demo`: the device picked (``--device``; a name
    torch does not know, or CUDA where there is none, is a one-line error) and ``cfg`` resolved for
    it, once; the process group is joined later, by each run (`trainer.train_run`)."""
    from ssdbench.dist import local_launch

    launch = local_launch(cfg.device)
    resolved, note = resolve_for_device(cfg, launch.device.type)
    return TrainSetup(resolved, launch, note)
