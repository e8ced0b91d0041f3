"""Weight files: our checkpoints, the MLPerf references' layouts and torchvision's resnet34.

Layouts recognised by their keys (after stripping DDP ``module.`` / torch.compile ``_orig_mod.``):

- ``ssdbench``: our own `SSD` state dict (``backbone.*``, ``additional_blocks.*``, ``loc.*``,
  ``conf.*``), raw or inside a checkpoint dict under ``"model"`` (other keys such as the optimizer
  are ignored). Always read with ``torch.load(..., weights_only=True)``, numeric numpy arrays
  allowlisted (`numpy_safe_globals`) because training checkpoints carry numpy RNG states.
- ``mlperf``: the MLPerf references' SSD-R34 (inference ``models/ssd_r34.py``, training
  ``ssd300.py``; both use ``base_model.ResNet34``): ``model.layer1`` = Sequential(conv1, bn1, relu,
  maxpool, layer1, layer2), ``model.layer2`` = Sequential(layer3), so ``model.layer1.0`` = conv1,
  ``.1`` = bn1, ``.4`` = layer1, ``.5`` = layer2, ``model.layer2.0`` = layer3; extras and heads
  have our names. The training reference saves ``{"model": state_dict, "label_map": ...}``, with
  ``module.`` prefixes when trained with DDP. SSD300 and SSD1200 share every parameter shape.
- ``torchvision``: ImageNet ``resnet34-333f7ec4.pth`` (``conv1``, ``bn1``, ``layer1..4``, ``fc``):
  loads into the trunk only; ``layer4`` and ``fc`` are ignored.
- The official ``resnet34-ssd1200.pytorch`` is a pickled whole module: read only when the caller
  passes ``allow_pickle=True`` (unpickling runs code from the file), then converted as ``mlperf``.

A file that is no weight file at all (random bytes, an empty file, a truncated zip archive) raises
`WeightsError` (a ValueError) in one line naming the file and what it is not; so does a checkpoint
that records another model than the one asked for (`read_state_dict` with ``model_name``):
SSD300 and SSD1200 share every parameter shape, so the shapes alone would let it through.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ssdbench.model.specs import ModelSpec

# MLPerf reference prefix -> our prefix (benchmark.md §7; reference base_model.ResNet34).
_MLPERF_TRUNK = {
    "model.layer1.0.": "backbone.conv1.",
    "model.layer1.1.": "backbone.bn1.",
    "model.layer1.4.": "backbone.layer1.",
    "model.layer1.5.": "backbone.layer2.",
    "model.layer2.0.": "backbone.layer3.",
}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_TORCHVISION_IGNORED = ("layer4.", "fc.")
_OPTIONAL_SUFFIX = "num_batches_tracked"  # absent from pre-0.4.1 files such as resnet34-333f7ec4.pth
_SHOW = 5  # keys listed per category in error messages

class WeightsError(ValueError):
    """A weight file that cannot be used; the message names the file and why (one line)."""


PICKLE_HINT = (
    "unpickling runs code stored in the file; if you trust it, pass allow_pickle=True "
    "(command line: --allow-pickle)"
)


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes from every key."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def _unwrap(obj, origin: str) -> dict[str, torch.Tensor]:
    """A loaded object (state dict, checkpoint dict or module) -> flat tensor state dict."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return inner.state_dict()
            if _is_tensor_dict(inner):
                return dict(inner)
        raise ValueError(f"{origin}: no state dict found; top-level keys are {sorted(map(str, obj))[:10]}")
    raise ValueError(f"{origin}: holds a {type(obj).__name__}, not a state dict or checkpoint")


def read_state_dict(source, allow_pickle: bool = False, model_name: str | None = None) -> dict[str, torch.Tensor]:
    """A weight file (path) or an in-memory object -> flat state dict, wrapper prefixes stripped.

    Files are read with ``weights_only=True``. A file that needs full unpickling (a pickled
    module) raises ValueError unless `allow_pickle` is True. ``model_name``: the network the
    weights are for; a checkpoint recording another (``config["model"]``) raises WeightsError.
    """
    if isinstance(source, (str, os.PathLike)):
        obj, origin = load_file(Path(source), allow_pickle), str(source)
    else:
        obj, origin = source, "weights"
    recorded = _recorded_model(obj)
    if model_name is not None and recorded is not None and recorded != model_name:
        raise WeightsError(f"{origin} is a checkpoint of model {recorded}, not {model_name} "
                           f"(leave --model out, or pass --model {recorded})")
    return _strip_wrappers(_unwrap(obj, origin))


def _recorded_model(obj) -> str | None:
    """``config["model"]`` of one of our training checkpoints, else None."""
    config = obj.get("config") if isinstance(obj, Mapping) else None
    name = config.get("model") if isinstance(config, Mapping) else None
    return name if isinstance(name, str) else None


