"""MLPerf Training `:::MLLOG` logging (ruleset 1.1.0) through `mlperf_logging.mllog`.

`MLPerfLogger` is the only interface the training loop uses: timing events (init, run, block,
epoch, eval), the hyperparameters under the ruleset's key names, and `weights_initialization` once
per tensor under the tensor names of the ruleset's `closed_ssd.yaml`. Only rank 0 writes.
The official compliance checker reads these logs in `train.mlperf_checks.compliance`.

Tensor names (`ruleset_tensor_names`): the 1.1.0 ruleset lists the tensors of NVIDIA's MXNet
(Gluon) SSD, named by Gluon's per-scope creation counters. Our modules map onto them as follows:

| ssdbench parameter (torchvision resnet34 names)    | ruleset tensor                                 |
|----------------------------------------------------|------------------------------------------------|
| conv1.weight; bn1.weight / bn1.bias                | ssd0_resnetmlperf0_conv0_weight; _batchnorm0_gamma / _beta |
| layerS.B.{conv1,conv2,downsample.0}.weight         | ssd0_resnetmlperf0_stageS_convI_weight         |
| layerS.B.{bn1,bn2,downsample.1}.{weight,bias}      | ssd0_resnetmlperf0_stageS_batchnormI_{gamma,beta} |
| extra block k: 1x1 conv .{weight,bias}             | ssd0_expand_trans_convK_{weight,bias}          |
| extra block k: 3x3 conv .{weight,bias}             | ssd0_expand_convK_{weight,bias}                |
| head level k: loc conv and conf conv .{weight,bias}| ssd0_convpredictorK_conv0_{weight,bias}        |

I counts the convolutions (and, separately, the batch norms) of stage S in creation order: the
block's conv1, conv2, then its projection shortcut, block after block. This is how Gluon numbers a
BasicBlockV1 whose body is created before its downsample branch, and it gives exactly the counts
the ruleset lists (stage1: 6, stage2: 9, stage3: 13 convolutions). MXNet predicts locations and
classes with one fused convolution per level; our separate loc and conf convolutions of level K
are both logged as that one tensor (the checker requires each name exactly once).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import Any

import torch
from mlperf_logging.mllog import constants as C
from mlperf_logging.mllog import mllog

CLOSED_MODEL, CLOSED_DATASET = "ssd300_r34", "coco2017"
QUALITY_TARGET = 0.23  # benchmark.md §6: COCO AP@[.5:.95]

_BLOCK = re.compile(r"(?:^|\.)layer(\d+)\.(\d+)\.(conv1|conv2|bn1|bn2|downsample\.0|downsample\.1)\.(weight|bias)$")
_STEM = re.compile(r"(?:^|\.)(conv1|bn1)\.(weight|bias)$")
_BN_SUFFIX = {"weight": "gamma", "bias": "beta"}


def _trunk_name(name: str, counters: dict) -> str | None:
    """Ruleset name of a trunk parameter; ``counters`` numbers convs / bns per stage."""
    m = _BLOCK.search(name)
    if m:
        stage, _block, part, kind = m.groups()
        is_bn = part.startswith("bn") or part == "downsample.1"
        key = (stage, "batchnorm" if is_bn else "conv")
        if kind == "weight":  # a new module: the weight comes first in registration order
            counters[key] = counters.get(key, -1) + 1
        suffix = _BN_SUFFIX[kind] if is_bn else kind
        return f"ssd0_resnetmlperf0_stage{stage}_{key[1]}{counters[key]}_{suffix}"
    m = _STEM.search(name)
    if m:
        part, kind = m.groups()
        return (f"ssd0_resnetmlperf0_batchnorm0_{_BN_SUFFIX[kind]}" if part == "bn1"
                else f"ssd0_resnetmlperf0_conv0_{kind}")
    return None


def _head_and_extra_names(model: torch.nn.Module, done: set[str]) -> dict[str, str]:
    """Map the convolutions outside the trunk: heads (module path containing loc / conf) by
    level, extra blocks by position (a 1x1 conv opens block k, the 3x3 after it closes it)."""
    out: dict[str, str] = {}
    level = {"loc": -1, "conf": -1}
    block = -1
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Conv2d) or f"{mod_name}.weight" in done:
            continue
        head = next((h for h in ("loc", "conf") if re.search(rf"(^|[._]){h}", mod_name)), None)
        if head:
            level[head] += 1
            stem = f"ssd0_convpredictor{level[head]}_conv0"
        elif mod.kernel_size == (1, 1):
            block += 1
            stem = f"ssd0_expand_trans_conv{block}"
        else:
            stem = f"ssd0_expand_conv{block}"
        for kind, _p in mod.named_parameters(recurse=False):
            out[f"{mod_name}.{kind}" if mod_name else kind] = f"{stem}_{kind}"
    return out


def ruleset_tensor_names(model: torch.nn.Module) -> dict[str, str]:
    """Our parameter name -> ruleset tensor name, for every parameter of ``model`` (see the table
    in the module docstring). Raises ValueError naming a parameter that fits no rule."""
    model = getattr(model, "module", model)
    counters: dict = {}
    mapping: dict[str, str] = {}
    for name, _p in model.named_parameters():
        ruleset = _trunk_name(name, counters)
        if ruleset:
            mapping[name] = ruleset
    mapping.update(_head_and_extra_names(model, set(mapping)))
    missing = [n for n, _p in model.named_parameters() if n not in mapping]
    if missing:
        raise ValueError(f"parameter {missing[0]!r} has no MLPerf tensor name ({len(missing)} unmapped)")
    return mapping


def resolve_division(cfg: dict) -> str:
    """"closed" only for ssd300_r34 on COCO 2017 (the benchmark as defined); otherwise "open"."""
    wanted = str(cfg.get("submission_division", "closed"))
    if wanted not in ("closed", "open"):
        raise ValueError(f"submission_division must be 'closed' or 'open', not {wanted!r}")
    is_benchmark = cfg.get("model") == CLOSED_MODEL and cfg.get("dataset") == CLOSED_DATASET
    if wanted == "closed" and not is_benchmark:
        warnings.warn(f"closed division needs model {CLOSED_MODEL} on {CLOSED_DATASET}; "
                      f"logging {cfg.get('model')} on {cfg.get('dataset')} as open division", stacklevel=3)
        return "open"
    return wanted


# cfg key -> MLPerf key (benchmark.md §6; the names closed_ssd.yaml checks)
_HYPERPARAMETERS = {
    "global_batch_size": C.GLOBAL_BATCH_SIZE,
    "base_lr": C.OPT_BASE_LR,
    "weight_decay": C.OPT_WEIGHT_DECAY,
    "warmup_steps": C.OPT_LR_WARMUP_STEPS,
    "warmup_factor": C.OPT_LR_WARMUP_FACTOR,
    "decay_epochs": C.OPT_LR_DECAY_BOUNDARY_EPOCHS,
    "bn_span": C.MODEL_BN_SPAN,
    "max_samples": C.MAX_SAMPLES,
    "seed": C.SEED,
    "train_samples": C.TRAIN_SAMPLES,
    "eval_samples": C.EVAL_SAMPLES,
}


class _FileHandler(logging.FileHandler):
    """A log line that cannot be written (full disk) fails the run with one line naming the file,
    instead of `logging` printing a traceback and going on with a hole in the MLPerf log."""

    def handleError(self, record) -> None:
        from ssdbench.io import WriteError

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            raise WriteError(self.baseFilename, exc) from exc
        super().handleError(record)


class MLPerfLogger:
    """`:::MLLOG` lines to ``path`` (stdout when None), written by rank 0 only.

    The file is appended to, so a log is never lost; start each run with a fresh path.
    """

    def __init__(self, path: str | os.PathLike | None = None, rank: int = 0, enabled: bool = True):
        self.enabled = bool(enabled) and rank == 0
        self.path = None if path is None else os.fspath(path)
        self._logger = logging.getLogger(f"ssdbench.mllog.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if self.enabled:
            handler = _FileHandler(self.path, mode="a") if self.path else logging.StreamHandler(sys.stdout)
            self._logger.addHandler(handler)
        # stack offset 3: the caller of our public method, not this module (file/lineno metadata)
        self._mllog = mllog.MLLogger(logger=self._logger, default_stack_offset=3)

    def _log(self, kind: str, key: str, value: Any = None, metadata: dict | None = None) -> None:
        if self.enabled:
            getattr(self._mllog, kind)(key=key, value=value, metadata=metadata)

    def event(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        self._log("event", key, value, metadata)

    def close(self) -> None:
        for handler in list(self._logger.handlers):
            handler.flush()
            handler.close()
            self._logger.removeHandler(handler)

    # ---- setup -------------------------------------------------------------------------------
    def init_start(self) -> None:
        self._log("start", C.INIT_START)

    def init_stop(self) -> None:
        self._log("end", C.INIT_STOP)

    def setup(self, cfg: dict, model: torch.nn.Module | None = None) -> str:
        """Log submission_*, the hyperparameters and the weight initialisation; returns the
        division logged (a closed request for another model or dataset becomes open)."""
        division = resolve_division(cfg)
        self._log_submission(cfg, division)
        self.event(C.CACHE_CLEAR, bool(cfg.get("cache_clear", False)))
        self.event(C.GRADIENT_ACCUMULATION_STEPS, int(cfg.get("gradient_accumulation_steps", 1)))
        for key, ml_key in _HYPERPARAMETERS.items():
            if key not in cfg:
                raise ValueError(f"MLPerf log: config key {key!r} is missing")
            value = cfg[key]
            self.event(ml_key, list(value) if isinstance(value, (list, tuple)) else value)
        if model is not None:
            self._log_weights(model, strict=division == "closed")
        return division

    def _log_submission(self, cfg: dict, division: str) -> None:
        self.event(C.SUBMISSION_BENCHMARK, cfg.get("submission_benchmark", C.SSD))
        self.event(C.SUBMISSION_ORG, cfg.get("submission_org") or "ssdbench")
        self.event(C.SUBMISSION_DIVISION, division)
        self.event(C.SUBMISSION_STATUS, cfg.get("submission_status") or "research")
        self.event(C.SUBMISSION_PLATFORM, cfg.get("submission_platform") or _platform())

    def _log_weights(self, model: torch.nn.Module, strict: bool) -> None:
        try:
            names = ruleset_tensor_names(model)
        except ValueError:
            if strict:
                raise
            # open division: no tensor list is checked; name tensors after our parameters
            names = {n: n.replace(".", "_") for n, _p in model.named_parameters()}
        for tensor in dict.fromkeys(names.values()):  # each once, in model order
            self.event(C.WEIGHTS_INITIALIZATION, metadata={"tensor": tensor})

    # ---- timing ------------------------------------------------------------------------------
    def run_start(self) -> None:
        self._log("start", C.RUN_START)

    def block_start(self, first_epoch: int, count: int) -> None:
        self._log("start", C.BLOCK_START, metadata={C.FIRST_EPOCH_NUM: first_epoch, C.EPOCH_COUNT: count})

    def block_stop(self, first_epoch: int) -> None:
        self._log("end", C.BLOCK_STOP, metadata={C.FIRST_EPOCH_NUM: first_epoch})

    def epoch_start(self, epoch: int) -> None:
        self._log("start", C.EPOCH_START, metadata={C.EPOCH_NUM: epoch})

    def epoch_stop(self, epoch: int) -> None:
        self._log("end", C.EPOCH_STOP, metadata={C.EPOCH_NUM: epoch})

    def eval_start(self, epoch: int) -> None:
        self._log("start", C.EVAL_START, metadata={C.EPOCH_NUM: epoch})

    def eval_accuracy(self, value: float, epoch: int) -> None:
        self.event(C.EVAL_ACCURACY, float(value), metadata={C.EPOCH_NUM: epoch})

    def eval_stop(self, epoch: int) -> None:
        self._log("end", C.EVAL_STOP, metadata={C.EPOCH_NUM: epoch})

    def run_stop(self, success: bool) -> None:
        self._log("end", C.RUN_STOP, metadata={C.STATUS: C.SUCCESS if success else C.ABORTED})
        for handler in self._logger.handlers:
            handler.flush()


def _platform() -> str:
    """A default submission_platform: the accelerator (or CPU) this process runs on."""
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x{torch.cuda.get_device_name(0)}"
    return f"cpu-{os.cpu_count()}cores"
