"""Inference backends: PyTorch eager, ``torch.compile`` and ONNX Runtime behind one interface.

Every backend takes normalised images (N, 3, S, S) float32 (benchmark.md §5; S = ``input_size``) and has

- ``forward_raw(images) -> (locs (N, 4, B), scores (N, C, B))``: the network only, float32 raw
  maps, so that benchmarks time network and post-processing separately;
- ``predict(images) -> PaddedDetections``: network + benchmark.md §4 post-processing
  (`ssdbench.model.postprocess.postprocess_padded`), fixed-size padded outputs read by name:
  ``boxes`` (N, K, 4) ltrb normalised, ``labels`` (N, K) int64 (0 = padding), ``scores`` (N, K)
  float32 and ``counts`` (N,), with no host sync.

Outputs live on the backend's device. Use ``make_backend(name, model_name, ...)``; `check_export`
compares an exported file under ONNX Runtime with eager PyTorch (``ssdbench export onnx --check``).
Imports go one way: this module uses `ssdbench.infer.export` (to fill the ONNX cache), never back.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch
from torch import nn

from ssdbench.dist import pick_device
from ssdbench.infer.export import export_model
from ssdbench.infer.space_to_depth import apply_space_to_depth
from ssdbench.infer.space_to_depth import space_to_depth as to_space_to_depth
from ssdbench.io import atomic_write, cache_dir
from ssdbench.model.postprocess import PaddedDetections, postprocess_padded
from ssdbench.model.specs import get_spec
from ssdbench.model.ssd import build_model
from ssdbench.precision import DTYPES, autocast

BACKENDS = ("eager", "compile", "onnxruntime")
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead", "max-autotune-no-cudagraphs")


class Backend:
    """Common part: input checks and post-processing. Subclasses implement `forward_raw`."""

    name = "base"

    def __init__(self, model_name: str, input_size: int, device: str | torch.device, dtype: str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        self.model_name = model_name
        self.input_size = input_size
        self.device = pick_device(str(device))  # "auto", "cpu", "cuda[:i]"; errors name --device
        self.dtype = dtype

    def check_images(self, images: torch.Tensor) -> None:
        s = self.input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"{self.name} backend expects images (N, 3, {s}, {s}), got {tuple(images.shape)}")

    def forward_raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def postprocess(self, locs: torch.Tensor, scores: torch.Tensor) -> PaddedDetections:
        """benchmark.md §4 decode + NMS on raw maps locs (N, 4, B), scores (N, C, B) -> padded detections."""
        return postprocess_padded(locs, scores, self.model_name)

    def predict(self, images: torch.Tensor) -> PaddedDetections:
        """Images (N, 3, S, S) -> padded detections (module docstring), on the backend's device."""
        with torch.inference_mode():
            return self.postprocess(*self.forward_raw(images))

    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name, "device": str(self.device), "dtype": self.dtype}


class EagerBackend(Backend):
    """PyTorch eager: fp32, or bf16/fp16 autocast (CUDA; bf16 only on CPU), optional channels_last
    and space-to-depth first conv, under ``torch.inference_mode``."""

    name = "eager"

    def __init__(self, model: nn.Module, model_name: str, device="cpu", dtype="fp32",
                 channels_last=False, space_to_depth=False):
        super().__init__(model_name, model.spec.input_size, device, dtype)
        if self.device.type == "cpu" and dtype == "fp16":
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

    def __init__(self, model, model_name, device="cpu", dtype="fp32", channels_last=False,
                 space_to_depth=False, mode="default", compile_backend="inductor"):
        super().__init__(model, model_name, device, dtype, channels_last, space_to_depth)
        if mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        if self.device.type != "cuda" and mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(f"compile mode {mode!r} uses CUDA graphs / GPU autotuning; use 'default' on CPU")
        _allow_one_graph_per_batch_size()
        self.mode, self.compile_backend = mode, compile_backend
        self.cuda_graphs = mode in ("reduce-overhead", "max-autotune")
        options = {"mode": mode} if compile_backend == "inductor" else {}  # modes are inductor's
        self.module = torch.compile(self.module, backend=compile_backend, dynamic=False, **options)

    def forward_raw(self, images):
        x = self._prepare(images)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.inference_mode(), autocast(self.device, self.dtype):
            locs, scores = self.module(x)
        if self.cuda_graphs:
            return locs.float().clone(), scores.float().clone()
        return locs.float(), scores.float()

    def describe(self) -> dict:
        return {**super().describe(), "compile_mode": self.mode, "compile_backend": self.compile_backend}


