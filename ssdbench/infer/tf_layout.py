"""The interface of MLPerf's TensorFlow SSD-ResNet34 (``tf_ssd_resnet34_22.1``) and its tf2onnx
conversion, and its outputs as the project's padded detections.

Facts (MLPerf inference, ``vision/classification_and_detection/``; docs/model_files.md has the list):

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
from pathlib import Path

import numpy as np

from ssdbench.model.postprocess import MAX_PER_IMAGE

INPUT = "image:0"
BOXES, CLASSES, SCORES = "detection_bboxes:0", "detection_classes:0", "detection_scores:0"
OUTPUTS = (BOXES, CLASSES, SCORES)
READ_UNTIL = 0.05  # PostProcessCocoTf stops at the first score below this
CONVERT = ("python -m tf2onnx.convert --input {pb} --output {onnx} --inputs image:0 "
           "--outputs detection_bboxes:0,detection_scores:0,detection_classes:0 --opset 11")


def input_layout(dims: list[int | None], path: Path) -> tuple[str, int | None]:
    """(``"NCHW"`` | ``"NHWC"``, S or None) of a 4-d image input's dims (None = not static)."""
    if len(dims) != 4:
        return "NCHW", None  # our files and unknown ranks: the project's NCHW
    if dims[1] != 3 and dims[3] == 3:
        return "NHWC", dims[1] if dims[1] == dims[2] else None
    if dims[1] not in (3, None):
        raise ValueError(f"{path}: input of shape {dims} is neither (N, 3, S, S) nor (N, S, S, 3)")
    return "NCHW", dims[2] if dims[2] == dims[3] else None


def padded(outputs: dict[str, np.ndarray], num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One run's TF outputs (N, K, ...) -> boxes (N, 200, 4) ltrb, labels (N, 200) int64, scores (N, 200).

    Per image, the detections before the first score < 0.05 (``PostProcessCocoTf``) whose class is
    in 1..``num_classes``-1 are kept, by score (stable: the graph's order among ties), at most 200.
    """
    boxes = np.asarray(outputs[BOXES], np.float32)
    classes = np.asarray(outputs[CLASSES])
    scores = np.asarray(outputs[SCORES], np.float32)
    n = boxes.shape[0]
    boxes, classes, scores = boxes.reshape(n, -1, 4), classes.reshape(n, -1), scores.reshape(n, -1)
    out_b = np.zeros((n, MAX_PER_IMAGE, 4), np.float32)
    out_l = np.zeros((n, MAX_PER_IMAGE), np.int64)
    out_s = np.zeros((n, MAX_PER_IMAGE), np.float32)
    for i in range(n):
        below = np.flatnonzero(scores[i] < READ_UNTIL)
        read = below[0] if len(below) else scores.shape[1]
        labels = np.rint(classes[i, :read]).astype(np.int64)
        keep = np.flatnonzero((labels >= 1) & (labels <= num_classes - 1))
        keep = keep[np.argsort(-scores[i, keep], kind="stable")][:MAX_PER_IMAGE]
        k = len(keep)
        out_b[i, :k] = boxes[i, keep][:, [1, 0, 3, 2]]  # [ymin, xmin, ymax, xmax] -> ltrb
        out_l[i, :k], out_s[i, :k] = labels[keep], scores[i, keep]
    return out_b, out_l, out_s


def read_error(path: Path, error: Exception) -> ValueError:
    """OpenVINO's failure to read a frozen graph as one line: the operations and the way out."""
    text = str(error)
    ops = re.search(r"No conversion rule found for operations?:\s*([^\n]+)", text)
    failed = re.findall(r"--\s*(\S+?)(?:-\d+)? with a message", text)
    what = ops.group(1).strip() if ops else ", ".join(dict.fromkeys(failed)) or text.strip().splitlines()[-1]
    return ValueError(f"--model-file {path}: OpenVINO cannot read this TensorFlow graph (operations: {what}); "
                      f"convert it as MLPerf does ({CONVERT.format(pb=path.name, onnx=path.stem + '.onnx')}) "
                      "and pass --model-file on the .onnx")
