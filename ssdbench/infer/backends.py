"""Inference backends: PyTorch eager, ``torch.compile``, ONNX Runtime and OpenVINO behind one interface.

Every backend takes normalised images (N, 3, S, S) float32 (benchmark.md §5; S = ``input_size``) and has

- ``forward_raw(images) -> (locs (N, 4, B), scores (N, C, B))``: the network only, float32 raw
  maps, so that benchmarks time network and post-processing separately (not for model files with
  post-processing inside: ``has_raw_maps`` is False there);
- ``predict(images) -> PaddedDetections``: network + benchmark.md §4 post-processing
  (`ssdbench.model.postprocess.postprocess_padded`), fixed-size padded outputs read by name:
  ``boxes`` (N, K, 4) ltrb normalised, ``labels`` (N, K) int64 (0 = padding), ``scores`` (N, K)
  float32 and ``counts`` (N,), with no host sync.

Outputs live on the backend's device. Use ``make_backend(name, model_name, BackendOptions(...), ...)``;
`check_export` compares an exported file under ONNX Runtime with eager PyTorch
(``ssdbench export onnx --check``).
The file backends (`ssdbench.infer.file_backends`) take ``model_file`` (an .onnx, an OpenVINO IR,
a ``ssdbench quantize`` folder, or the official ``resnet34-ssd1200.onnx``); without one the network
is exported into the ONNX cache first. Imports go one way: this module uses
`ssdbench.infer.export` (to fill the ONNX cache), never back.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ssdbench.dist import pick_device
from ssdbench.infer.backend_base import Backend, BackendOptions
from ssdbench.infer.export import export_model
from ssdbench.infer.file_backends import OnnxRuntimeBackend, OpenVinoBackend
from ssdbench.infer.space_to_depth import apply_space_to_depth
from ssdbench.infer.space_to_depth import space_to_depth as to_space_to_depth
from ssdbench.io import atomic_write, cache_dir
from ssdbench.model.specs import SPECS, get_spec
from ssdbench.model.ssd import build_model
from ssdbench.precision import autocast, resolve_precision

BACKENDS = ("eager", "compile", "onnxruntime", "openvino")
FILE_BACKENDS = {"onnxruntime": OnnxRuntimeBackend, "openvino": OpenVinoBackend}
NHWC_BACKENDS = ("eager", "compile")  # the file backends' runtimes pick the model file's memory layout
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead", "max-autotune-no-cudagraphs")
__all__ = ["BACKENDS", "Backend", "BackendOptions", "CompileBackend", "EagerBackend", "OnnxRuntimeBackend",
           "OpenVinoBackend", "backend_target", "cached_onnx", "channels_last_for", "check_export", "make_backend",
           "model_file_network"]


class EagerBackend(Backend):
    """PyTorch eager: fp32, or bf16/fp16 autocast (CUDA; bf16 only on CPU), optional channels_last
    and space-to-depth first conv, under ``torch.inference_mode``."""

    name = "eager"

    def __init__(self, model: nn.Module, model_name: str, options: BackendOptions):
        super().__init__(model_name, model.spec.input_size, options.device, options.dtype)
        channels_last, space_to_depth = options.channels_last, options.space_to_depth
        if self.device.type == "cpu" and self.dtype == "fp16":
            raise ValueError("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        # A private copy: the caller's network is never modified (device moves and memory-format
        # changes are in-place in PyTorch).
        module = apply_space_to_depth(model) if space_to_depth else copy.deepcopy(model)
        module = module.to(self.device).eval()
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.channels_last = channels_last
        self.space_to_depth = space_to_depth

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        x = images.to(self.device, non_blocking=True)
        if self.space_to_depth:
            x = to_space_to_depth(x)  # (N, 12, S/2, S/2), benchmark.md §7
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward_raw(self, images):
        x = self._prepare(images)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            locs, scores = self.module(x)
        return locs.float(), scores.float()

    def describe(self) -> dict:
        return {**super().describe(), "channels_last": self.channels_last, "space_to_depth": self.space_to_depth}


class CompileBackend(EagerBackend):
    """``torch.compile`` of the eager module, static shapes (one graph per batch size).

    ``mode="reduce-overhead"`` adds CUDA graphs (GPU only), again one per batch size; outputs are
    cloned because the graph's output buffers are reused by the next replay. `compile_backend` is
    torch.compile's backend ("inductor"; "aot_eager" checks graph capture without code generation).
    """

    name = "compile"

    def __init__(self, model, model_name, options: BackendOptions):
        super().__init__(model, model_name, options)
        mode, compile_backend = options.compile_mode, options.compile_backend
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        if self.device.type != "cuda" and mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"compile mode {mode!r} uses CUDA graphs / GPU autotuning; use 'default' on CPU")
        _allow_one_graph_per_batch_size()
        if self.device.type == "cpu" and compile_backend == "inductor":
            _freeze_weights()
        self.mode, self.compile_backend = mode, compile_backend
        self.cuda_graphs = mode in ("reduce-overhead", "max-autotune")
        options = {"mode": mode} if compile_backend == "inductor" else {}  # modes are inductor's
        self.module = torch.compile(self.module, backend=compile_backend, dynamic=False, **options)

    batch_buckets: tuple[int, ...] = ()  # set by `use_batch_buckets`; () = every batch size as it comes

    def use_batch_buckets(self, max_batch: int) -> tuple[int, ...]:
        """Pad every batch up to the next of 1, 2, 4, ..., ``max_batch``: one graph per bucket, so a
        server's odd batch sizes never compile inside a timed run (warm each bucket up once)."""
        sizes = {1, max_batch} | {1 << k for k in range(max_batch.bit_length()) if 1 << k < max_batch}
        self.batch_buckets = tuple(sorted(sizes))
        return self.batch_buckets

    def forward_raw(self, images):
        n = images.shape[0]
        bucket = next((b for b in self.batch_buckets if b >= n), n)
        if bucket > n:  # zero images fill the bucket; their outputs are dropped
            images = torch.cat([images, images.new_zeros((bucket - n, *images.shape[1:]))])
        x = self._prepare(images)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.inference_mode(), autocast(self.device, self.dtype):
            locs, scores = self.module(x)
        if self.cuda_graphs:
            return locs[:n].float().clone(), scores[:n].float().clone()
        return locs[:n].float(), scores[:n].float()

    def describe(self) -> dict:
        return {**super().describe(), "compile_mode": self.mode, "compile_backend": self.compile_backend}