def _allow_one_graph_per_batch_size(limit: int = 64) -> None:
    """Benchmarks sweep batch sizes 1..128; dynamo's default recompile limit (8) would fall back to
    eager after eight shapes."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):  # renamed across torch versions
        if hasattr(cfg, key):
            setattr(cfg, key, max(getattr(cfg, key), limit))


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on an exported file (CPU EP; TensorRT / CUDA EPs first on a CUDA device).

    Works with both graph layouts of `ssdbench.infer.export`: raw maps (post-processing in
    PyTorch afterwards) or post-processing inside (outputs bboxes/labels/scores).
    """

    name = "onnxruntime"

    def __init__(self, onnx_path, model_name: str, input_size: int, device="cpu", dtype="fp32"):
        super().__init__(model_name, input_size, device, dtype)
        import onnxruntime as ort

        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.onnx_path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # respect the process's thread budget
        self.providers = _providers(ort, self.device, dtype)
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=self.providers)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.postprocess_inside = "bboxes" in self.outputs

    def _run(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.check_images(images)
        feed = {"image": images.detach().to("cpu", torch.float32).contiguous().numpy()}
        return [torch.from_numpy(a).to(self.device) for a in self.session.run(self.outputs, feed)]

    def forward_raw(self, images):
        if self.postprocess_inside:
            raise ValueError(f"{self.onnx_path} has post-processing inside the graph: no raw maps")
        out = dict(zip(self.outputs, self._run(images)))
        return out["locs"], out["scores"]

    def predict(self, images):
        if not self.postprocess_inside:
            return super().predict(images)
        out = dict(zip(self.outputs, self._run(images)))
        labels = out["labels"]  # the graph's padding is label 0, after the valid detections
        return PaddedDetections(boxes=out["bboxes"], labels=labels, scores=out["scores"],
                                counts=(labels > 0).sum(dim=1))

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers, "postprocess_inside": self.postprocess_inside}


def _providers(ort, device: torch.device, dtype: str) -> list:
    """Execution providers in preference order for `device` (ONNX Runtime runs fp32 here; fp16
    only through TensorRT's own fp16 mode)."""
    available = ort.get_available_providers()
    if device.type == "cpu":
        if dtype != "fp32":
            raise ValueError(f"the onnxruntime backend runs fp32 on CPU, not {dtype}")
        return ["CPUExecutionProvider"]
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not gpu:
        raise ValueError(f"onnxruntime has no CUDA/TensorRT provider here (has {', '.join(available)})")
    if dtype == "bf16" or (dtype == "fp16" and "TensorrtExecutionProvider" not in gpu):
        raise ValueError(f"the onnxruntime backend runs fp32 (fp16 only with TensorRT), not {dtype}")
    options = {"device_id": device.index or 0}
    providers = []
    for p in gpu:
        extra = {"trt_fp16_enable": True} if p == "TensorrtExecutionProvider" and dtype == "fp16" else {}
        providers.append((p, {**options, **extra}))
    return providers + ["CPUExecutionProvider"]


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
    tag = f"{model_name}{'-s2d' if space_to_depth else ''}-{postprocess}-{_state_hash(model)}"
    path = cache_dir("onnx", f"{tag}.onnx")
    if not path.is_file():
        net = apply_space_to_depth(model) if space_to_depth else model
        atomic_write(path, lambda tmp: export_model(net, model_name, tmp, postprocess=postprocess))
    return path


def make_backend(
    name: str,
    model_name: str,
    weights=None,
    device="cpu",
    dtype="fp32",
    channels_last=False,
    space_to_depth=False,
    onnx_path=None,
    num_classes=None,
    compile_mode="default",
    compile_backend="inductor",
    onnx_postprocess="outside",
    model: nn.Module | None = None,
    allow_pickle: bool = False,
) -> Backend:
    """Build a backend by name ("eager", "compile", "onnxruntime") for `model_name`.

    `weights` and `allow_pickle` as for `build_model` (None: random init); `model` reuses an already built network
    instead. For onnxruntime, `onnx_path` is used as is (its graph decides space-to-depth and where
    post-processing runs); without it the model is exported into the cache first.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "onnxruntime" and channels_last:
        raise ValueError("channels_last does not apply to onnxruntime (it picks its own layouts)")
    if name == "onnxruntime" and onnx_path is not None:
        return OnnxRuntimeBackend(onnx_path, model_name, get_spec(model_name).input_size, device, dtype)
    if model is None:
        model = build_model(model_name, weights=weights, num_classes=num_classes, allow_pickle=allow_pickle)
    model = model.eval()
    if name == "eager":
        return EagerBackend(model, model_name, device, dtype, channels_last, space_to_depth)
    if name == "compile":
        return CompileBackend(model, model_name, device, dtype, channels_last, space_to_depth, compile_mode,
                              compile_backend)
    path = cached_onnx(model, model_name, onnx_postprocess, space_to_depth)
    return OnnxRuntimeBackend(path, model_name, model.spec.input_size, device, dtype)


def check_export(path, model: nn.Module, model_name: str, space_to_depth=False) -> str:
    """One-line comparison of ONNX Runtime (file at `path`) and eager PyTorch (`model`) on one image:
    detections per side and the largest box difference (ltrb normalised) over the first common ones."""
    eager = make_backend("eager", model_name, model=model, space_to_depth=space_to_depth)
    ort_backend = make_backend("onnxruntime", model_name, onnx_path=path)
    size = eager.input_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    ref, got = eager.predict(x), ort_backend.predict(x)
    ref_n, got_n = int(ref.counts[0]), int(got.counts[0])
    n = min(ref_n, got_n)
    box_diff = (ref.boxes[0, :n] - got.boxes[0, :n]).abs().max().item() if n else 0.0
    return (f"check: detections eager {ref_n} / onnxruntime {got_n}, "
            f"max box difference over the first {n}: {box_diff:.2e}")
