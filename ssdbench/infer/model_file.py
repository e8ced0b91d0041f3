"""Model files for the ONNX Runtime and OpenVINO backends: which file, which graph layout, and
the graph's outputs as `PaddedDetections`, with the facts of MLPerf's TensorFlow model (``tf``).

A model file is an ``.onnx`` file, an OpenVINO IR (``.xml`` with its ``.bin``), or a folder written
by ``ssdbench quantize`` (``quantize.json`` names the file inside and the model it came from).
Every layout has the input ``image`` (N, 3, S, S) float32, normalised as benchmark.md §5. Three
output layouts are recognised:

- ``raw``: outputs ``locs`` (N, 4, B) and ``scores`` (N, C, B), the network's maps (our export with
  ``--postprocess outside`` and everything ``ssdbench quantize`` writes); post-processing
  (benchmark.md §4) runs afterwards in PyTorch.
- ``padded``: our export with ``--postprocess inside`` (ONNX metadata ``ssdbench.layout =
  inside``): ``bboxes`` (N, 200, 4) ltrb normalised, ``labels`` (N, 200) contiguous 1..C-1 with 0 as
  padding, ``scores`` (N, 200); dynamic batch (fixed with ``export --static-batch``).
- ``official``: the MLPerf file ``resnet34-ssd1200.onnx`` (benchmark.md §7): outputs ``bboxes``
  (1, K, 4), ``labels`` (1, K), ``scores`` (1, K) for one image, K varying, no padding. Its boxes are
  (xmin, ymin, xmax, ymax) normalised, i.e. ltrb: the reference's ``PostProcessCocoOnnx``
  (inference r2.0 ``vision/classification_and_detection/python/coco.py``) writes
  ``box[1], box[0], box[3], box[2]`` as LoadGen's (ymin, xmin, ymax, xmax). Its labels are
  contiguous, 1..80 with 0 for background (Open Model Zoo's model card of
  ``ssd-resnet34-1200-onnx``; MLPerf scores SSD-Large logs with ``accuracy-coco.py --use-inv-map``,
  label k -> the k-th category id): they are kept as they are, and a label outside 1..C-1 (C the
  network's class count with background, 81) is dropped.
  A file whose outputs carry these names but no ``ssdbench.layout`` metadata is taken for this layout.
- ``tf``: MLPerf's TensorFlow SSD-ResNet34 ``resnet34_tf.22.1.pb`` (a TF1 frozen graph, read by
  OpenVINO's TensorFlow reader) and its tf2onnx conversion ``ssd_resnet34_mAP_20.2.onnx``: input
  ``image:0``, outputs ``detection_bboxes:0`` (N, K, 4) [ymin, xmin, ymax, xmax] normalised,
  ``detection_classes:0`` (N, K) contiguous 1..80 (float), ``detection_scores:0`` (N, K) sorted by
  score; each image is read up to its first score < 0.05 (the reference's ``PostProcessCocoTf``).

The ``tf`` layout's facts (MLPerf inference, ``vision/classification_and_detection/``;
docs/model_files.md has the list):

- ``python/main.py``, profile ``ssd-resnet34-tf``: input ``image:0``, outputs
  ``detection_bboxes:0,detection_classes:0,detection_scores:0``, dataset ``coco-1200-tf``
  (``use_label_map: False``), data format NCHW; profile ``ssd-resnet34-onnxruntime-tf``: the same
  names for the ONNX conversion, data format NHWC. The layout of the input is therefore read from
  the file's own input shape: (N, 3, S, S) is NCHW, (N, S, S, 3) NHWC; NCHW when it does not say.
- ``python/dataset.py`` ``pre_process_coco_resnet34``: RGB, resize to 1200x1200, /255, ImageNet
  mean/std: benchmark.md §5, the preprocessing of every other SSD-Large file.
- ``python/coco.py`` ``PostProcessCocoTf``: per image, detections are read in the graph's order
  up to the first score < 0.05; each box is written as the graph gives it as LoadGen's
  [ymin, xmin, ymax, xmax]; the class as it is, scored with ``use_inv_map`` (label k is the k-th
  COCO category: contiguous labels 1..80).
- ``tools/convert-to-onnx.sh``: ``python -m tf2onnx.convert --input resnet34_tf.22.1.pb --output
  ssd_resnet34_mAP_20.2.onnx --inputs image:0 --outputs
  detection_bboxes:0,detection_scores:0,detection_classes:0 --opset 10`` (the README's file is
  labelled opset 11).

The graph runs as it is, with its own boxes and post-processing; it is never mapped onto
``ssd1200_r34`` (the two models are not equivalent: mlcommons/inference_policies issues 7, 113).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssdbench.io import read_json
from ssdbench.model.postprocess import MAX_PER_IMAGE, PaddedDetections

LAYOUTS = ("raw", "padded", "official", "tf")
RAW_OUTPUTS = ("locs", "scores")
DETECTION_OUTPUTS = ("bboxes", "labels", "scores")
# ONNX metadata_props keys of our exports (the first two also in the rt_info of our OpenVINO IRs)
META_LAYOUT, META_MODEL, META_CLASSES = "ssdbench.layout", "ssdbench.model", "ssdbench.num_classes"
SIDECAR = "quantize.json"  # written by `ssdbench quantize` into its output folder
# the tf layout's names, its reading rule and MLPerf's conversion command (module docstring)
TF_INPUT = "image:0"
TF_BOXES, TF_CLASSES, TF_SCORES = "detection_bboxes:0", "detection_classes:0", "detection_scores:0"
TF_OUTPUTS = (TF_BOXES, TF_CLASSES, TF_SCORES)
TF_READ_UNTIL = 0.05  # PostProcessCocoTf stops at the first score below this
TF_CONVERT = ("python -m tf2onnx.convert --input {pb} --output {onnx} --inputs image:0 "
              "--outputs detection_bboxes:0,detection_scores:0,detection_classes:0 --opset 11")


@dataclass(frozen=True)
class ModelFile:
    """A resolved model file: ``path`` (.onnx or .xml), its output ``layout`` and what we know of it."""

    path: Path
    format: str  # "onnx" | "openvino" | "tensorflow" (a frozen .pb, run by OpenVINO)
    layout: str  # one of LAYOUTS
    model_name: str | None  # the network it was exported from (our files), else None
    quantized: bool  # QuantizeLinear / FakeQuantize nodes present (INT8)
    batch: int | None  # fixed batch size of the input, None when dynamic
    info: dict  # the quantize.json of a quantized folder, else {}
    # classes with background: the raw ``scores`` maps' C, or our metadata; None when the file does
    # not say (the official file: the network's, 81)
    num_classes: int | None = None
    input_name: str = "image"
    input_layout: str = "NCHW"  # "NHWC" when the file's input is (N, S, S, 3)
    input_size: int | None = None  # the input's fixed square side S in pixels, None when not fixed


def resolve_path(path: str | Path) -> tuple[Path, dict]:
    """``path`` (file or `ssdbench quantize` folder) -> (the .onnx / .xml file, sidecar dict)."""
    path = Path(path)
    if path.is_dir():
        sidecar = path / SIDECAR
        if not sidecar.is_file():
            raise FileNotFoundError(f"--model-file {path} is a folder without {SIDECAR} (not written by "
                                    "`ssdbench quantize`); pass the .onnx or .xml file itself")
        info = read_json(sidecar, "quantize folder file")
        if not isinstance(info, dict) or not isinstance(info.get("file"), str) or "/" in info["file"]:
            raise ValueError(f"{sidecar}: no model file name under \"file\" (not written by `ssdbench quantize`?)")
        if not (path / info["file"]).is_file():
            raise FileNotFoundError(f"{sidecar} names {info['file']}, which is not in {path}")
        return path / info["file"], info
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix not in (".onnx", ".xml", ".pb"):
        raise ValueError(f"--model-file {path}: expected an .onnx file, an OpenVINO .xml, a TensorFlow frozen "
                         "graph .pb or a quantize folder")
    if path.suffix == ".xml" and not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"{path}: the OpenVINO IR's weights {path.with_suffix('.bin').name} are missing")
    sidecar = path.parent / SIDECAR
    info = read_json(sidecar, "quantize folder file") if sidecar.is_file() else {}
    return path, (info if isinstance(info, dict) and info.get("file") == path.name else {})


def layout_of(outputs: list[str], declared: str | None, path: Path) -> str:
    """The layout from output names and our metadata (None for files that carry none)."""
    names = set(outputs)
    if names >= set(TF_OUTPUTS):
        return "tf"
    if names >= set(RAW_OUTPUTS) and "bboxes" not in names:
        return "raw"
    if names >= set(DETECTION_OUTPUTS):
        return "padded" if declared == "inside" else "official"
    raise ValueError(f"{path}: outputs {sorted(names)} match no known layout (raw: locs, scores; "
                     "with post-processing: bboxes, labels, scores; TensorFlow: "
                     f"{', '.join(TF_OUTPUTS)})")


def inspect_onnx(path: Path, info: dict | None = None) -> ModelFile:
    """Layout, quantization and batch of an ONNX file (graph structure only, weights not loaded)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: one line naming the file
        raise ValueError(f"{path}: not a readable ONNX file, truncated or damaged ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    outputs = [o.name for o in proto.graph.output]
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    quantized = any(n.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger") for n in proto.graph.node)
    info = info or {}
    layout = layout_of(outputs, meta.get(META_LAYOUT) or info.get("layout"), path)
    classes = int(meta[META_CLASSES]) if meta.get(META_CLASSES, "").isdigit() else None
    if layout == "raw":
        score_dims = next(o for o in proto.graph.output if o.name == "scores").type.tensor_type.shape.dim
        if len(score_dims) == 3 and score_dims[1].HasField("dim_value"):
            classes = score_dims[1].dim_value
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in proto.graph.input[0].type.tensor_type.shape.dim]
    return ModelFile(path, "onnx", layout, meta.get(META_MODEL) or info.get("model"), quantized,
                     dim.dim_value if dim.HasField("dim_value") else None, info, classes,
                     proto.graph.input[0].name, *_input_layout(layout, dims, path))


def inspect_openvino(path: Path, model, info: dict | None = None) -> ModelFile:
    """The same facts for an OpenVINO model already read (``core.read_model``); an ONNX file's
    own metadata is read with `inspect_onnx` (OpenVINO does not carry it over)."""
    if path.suffix == ".onnx":
        return inspect_onnx(path, info)
    info = info or {}
    outputs = [name for out in model.outputs for name in out.get_names()]
    layout = layout_of(outputs, info.get("layout") or _rt_info(model, META_LAYOUT), path)
    quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    shape = model.inputs[0].get_partial_shape()
    batch = shape[0].get_length() if shape[0].is_static else None
    classes = None
    if layout == "raw":
        scores = next(o for o in model.outputs if "scores" in o.get_names()).get_partial_shape()
        classes = scores[1].get_length() if scores.rank.is_static and scores[1].is_static else None
    dims = [d.get_length() if d.is_static else None for d in shape] if shape.rank.is_static else []
    fmt = {".xml": "openvino", ".pb": "tensorflow"}.get(path.suffix, "onnx")
    return ModelFile(path, fmt, layout, info.get("model") or _rt_info(model, META_MODEL), quantized, batch,
                     info, classes, model.inputs[0].get_any_name(), *_input_layout(layout, dims, path))


def _input_layout(layout: str, dims: list, path: Path) -> tuple[str, int | None]:
    """(input layout, fixed input side or None) from the input's dims: a TensorFlow-layout file's as
    `tf_input_layout` reads it; our files and the official ones are NCHW."""
    if layout == "tf":
        return tf_input_layout(dims, path)
    sides = {d for d in dims[2:] if d is not None} if len(dims) == 4 else set()
    return "NCHW", sides.pop() if len(sides) == 1 else None


def check_input_size(info: ModelFile, model_name: str, input_size: int) -> None:
    """ValueError naming the file and the model when the file's fixed input size is another's."""
    if info.input_size is None or info.input_size == input_size:
        return
    from ssdbench.model.specs import SPECS

    fits = [name for name, spec in SPECS.items() if spec.input_size == info.input_size]
    hint = f"pass --model {fits[0]}" if fits else "export it again for this model"
    raise ValueError(f"{info.path} takes {info.input_size}x{info.input_size} images, but model {model_name} "
                     f"takes {input_size}x{input_size} ({hint})")


def _rt_info(model, key: str) -> str | None:
    """``key`` of an OpenVINO model's ``framework`` rt_info (written by `ssdbench quantize`), else None."""
    if not model.has_rt_info(["framework", key]):
        return None
    return model.get_rt_info(["framework", key]).astype(str)  # an OVAny; str() would give its class


def detections(outputs: dict[str, np.ndarray], layout: str, num_classes: int = 81,
               device: torch.device | str = "cpu") -> PaddedDetections:
    """One run's ``bboxes``/``labels``/``scores`` (layout ``padded`` or ``official``) -> padded detections.

    The official layout gives one image's unpadded (1, K, ...) arrays: the detections whose label
    is in 1..``num_classes``-1 (the network's class count with background) are kept with their
    labels as they are, sorted by score and padded to MAX_PER_IMAGE.
    """
    if layout == "tf":
        return _to_tensors(*tf_padded(outputs, num_classes), device)
    boxes = np.asarray(outputs["bboxes"], np.float32)
    labels = np.asarray(outputs["labels"]).astype(np.int64)
    scores = np.asarray(outputs["scores"], np.float32)
    if layout == "official":
        boxes, labels, scores = _official(boxes, labels, scores, num_classes)
    return _to_tensors(boxes, labels, scores, device)


def _to_tensors(boxes, labels, scores, device) -> PaddedDetections:
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
         for k, v in (("boxes", boxes), ("labels", labels), ("scores", scores))}  # fmt: skip
    return PaddedDetections(t["boxes"], t["labels"], t["scores"], (t["labels"] > 0).sum(dim=1))