def load_file(path: str | Path, allow_pickle: bool | None = False, what: str = "weights file"):
    """The object the torch file ``path`` holds, on the CPU: the one place ssdbench calls `torch.load`
    (weight files here, training checkpoints in `train.checkpoint.load_checkpoint`).

    Read with ``weights_only=True``, numeric numpy arrays allowlisted (`numpy_safe_globals`); a file
    that needs full unpickling is read only with ``allow_pickle`` (unpickling runs its code), with
    stand-ins for classes this process cannot import; ``allow_pickle=None``: the caller has no such
    option (training checkpoints), so the error does not offer it. FileNotFoundError ("{what} not found: PATH"),
    or `WeightsError` ("PATH: why", from the file's first bytes and torch's reason in brief).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a foreign pickle: said below
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if allow_pickle is None:
            raise WeightsError(f"{path}: {unreadable_reason(path, exc)}") from None
        if not allow_pickle:
            raise WeightsError(f"{path}: {_weights_only_reason(path, str(exc))}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:  # truncated zip, foreign zip, empty file
        raise WeightsError(f"{path}: {unreadable_reason(path, exc)}") from None
    try:
        with warnings.catch_warnings():
            # Legacy files compare each module's saved source with ours; only the tensors matter here.
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_StandInPickle)
    except Exception as exc:  # noqa: BLE001 - whatever a foreign pickle raises, the file is unusable
        raise WeightsError(f"{path}: {unreadable_reason(path, exc)}") from None


def unreadable_reason(path: str | Path, exc: BaseException) -> str:
    """What an unreadable file is not, from its first bytes, and torch's reason in brief."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    reason = _first_sentence(str(exc)) or type(exc).__name__
    if not head:
        return "empty file, not a PyTorch weight file"
    if head.startswith(b"PK"):
        return f"damaged PyTorch zip archive, truncated or corrupted ({reason})"
    if head[:1] == b"\x80":  # the PROTO opcode: a pickle, but not one torch can read
        return f"not a PyTorch weight file: a pickle torch cannot read ({reason})"
    return f"not a PyTorch weight file: neither a zip archive nor a pickle ({reason})"


def _first_sentence(message: str) -> str:
    """The first line of ``message`` up to its first full stop (torch's messages run on)."""
    line = next((ln.strip() for ln in message.splitlines() if ln.strip()), "")
    return line.split(". ")[0].rstrip(".")


def checkpoint_model_name(source) -> str | None:
    """Model name recorded in one of our training checkpoints (``config["model"]``), else None.

    Lets `eval`, `predict`, `export` and `loadgen` pick the right network for a checkpoint without
    `--model`. Reference and torchvision files record no name: None.
    """
    if source is None or not Path(source).is_file():
        return None
    try:
        return _recorded_model(load_file(Path(source), allow_pickle=False))
    except ValueError:
        return None


def checkpoint_categories(source) -> list[int] | None:
    """The category ids, in label order, recorded in one of our training checkpoints; else None."""
    if source is None or not Path(source).is_file():
        return None
    try:
        obj = load_file(Path(source), allow_pickle=False)
    except ValueError:
        return None
    cats = obj.get("categories") if isinstance(obj, Mapping) else None
    return [int(c) for c in cats] if isinstance(cats, (list, tuple)) else None


def numpy_safe_globals() -> list:
    """numpy array and scalar reconstruction, allowlisted for ``weights_only=True``: training
    checkpoints carry numpy RNG states (a uint32 array). Numeric dtypes only; an object array
    would still need its elements to pass the weights-only unpickler."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    names = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
             "Float16", "Float32", "Float64")
    module = getattr(np, "dtypes", None)  # numpy >= 1.25
    dtypes = [getattr(module, f"{n}DType") for n in names if hasattr(module, f"{n}DType")]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def _weights_only_reason(path: Path, message: str) -> str:
    """One line from torch's long weights_only failure message."""
    found = re.search(r"GLOBAL (\S+)", message)
    if found:
        return (f"holds pickled Python objects ({found.group(1)}; e.g. a whole nn.Module such as "
                f"resnet34-ssd1200.pytorch), not only tensors; {PICKLE_HINT}")
    detail = [line.strip() for line in message.splitlines() if line.strip()]
    detail = next((d for d in detail if "operand" in d or "load key" in d), detail[-1] if detail else "")
    return unreadable_reason(path, ValueError(detail))