def _freeze_weights() -> None:
    """Inductor's freezing: weights become constants, so on CPU the convolutions run oneDNN
    kernels with weights packed once (and bf16-cast once under autocast) instead of per call.
    Process-wide; it only affects graphs compiled under inference mode."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True


def _allow_one_graph_per_batch_size(limit: int = 64) -> None:
    """Benchmarks sweep batch sizes 1..128; dynamo's default recompile limit (8) would fall back to
    eager after eight shapes."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(cfg, key):
            setattr(cfg, key, max(getattr(cfg, key), limit))


def _state_hash(model: nn.Module) -> str:
    """Short content hash of a state dict: the cache key of its exported ONNX file."""
    h = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cached_onnx(model: nn.Module, model_name: str, postprocess="outside", space_to_depth=False) -> Path:
    """Export `model` once into ``$SSDBENCH_CACHE/onnx/`` (keyed by its weights) and return the path.

    Written atomically (`ssdbench.io.atomic_write`): concurrent processes never read half a file.
    """
    tag = f"{model_name}{'-s2d' if space_to_depth else ''}-{postprocess}-v2-{_state_hash(model)}"
    path = cache_dir("onnx", f"{tag}.onnx")
    if not path.is_file():
        net = apply_space_to_depth(model) if space_to_depth else model
        atomic_write(path, lambda tmp: export_model(net, model_name, tmp, postprocess=postprocess))
    return path