def _official(boxes, labels, scores, num_classes: int):
    """(1, K, 4), (1, K), (1, K) of the official file -> (1, 200, 4), (1, 200), (1, 200) padded."""
    boxes, labels, scores = boxes.reshape(-1, 4), labels.reshape(-1), scores.reshape(-1)
    keep = np.flatnonzero((labels >= 1) & (labels <= num_classes - 1))
    keep = keep[np.argsort(-scores[keep], kind="stable")][:MAX_PER_IMAGE]
    out_b = np.zeros((1, MAX_PER_IMAGE, 4), np.float32)
    out_l = np.zeros((1, MAX_PER_IMAGE), np.int64)
    out_s = np.zeros((1, MAX_PER_IMAGE), np.float32)
    n = len(keep)
    out_b[0, :n], out_l[0, :n], out_s[0, :n] = boxes[keep], labels[keep], scores[keep]
    return out_b, out_l, out_s


def concat(parts: list[PaddedDetections]) -> PaddedDetections:
    """Per-run detections (same D) concatenated along the batch."""
    if len(parts) == 1:
        return parts[0]
    return PaddedDetections(*(torch.cat([getattr(p, f) for p in parts]) for f in PaddedDetections._fields))


def tf_input_layout(dims: list[int | None], path: Path) -> tuple[str, int | None]:
    """(``"NCHW"`` | ``"NHWC"``, S or None) of a 4-d image input's dims (None = not static)."""
    if len(dims) != 4:
        return "NCHW", None  # our files and unknown ranks: the project's NCHW
    if dims[1] != 3 and dims[3] == 3:
        return "NHWC", dims[1] if dims[1] == dims[2] else None
    if dims[1] not in (3, None):
        raise ValueError(f"{path}: input of shape {dims} is neither (N, 3, S, S) nor (N, S, S, 3)")
    return "NCHW", dims[2] if dims[2] == dims[3] else None


