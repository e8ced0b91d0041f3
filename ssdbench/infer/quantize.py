"""Post-training static INT8 quantization with calibration (`ssdbench quantize`).

The network (our raw-maps ONNX export, or an ONNX file given with ``--model-file``) is quantized
with calibration images preprocessed exactly as at inference (benchmark.md §5: resize to SxS,
/255, ImageNet mean/std):

- ``openvino``: NNCF's ``nncf.quantize`` (min/max statistics over the calibration set, per-channel
  symmetric INT8 weights, INT8 activations, fast bias correction) -> OpenVINO IR ``model.xml/.bin``;
- ``onnxruntime``: ONNX Runtime's ``quantize_static`` in QDQ format (per-channel INT8 weights,
  UINT8 activations, min/max calibration) -> ``model.onnx``.

Post-processing (decode + NMS, benchmark.md §4) stays in float32 in PyTorch after the network, so a
quantized file has the ``raw`` layout of `ssdbench.infer.model_file`. The output folder also gets
``quantize.json``: the file, its layout, the network, the backend, and the calibration images
(count, source, first names), which the backends read back (``--model-file DIR``). An OpenVINO IR
also carries its layout and network in its rt_info (``framework`` / ``ssdbench.layout``,
``ssdbench.model``), so a ``model.xml`` moved away from its quantize.json still names its network.
On any failure the half-written ``OUT.tmp`` folder is removed and ``OUT`` is left as it was.

Calibration sets: MLPerf's list for ssd-resnet34 (benchmark.md §9: ``calibration/COCO/
coco_cal_images_list.txt``, 500 COCO train2017 file names, one per line) with ``--calib-list``,
looked up in ``DATA/train2017``; or ``--calib-count N``: the first N images (by id) of the
dataset's train split, e.g. of the embedded synthetic dataset.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssdbench.data.decode import read_image
from ssdbench.data.transforms import preprocess_for_inference
from ssdbench.infer.model_file import META_LAYOUT, META_MODEL, SIDECAR
from ssdbench.io import atomic_write_text

QUANTIZE_BACKENDS = ("openvino", "onnxruntime")
# OpenVINO operation types left in float in a graph with post-processing inside (layout tf)
FLOAT_POSTPROCESSING = ("Add", "Subtract", "Multiply", "Divide", "Maximum", "Minimum", "Exp", "Concat",
                        "Gather", "Clamp", "NonMaxSuppression", "Softmax", "SoftMax")


@dataclass(frozen=True)
class FloatModel:
    """The float network to quantize: its file (a raw-layout ONNX; for openvino also a ``tf`` layout
    graph, .pb or .onnx, whose post-processing stays float), the network's name and input size,
    where its weights came from (``origin``, recorded in quantize.json) and the file's layout."""

    path: str | Path
    model_name: str
    size: int
    origin: str
    layout: str = "raw"


@dataclass(frozen=True)
class Calibration:
    """The calibration images and where they came from (``source``, recorded in quantize.json)."""

    files: list[Path]
    source: str


def read_calib_list(path: str | Path) -> list[str]:
    """File names of a calibration list (one per line; blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--calib-list file not found: {path}")
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"--calib-list {path} names no images")
    return names


def calibration_files(data: str | Path, calib_list: str | Path | None = None, count: int | None = None,
                      split: str = "train") -> list[Path]:
    """The calibration images: those of ``calib_list`` under ``DATA/<split>2017`` (every one must
    exist), else the first ``count`` images by id of the split's annotation file."""
    from ssdbench.data.coco import CocoDetection, annotation_path

    data = Path(data)
    folder = data / f"{split}2017"
    if calib_list is not None:
        names = read_calib_list(calib_list)
        files = [folder / Path(n).name for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(files)} calibration images of {calib_list} are not in "
                                    f"{folder} (first: {', '.join(missing[:3])})")
        return files[:count] if count else files
    if not count or count < 1:
        raise ValueError("give --calib-list FILE or --calib-count N (N >= 1)")
    if not annotation_path(data, split).is_file():
        raise FileNotFoundError(f"{data}: no {split} annotations ({annotation_path(data, split)}) to take "
                                "calibration images from")
    dataset = CocoDetection(data, split)
    if count > len(dataset):
        raise ValueError(f"--calib-count {count} is more than the {len(dataset)} {split} images of {data}")
    return [dataset.image_path(i) for i in range(count)]