def make_backend(
    name: str,
    model_name: str | None,
    options: BackendOptions | None = None,
    *,
    model: nn.Module | None = None,
    weights=None,
    allow_pickle: bool = False,
    num_classes: int | None = None,
    model_file=None,
) -> Backend:
    """Build a backend by name ("eager", "compile", "onnxruntime", "openvino") for `model_name`.

    `options` (`BackendOptions`, default: fp32 on the CPU) says how it runs; its device and dtype
    are resolved here (`backend_target`), its channels_last checked (`channels_last_for`).
    `weights`, `allow_pickle` and `num_classes` as for `build_model` (no weights: random init);
    `model` reuses an already built network instead. For the file backends, `model_file` is used as
    is: its graph decides space-to-depth, quantization and where post-processing runs
    (`ssdbench.infer.model_file`); `model_name` may then be None when the file names its network.
    Without a file the network is exported into the ONNX cache first.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    options = options or BackendOptions()
    device, dtype = backend_target(name, options.device, options.dtype)
    options = replace(options, device=device, dtype=dtype,
                      channels_last=channels_last_for(name, options.channels_last))
    if name in FILE_BACKENDS:
        cls = FILE_BACKENDS[name]
        if model_file is not None:
            model_name = model_name or model_file_network(model_file)
            return cls(model_file, model_name, get_spec(model_name).input_size, options)
    elif model_file is not None:
        raise ValueError(f"--model-file runs with --backend onnxruntime or openvino, not {name}")
    if model is None:
        model = build_model(model_name, weights=weights, num_classes=num_classes, allow_pickle=allow_pickle)
    model = model.eval()
    if name == "eager":
        return EagerBackend(model, model_name, options)
    if name == "compile":
        return CompileBackend(model, model_name, options)
    path = cached_onnx(model, model_name, options.onnx_postprocess, options.space_to_depth)
    return FILE_BACKENDS[name](path, model_name, model.spec.input_size, options)


def backend_target(name: str, device="auto", dtype: str | None = "auto") -> tuple[torch.device, str]:
    """(device, dtype) backend ``name`` runs with for ``--device`` and ``--dtype`` values.

    ``device`` auto (or None) is the GPU when there is one, else the CPU (`ssdbench.dist.pick_device`),
    except for openvino, which runs on the CPU only (auto picks it; another device is a ValueError
    naming ``--device``). ``dtype`` auto (or None) is `ssdbench.precision.default_precision` of the
    device, except for onnxruntime: fp32 on every device (INT8 comes from a quantized file).
    """
    target = backend_device(name, device)
    if name == "onnxruntime" and dtype in (None, "auto"):
        dtype = "fp32"
    return target, resolve_precision(dtype, target)


def backend_device(name: str, device="auto", flag: str = "--device") -> torch.device:
    """The device backend ``name`` runs on for a ``--device`` value (`backend_target`); errors name
    ``flag`` (the flag, or the file or preset that set the value)."""
    if name == "openvino":
        return _openvino_device(device, flag)
    return pick_device(str(device or "auto"), flag=flag)


def _openvino_device(device, flag: str) -> torch.device:
    """The CPU for a ``--device`` value given to the openvino backend: auto (or None) picks it;
    any other device is a ValueError naming ``flag``."""
    if device is None or str(device) == "auto":
        return torch.device("cpu")
    try:
        kind = torch.device(str(device)).type
    except RuntimeError:
        raise ValueError(f"{flag} {str(device)!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if kind != "cpu":
        raise ValueError(f"{flag} {device}: the openvino backend runs on the CPU; pass --device cpu")
    return torch.device("cpu")


def channels_last_for(name: str, setting: str | bool = "auto", dtype: str | None = None, device=None) -> bool:
    """Whether backend ``name`` runs NHWC (channels_last) for a ``--channels-last`` setting: "on"
    (or True), "off" (or False) or "auto": on where ``dtype`` resolves to bf16 on ``device``
    (`resolve_precision`; no device: off, a check of the setting alone). Only eager and compile have
    the choice: a file backend's runtime picks the model file's memory layout, so "on" there is a
    ValueError naming the flag."""
    if setting in ("off", False):
        return False
    if name not in NHWC_BACKENDS:
        if setting in ("on", True):
            raise ValueError(f"--channels-last on does not apply to --backend {name} (the runtime picks the "
                             "model file's memory layout); leave it auto or off")
        return False
    if setting in ("on", True):
        return True
    return device is not None and resolve_precision(dtype, device) == "bf16"


def model_file_network(model_file) -> str:
    """The network a model file was made from (quantize.json, our ONNX metadata, our OpenVINO IR's
    rt_info); the official file's network (SSD-Large) when it names none."""
    from ssdbench.infer import model_file as MF

    path, sidecar = MF.resolve_path(model_file)
    if sidecar.get("model"):
        return sidecar["model"]
    if path.suffix == ".onnx":
        info = MF.inspect_onnx(path, sidecar)
        return info.model_name or _network_of_size(info.input_size)
    import openvino as ov

    from ssdbench.infer.file_backends import read_model

    info = MF.inspect_openvino(path, read_model(ov.Core(), path), sidecar)
    return info.model_name or _network_of_size(info.input_size)


def _network_of_size(size: int | None) -> str:
    """A file that names no network (the official files): the network of its input size, else SSD-Large."""
    return next((spec.name for spec in SPECS.values() if spec.input_size == size), "ssd1200_r34")


def check_export(path, model: nn.Module, model_name: str, space_to_depth=False) -> str:
    """One-line comparison of ONNX Runtime (file at `path`) and eager PyTorch (`model`) on one image:
    detections per side and the largest box difference (ltrb normalised) over the first common ones."""
    eager = make_backend("eager", model_name, BackendOptions(space_to_depth=space_to_depth), model=model)
    ort_backend = make_backend("onnxruntime", model_name, model_file=path)
    size = eager.input_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    ref, got = eager.predict(x), ort_backend.predict(x)
    ref_n, got_n = int(ref.counts[0]), int(got.counts[0])
    n = min(ref_n, got_n)
    box_diff = (ref.boxes[0, :n] - got.boxes[0, :n]).abs().max().item() if n else 0.0
    return (f"check: detections eager {ref_n} / onnxruntime {got_n}, "
            f"max box difference over the first {n}: {box_diff:.2e}")