def tf_padded(outputs: dict[str, np.ndarray], num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One run's TF outputs (N, K, ...) -> boxes (N, 200, 4) ltrb, labels (N, 200) int64, scores (N, 200).

    Per image, the detections before the first score < 0.05 (``PostProcessCocoTf``) whose class is
    in 1..``num_classes``-1 are kept, by score (stable: the graph's order among ties), at most 200.
    """
    boxes = np.asarray(outputs[TF_BOXES], np.float32)
    classes = np.asarray(outputs[TF_CLASSES])
    scores = np.asarray(outputs[TF_SCORES], np.float32)
    n = boxes.shape[0]
    boxes, classes, scores = boxes.reshape(n, -1, 4), classes.reshape(n, -1), scores.reshape(n, -1)
    out_b = np.zeros((n, MAX_PER_IMAGE, 4), np.float32)
    out_l = np.zeros((n, MAX_PER_IMAGE), np.int64)
    out_s = np.zeros((n, MAX_PER_IMAGE), np.float32)
    for i in range(n):
        below = np.flatnonzero(scores[i] < TF_READ_UNTIL)
        read = below[0] if len(below) else scores.shape[1]
        labels = np.rint(classes[i, :read]).astype(np.int64)
        keep = np.flatnonzero((labels >= 1) & (labels <= num_classes - 1))
        keep = keep[np.argsort(-scores[i, keep], kind="stable")][:MAX_PER_IMAGE]
        k = len(keep)
        out_b[i, :k] = boxes[i, keep][:, [1, 0, 3, 2]]  # [ymin, xmin, ymax, xmax] -> ltrb
        out_l[i, :k], out_s[i, :k] = labels[keep], scores[i, keep]
    return out_b, out_l, out_s


def tf_read_error(path: Path, error: Exception) -> ValueError:
    """OpenVINO's failure to read a frozen graph as one line: the operations and the way out."""
    text = str(error)
    ops = re.search(r"No conversion rule found for operations?:\s*([^\n]+)", text)
    failed = re.findall(r"--\s*(\S+?)(?:-\d+)? with a message", text)
    what = ops.group(1).strip() if ops else ", ".join(dict.fromkeys(failed)) or text.strip().splitlines()[-1]
    return ValueError(f"--model-file {path}: OpenVINO cannot read this TensorFlow graph (operations: {what}); "
                      f"convert it as MLPerf does ({TF_CONVERT.format(pb=path.name, onnx=path.stem + '.onnx')}) "
                      "and pass --model-file on the .onnx")
