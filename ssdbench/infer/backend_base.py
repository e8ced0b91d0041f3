"""The common part of every inference backend (`ssdbench.infer.backends` documents the contract):
the `Backend` base class and `BackendOptions`, how a backend runs its network."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssdbench.dist import pick_device
from ssdbench.model.postprocess import PaddedDetections, postprocess_padded
from ssdbench.precision import DTYPES


@dataclass(frozen=True)
class BackendOptions:
    """How a backend runs its network: the options of `ssdbench.infer.backends.make_backend`.

    device, dtype: "auto" (or None) as `ssdbench.infer.backends.backend_target` resolves them;
    make_backend hands the backends resolved values. channels_last (NHWC; eager and compile only,
    `ssdbench.infer.backends.channels_last_for`) and space_to_depth (the 12-channel stem). compile_mode,
    compile_backend: torch.compile's mode and backend (compile only). onnx_postprocess: where the
    post-processing runs in the ONNX file exported for a file backend without a model file
    ("outside" / "inside"). threads: the ONNX Runtime / OpenVINO thread budget (None: torch's).
    Plain values, so that the options pickle into LoadGen's instance processes.
    """

    device: str | torch.device | None = "cpu"
    dtype: str | None = "fp32"
    channels_last: bool = False
    space_to_depth: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    onnx_postprocess: str = "outside"
    threads: int | None = None


class Backend:
    """Input checks and post-processing. Subclasses implement `forward_raw` (and may override
    `predict` when the graph post-processes itself)."""

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

    @property
    def has_raw_maps(self) -> bool:
        """False for graphs with post-processing inside (only `predict` works there)."""
        return True

    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_name, "device": str(self.device), "dtype": self.dtype}