class _StandIn(nn.Module):
    """Placeholder for a class the pickle names but this process cannot import (for example the
    reference's ``models.ssd_r34.SSD_R34`` or torchvision's ``BasicBlock``): being an nn.Module,
    it restores ``_modules`` / ``_parameters`` / ``_buffers``, which is all `state_dict` needs."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        if isinstance(state, dict):
            super().__setstate__(state)
        else:
            super().__init__()


class _StandInUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_StandIn,), {"__module__": f"ssdbench.standin.{module}"})


class _StandInPickle:
    """A `pickle_module` for torch.load whose Unpickler tolerates missing classes."""

    Unpickler = _StandInUnpickler
    load = staticmethod(lambda f, **kw: _StandInUnpickler(f, **kw).load())
    loads = staticmethod(lambda b, **kw: _StandInUnpickler(io.BytesIO(b), **kw).load())
    __name__ = "ssdbench_standin_pickle"


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """``"ssdbench"``, ``"mlperf"`` or ``"torchvision"``, from the keys; ValueError otherwise."""
    keys = list(state)
    if any(k.startswith("backbone.") for k in keys):
        return "ssdbench"
    if any(k.startswith("model.layer1.") for k in keys):
        return "mlperf"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in keys):
        return "torchvision"
    raise ValueError(
        f"unrecognised weight layout ({len(keys)} keys, first: {keys[:_SHOW]}); expected ssdbench "
        "(backbone.*), MLPerf reference (model.layer1.*) or torchvision resnet34 (conv1.*, layer1.*) keys"
    )


def to_ssdbench(state: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Rename the keys of a `layout` state dict to ours (torchvision: trunk keys only, ``backbone.*``)."""
    if layout == "ssdbench":
        return dict(state)
    if layout == "torchvision":
        return {f"backbone.{k}": v for k, v in state.items() if not k.startswith(_TORCHVISION_IGNORED)}
    if layout != "mlperf":
        raise ValueError(f"unknown layout {layout!r}")
    out = {}
    for key, value in state.items():
        for old, new in _MLPERF_TRUNK.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def _listing(label: str, items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{len(items)} {label}: {', '.join(items[:_SHOW])}{more}"


def check_state(target: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Raise one ValueError listing missing keys, unexpected keys and shape mismatches, if any.

    BatchNorm ``num_batches_tracked`` counters may be missing (old files do not have them).
    """
    missing = [k for k in target if k not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in target.items() if k in state and state[k].shape != v.shape]
    problems = [_listing(label, items) for label, items in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched)) if items]
    if problems:
        raise ValueError(f"{origin} does not fit the model: " + "; ".join(problems))


def _copy_in(module: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    target = module.state_dict()
    check_state(target, state, origin)
    with torch.no_grad():
        for key, value in state.items():
            target[key].copy_(value)


def _name(source) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "state dict"


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], name: str = "state dict") -> str:
    """Load an already-read flat state dict (any known layout) into an `SSD`; returns the layout.

    torchvision resnet34 weights fill the trunk only (the rest keeps its values). Every other
    layout must cover the whole model: missing/unexpected keys or shape mismatches raise one
    ValueError naming the first few of each (`name` says where the weights came from).
    """
    layout = detect_layout(state)
    converted = to_ssdbench(state, layout)
    origin = f"{name} ({layout} layout)"
    if layout == "torchvision":
        trunk = {k[len("backbone."):]: v for k, v in converted.items()}
        _copy_in(model.backbone, trunk, origin)
    else:
        _copy_in(model, converted, origin)
    return layout


def load_weights(model: nn.Module, source, allow_pickle: bool = False) -> str:
    """Load a weight file (path) or state dict / checkpoint dict into an `SSD`; returns the layout.

    See the module docstring for the layouts; `allow_pickle` opts in to full unpickling (pickled
    whole modules such as ``resnet34-ssd1200.pytorch``). Errors as in `load_state`.
    """
    return load_state(model, read_state_dict(source, allow_pickle=allow_pickle), _name(source))


def load_backbone(model: nn.Module, source, allow_pickle: bool = False) -> None:
    """Load torchvision ImageNet resnet34 weights (``resnet34-333f7ec4.pth``) into ``model.backbone``."""
    state = read_state_dict(source, allow_pickle=allow_pickle)
    layout = detect_layout(state)
    if layout != "torchvision":
        raise ValueError(f"{_name(source)}: backbone weights must be a torchvision resnet34 state dict, "
                         f"got the {layout} layout")
    load_state(model, state, _name(source))


def infer_num_classes(state: Mapping[str, torch.Tensor], spec: ModelSpec) -> int | None:
    """Class count (with background) of a full-model state dict, from its first class head; None if
    the weights have no heads (torchvision trunk) or do not divide evenly."""
    weight = state.get("conf.0.weight")
    if weight is None or weight.shape[0] % spec.boxes_per_cell[0]:
        return None
    return weight.shape[0] // spec.boxes_per_cell[0]