def calibration_batches(files: list[Path], size: int) -> list[np.ndarray]:
    """Each file preprocessed for inference: float32 (1, 3, S, S)."""
    return [preprocess_for_inference(read_image(f), size)[None] for f in files]


def quantize(backend: str, model: FloatModel, out: str | Path, calibration: Calibration) -> Path:
    """Quantize ``model`` for ``backend`` with the ``calibration`` images into the folder ``out``;
    returns the model file. quantize.json records where the weights and the images came from."""
    if backend not in QUANTIZE_BACKENDS:
        raise ValueError(f"unknown quantize backend {backend!r}; choose one of {', '.join(QUANTIZE_BACKENDS)}")
    out = check_out(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = calibration.files
        batches = calibration_batches(files, model.size)
        name = (_openvino(model.path, tmp, batches, model.model_name, model.layout) if backend == "openvino"
                else _onnxruntime(model.path, tmp, batches))  # fmt: skip
        info = {"file": name, "layout": model.layout, "model": model.model_name, "backend": backend,
                "precision": "int8", "source": str(model.origin),
                "calibration": {"count": len(files), "source": calibration.source,
                                "first": [f.name for f in files[:5]]}}  # fmt: skip
        atomic_write_text(tmp / "quantize.json", json.dumps(info, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written folder is left behind
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out / name


def check_out(out: str | Path) -> Path:
    """``out`` as the folder `quantize` writes (it replaces the folder whole): ValueError naming
    ``--out`` when it is a file, under a file, the working directory or a folder above it, or an
    existing folder that holds files but no quantize.json (not written by `ssdbench quantize`)."""
    from ssdbench.checks import output_folder

    path = output_folder(out, "--out")
    full = path.resolve()
    if full == Path.cwd().resolve() or full in Path.cwd().resolve().parents:
        raise ValueError(f"--out {out} is the working directory or a folder above it, which quantize would "
                         "replace; name a new folder, e.g. --out q")
    if full.is_dir() and any(full.iterdir()) and not (full / SIDECAR).is_file():
        raise ValueError(f"--out {out} is a folder with files but no {SIDECAR} (not written by "
                         "`ssdbench quantize`), which quantize would replace; name a new or empty folder")
    return full


def _openvino(source_onnx, folder: Path, batches: list[np.ndarray], model_name: str, layout: str = "raw") -> str:
    import nncf
    import openvino as ov

    from ssdbench.infer.file_backends import read_model

    model = read_model(ov.Core(), Path(source_onnx))
    # A graph with its post-processing inside (MLPerf's TensorFlow model): only the network's
    # convolutions are quantized; the elementwise arithmetic of box decoding and NMS stays float
    # (8-bit box coordinates, e.g. NMS's class-offset boxes, would move detections).
    ignored = nncf.IgnoredScope(types=list(FLOAT_POSTPROCESSING), validate=False) if layout == "tf" else None
    quantized = nncf.quantize(model, nncf.Dataset(batches), preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(batches), fast_bias_correction=True,
                              **({"ignored_scope": ignored} if ignored else {}))  # fmt: skip
    quantized.set_rt_info(layout, ["framework", META_LAYOUT])  # read back by `ssdbench.infer.model_file`
    quantized.set_rt_info(model_name, ["framework", META_MODEL])  # also without quantize.json beside it
    ov.save_model(quantized, str(folder / "model.xml"), compress_to_fp16=False)
    return "model.xml"


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.input_name, self.batches = input_name, iter(batches)

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def _onnxruntime(source_onnx, folder: Path, batches: list[np.ndarray]) -> str:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    input_name = onnx.load(str(source_onnx), load_external_data=False).graph.input[0].name
    quantize_static(str(source_onnx), str(folder / "model.onnx"), _Reader(input_name, batches),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    return "model.onnx"
