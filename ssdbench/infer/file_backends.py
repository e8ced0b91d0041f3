"""Backends that run a model file: ONNX Runtime (``.onnx``) and OpenVINO (``.onnx`` or IR ``.xml``).

Both read every layout of `ssdbench.infer.model_file` (raw maps, our padded detections, the
official ``resnet34-ssd1200.onnx``, MLPerf's TensorFlow model's tf2onnx conversion; OpenVINO also
the TensorFlow frozen graph ``.pb`` itself) and INT8 files written by ``ssdbench quantize`` (ONNX QDQ for
ONNX Runtime, an NNCF-quantized IR for OpenVINO). A file with a fixed batch F (the official one has
batch 1) runs F images at a time; a last group of fewer is filled up with zero images whose outputs
are dropped. ``dtype`` is the precision of the float parts: ONNX Runtime runs fp32 (fp16 only
through TensorRT); OpenVINO runs on the CPU only, fp32 or bf16 (its ``INFERENCE_PRECISION_HINT``;
bf16 needs a CPU with native bf16, else OpenVINO falls back to fp32 itself).

uint8 pixels for OpenVINO (`uint8_input_model`): a pool worker (`ssdbench.loadgen.device_pool`)
reads the QSL's loaded samples as uint8 (N, 3, S, S) from shared memory and hands them to the
model as they are. OpenVINO's preprocessing API (`openvino.preprocess.PrePostProcessor`) adds in
front of the network's input: u8 -> f32, subtract the ImageNet mean x 255, divide by the std x 255,
per channel, in the file's own input layout (NCHW, or NHWC for TensorFlow-layout files). That is
(x / 255 - mean) / std up to float rounding (about 1e-6 relative), with no torch normalisation and
no float32 copy of the batch in the worker.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from ssdbench.data.jitter import MEAN, STD
from ssdbench.infer import model_file as MF
from ssdbench.infer.backend_base import Backend, BackendOptions
from ssdbench.model.postprocess import PaddedDetections
from ssdbench.model.specs import get_spec


class FileBackend(Backend):
    """Shared part: the file's layout, batching for fixed-batch files, outputs -> detections."""

    accepts_uint8 = False  # True: uint8 0..255 images go to the runtime as they are (normalised inside)

    def _init_file(self, info: MF.ModelFile) -> None:
        MF.check_input_size(info, self.model_name, self.input_size)  # before any inference (a runtime error)
        self.file = info
        self.layout = info.layout

    @property
    def has_raw_maps(self) -> bool:
        return self.layout == "raw"

    @property
    def num_classes(self) -> int:
        """The file's classes with background (`ModelFile.num_classes`), else its network's spec."""
        return self.file.num_classes or get_spec(self.model_name).num_classes

    def _run_numpy(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _runs(self, images: torch.Tensor) -> list[dict[str, np.ndarray]]:
        """The file's outputs per run: one run per ``file.batch`` images when the batch is fixed
        (the last one filled up with zero images, whose outputs are dropped), else one run."""
        self.check_images(images)
        dtype = torch.uint8 if self.accepts_uint8 and images.dtype == torch.uint8 else torch.float32
        x = images.detach().to("cpu", dtype).contiguous().numpy()
        if self.file.input_layout == "NHWC":
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        n = len(x)
        step = self.file.batch or n
        fill = -n % step
        if fill:
            x = np.concatenate([x, np.zeros((fill, *x.shape[1:]), x.dtype)])
        runs = [self._run_numpy(x[i:i + step]) for i in range(0, len(x), step)]
        if fill:  # every output of every layout is batch-first
            runs[-1] = {name: out[:step - fill] for name, out in runs[-1].items()}
        return runs

    def forward_raw(self, images):
        if self.layout != "raw":
            raise ValueError(f"{self.file.path} has post-processing inside the graph: no raw maps")
        runs = self._runs(images)
        locs = np.concatenate([r["locs"] for r in runs])
        scores = np.concatenate([r["scores"] for r in runs])
        return (torch.from_numpy(locs).float().to(self.device), torch.from_numpy(scores).float().to(self.device))

    def predict(self, images) -> PaddedDetections:
        if self.layout == "raw":
            return super().predict(images)
        return MF.concat([MF.detections(r, self.layout, self.num_classes, self.device) for r in self._runs(images)])

    def describe(self) -> dict:
        return {**super().describe(), "model_file": str(self.file.path), "layout": self.layout,
                "quantized": self.file.quantized, "file_batch": self.file.batch}


class OnnxRuntimeBackend(FileBackend):
    """ONNX Runtime on an ONNX file (CPU EP; TensorRT / CUDA EPs first on a CUDA device)."""

    name = "onnxruntime"

    def __init__(self, onnx_path, model_name: str, input_size: int, options: BackendOptions):
        super().__init__(model_name, input_size, options.device, options.dtype)
        import onnxruntime as ort

        path, sidecar = MF.resolve_path(onnx_path)
        if path.suffix != ".onnx":
            raise ValueError(f"the onnxruntime backend runs .onnx files, not {path.name} (use --backend openvino"
                             f"{', or its tf2onnx conversion' if path.suffix == '.pb' else ''})")
        self._init_file(MF.inspect_onnx(path, sidecar))
        self.onnx_path = path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = options.threads or torch.get_num_threads()  # the process's thread budget
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.providers = _providers(ort, self.device, self.dtype)
        self.session = ort.InferenceSession(str(path), opts, providers=self.providers)
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.postprocess_inside = self.layout != "raw"

    def _run_numpy(self, batch):
        return dict(zip(self.outputs, self.session.run(self.outputs, {self.input_name: batch})))

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers, "postprocess_inside": self.postprocess_inside}


def _providers(ort, device: torch.device, dtype: str) -> list:
    """Execution providers in preference order for `device` (ONNX Runtime runs fp32 here; fp16
    only through TensorRT's own fp16 mode)."""
    available = ort.get_available_providers()
    if device.type == "cpu":
        if dtype != "fp32":
            raise ValueError(f"the onnxruntime backend runs fp32 on CPU (INT8 through a quantized file), not {dtype}")
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


PRECISION_HINT = {"fp32": "f32", "bf16": "bf16"}  # our dtype -> OpenVINO's INFERENCE_PRECISION_HINT


class OpenVinoBackend(FileBackend):
    """OpenVINO's CPU plugin on an ONNX file or IR, compiled once per batch size (static shapes).

    Each SUT worker thread gets its own infer request; ``options.threads`` bounds OpenVINO's thread pool
    (default: torch's thread count), ``streams`` its parallel streams (1: latency-oriented).
    uint8 images (0..255, not normalised) run a second compiled model whose preprocessing
    normalises them (`uint8_input_model`); float32 images run the file as it is.
    """

    name = "openvino"
    accepts_uint8 = True

    def __init__(self, path, model_name: str, input_size: int, options: BackendOptions, streams: int = 1):
        # options.device: the CPU (`ssdbench.infer.backends.backend_target` holds that rule)
        super().__init__(model_name, input_size, options.device, options.dtype)
        import openvino as ov

        dtype, threads = self.dtype, options.threads
        if dtype not in PRECISION_HINT:
            raise ValueError(f"the openvino backend runs fp32 or bf16 (INT8 through a quantized file), not {dtype}")
        path, sidecar = MF.resolve_path(path)
        self.core = ov.Core()
        self.model = read_model(self.core, path)
        self._init_file(MF.inspect_openvino(path, self.model, sidecar))
        self.config = {"INFERENCE_PRECISION_HINT": PRECISION_HINT[dtype],
                       "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
                       "NUM_STREAMS": int(streams), "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
        self._compiled: dict[int, object] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _compiled_for(self, n: int, uint8: bool = False):
        """The model compiled for batch ``n`` (the file's own shape when its batch is fixed), with
        the uint8 preprocessing in front when ``uint8``."""
        with self._lock:
            if (n, uint8) not in self._compiled:
                model = self.model
                if self.file.batch is None:
                    model = model.clone()
                    s = self.input_size
                    model.reshape({model.inputs[0]: [n, s, s, 3] if self.file.input_layout == "NHWC" else [n, 3, s, s]})
                if uint8:
                    model = uint8_input_model(model, self.file.input_layout)
                self._compiled[n, uint8] = self.core.compile_model(model, "CPU", self.config)
            return self._compiled[n, uint8]

    def _run_numpy(self, batch):
        key = (len(batch), batch.dtype == np.uint8)
        requests = self._local.__dict__.setdefault("requests", {})
        if key not in requests:
            compiled = self._compiled_for(*key)
            requests[key] = (compiled.create_infer_request(), [_output_name(o) for o in compiled.outputs])
        request, names = requests[key]
        request.infer({0: batch})
        return {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(names)}

    def describe(self) -> dict:
        return {**super().describe(), "openvino_config": self.config}


MEAN_255 = [m * 255.0 for m in MEAN]  # the ImageNet statistics on the 0..255 scale
STD_255 = [s * 255.0 for s in STD]


def uint8_input_model(model, input_layout: str = "NCHW"):
    """A copy of OpenVINO ``model`` whose first input is u8 pixels in ``input_layout``."""
    from openvino import Layout, Type
    from openvino.preprocess import PrePostProcessor

    if input_layout not in ("NCHW", "NHWC"):
        raise ValueError(f"uint8 input needs an NCHW or NHWC model input, not {input_layout!r}")
    ppp = PrePostProcessor(model.clone())
    tensor_info = ppp.input(0)
    tensor_info.tensor().set_element_type(Type.u8).set_layout(Layout(input_layout))
    tensor_info.model().set_layout(Layout(input_layout))
    tensor_info.preprocess().convert_element_type(Type.f32).mean(MEAN_255).scale(STD_255)
    return ppp.build()


def read_model(core, path):
    """OpenVINO's model of an .onnx, IR or TensorFlow frozen graph; a graph it cannot read is one
    ValueError naming the operations and the tf2onnx way out."""
    try:
        return core.read_model(str(path))
    except RuntimeError as error:  # OpenVINO's parse or conversion report: many lines
        if path.suffix == ".pb":
            raise MF.tf_read_error(path, error) from None
        raise ValueError(f"{path}: OpenVINO cannot read it, truncated or damaged "
                         f"({str(error).strip().splitlines()[0][:200]})") from None


def _output_name(output) -> str:
    """An OpenVINO output's name, preferring the names of `ssdbench.infer.model_file` layouts."""
    names = output.get_names()
    known = [n for n in (*MF.RAW_OUTPUTS, *MF.DETECTION_OUTPUTS, *MF.TF_OUTPUTS) if n in names]
    return known[0] if known else min(names)
