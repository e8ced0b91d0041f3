"""Export a model to ONNX (`ssdbench export onnx`).

Two graph layouts, both with input ``image`` (N, 3, S, S) float32 (normalised as benchmark.md §5) and a
dynamic batch dimension:

- ``--postprocess outside`` (default): outputs ``locs`` (N, 4, B) and ``scores`` (N, C, B), the raw
  network maps; `ssdbench.model.postprocess` runs after ONNX Runtime. Exactly the PyTorch network.
- ``--postprocess inside``: decode, softmax and per-class NMS are in the graph (ONNX
  ``NonMaxSuppression``), with outputs shaped like the official ``resnet34-ssd1200.onnx``:
  ``bboxes`` (N, K, 4) ltrb normalised, ``labels`` (N, K) int64 1..C-1, ``scores`` (N, K),
  K = ``MAX_PER_IMAGE`` (200); rows past an image's detections are padding with label 0 and score 0
  (the official file has batch 1 and unpadded outputs; padding is what makes a dynamic batch possible).

In-graph semantics (benchmark.md §4, with the constants of `ssdbench.model.postprocess`): softmax
over classes; per class the top ``MAX_PER_CLASS`` candidates, keep score > ``SCORE_THRESHOLD``,
greedy NMS at ``IOU_THRESHOLD``; then the top ``MAX_PER_IMAGE`` of the image. Deviation: ONNX
``NonMaxSuppression`` drops a box when IoU > t while benchmark.md §4 drops IoU >= t; the two differ
only on exact ties.

The exporter is torch's TorchScript-based one (``dynamo=False``): the torch.export-based exporter
needs ``onnxscript``, which is not a dependency of this project.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssdbench.infer.space_to_depth import space_to_depth
from ssdbench.model.boxes import decode_offsets, default_boxes
from ssdbench.model.nms import greedy_nms_mask
from ssdbench.model.postprocess import IOU_THRESHOLD, MAX_PER_CLASS, MAX_PER_IMAGE, SCORE_THRESHOLD
from ssdbench.model.specs import get_spec

POSTPROCESS_MODES = ("outside", "inside")


def _above(threshold: float) -> float:
    """The smallest float32 above ``threshold``: for float32 IoU values, IoU >= it iff IoU > threshold."""
    return float(np.nextafter(np.float32(threshold), np.float32(np.inf)))


class _OnnxNMS(torch.autograd.Function):
    """Batched greedy NMS that exports as one ONNX ``NonMaxSuppression`` node.

    boxes (M, k, 4) ltrb, scores (M, 1, k) sorted descending along k -> selected (S, 3) int64 rows
    ``[m, 0, j]`` in ONNX's order (by m, then in selection order). The eager forward is only used
    while tracing and by tests; ONNX Runtime runs its own kernel.

    The eager forward keeps ONNX Runtime's semantics, not benchmark.md §4's: a box is a candidate
    when its score is > ``score_threshold``, and it is suppressed when its IoU with a kept box is
    > ``iou_threshold`` (§4 and `greedy_nms_mask` suppress at IoU >= t). It runs the project's
    greedy kernel with the next float32 above the threshold, which is the same test on float32
    IoU values, then keeps the first ``max_per_class`` survivors of each row m.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        valid = scores[:, 0, :] > score_threshold  # (M, k); sorted scores: index order is selection order
        keep = greedy_nms_mask(boxes, valid, _above(iou_threshold))
        keep &= keep.cumsum(dim=1) <= max_per_class
        m, j = keep.nonzero(as_tuple=True)
        return torch.stack([m, torch.zeros_like(m), j], dim=1)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op(
            "NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64),
            const(iou_threshold, torch.float32), const(score_threshold, torch.float32),
        )


class DetectorWithPostprocess(nn.Module):
    """Network + decode + NMS with fixed-size outputs, for the ``inside`` ONNX graph.

    forward(image (N, 3, S, S)) -> bboxes (N, K, 4) ltrb normalised, labels (N, K) int64 (0 =
    padding), scores (N, K) float32, detections sorted by score.
    """

    def __init__(self, model: nn.Module, model_name: str):
        super().__init__()
        self.model = model
        self.register_buffer("dboxes", default_boxes(model_name, "xywh"), persistent=False)  # (B, 4)
        self.k = min(MAX_PER_CLASS, self.dboxes.shape[0])

    def forward(self, image: torch.Tensor):
        locs, logits = self.model(image)
        boxes = decode_offsets(locs.float().transpose(1, 2), self.dboxes)  # (N, B, 4) ltrb
        probs = logits.float().softmax(dim=1)[:, 1:]  # (N, C-1, B), background dropped
        num_fg = probs.shape[1]
        top_s, top_i = probs.topk(self.k, dim=2)  # (N, C-1, k), sorted descending
        cand = boxes.gather(1, top_i.reshape(top_i.shape[0], -1, 1).expand(-1, -1, 4))
        cand = cand.reshape(-1, self.k, 4)  # (N*(C-1), k, 4): one NMS "batch" per image and class
        flat_s = top_s.reshape(-1)
        sel = _OnnxNMS.apply(cand, flat_s.reshape(-1, 1, self.k), self.k, IOU_THRESHOLD, SCORE_THRESHOLD)
        flat = sel[:, 0] * self.k + sel[:, 2]
        kept = torch.zeros_like(flat_s).scatter(0, flat, flat_s.gather(0, flat))
        kept = kept.reshape(-1, num_fg * self.k)  # (N, (C-1)*k), zero where suppressed
        final_s, final_i = kept.topk(min(MAX_PER_IMAGE, num_fg * self.k), dim=1)
        valid = final_s > 0
        labels = torch.where(valid, torch.div(final_i, self.k, rounding_mode="floor") + 1, 0)
        bboxes = cand.reshape(-1, num_fg * self.k, 4).gather(1, final_i.unsqueeze(-1).expand(-1, -1, 4))
        return bboxes * valid.unsqueeze(-1), labels, final_s


class _SpaceToDepthInput(nn.Module):
    """Rearranges the (N, 3, S, S) image inside the graph, so the file keeps the plain input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model(space_to_depth(image))


def export_model(
    model: nn.Module,
    model_name: str,
    out_path: str | Path,
    postprocess: str = "outside",
    opset: int = 17,
    dynamic_batch: bool = True,
    batch_size: int = 2,
) -> Path:
    """Export an already built model (eval mode, CPU, fp32) to `out_path`; returns the path.

    A model from `apply_space_to_depth` is wrapped so the file's input stays (N, 3, S, S).
    """
    if postprocess not in POSTPROCESS_MODES:
        raise ValueError(f"unknown postprocess mode {postprocess!r}; choose one of {', '.join(POSTPROCESS_MODES)}")
    model = copy.deepcopy(model).eval().cpu().float()  # never move or cast the caller's model
    classes = getattr(getattr(model, "spec", None), "num_classes", None)  # with background
    if getattr(model, "space_to_depth", False):
        model = _SpaceToDepthInput(model)
    if postprocess == "inside":
        model, outputs = DetectorWithPostprocess(model, model_name), ["bboxes", "labels", "scores"]
    else:
        outputs = ["locs", "scores"]
    size = get_spec(model_name).input_size
    dummy = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    axes = {name: {0: "batch"} for name in ["image", *outputs]} if dynamic_batch else None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns that it is deprecated on every call; chosen on purpose (above).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), str(out_path), dynamo=False, opset_version=opset,
            input_names=["image"], output_names=outputs, dynamic_axes=axes, do_constant_folding=True,
        )
    import onnx

    proto = onnx.load(str(out_path))
    # The layout, network and class count, read back by `ssdbench.infer.model_file` (the official
    # file has none).
    props = {"ssdbench.layout": postprocess, "ssdbench.model": model_name}
    onnx.helper.set_model_props(proto, props | ({"ssdbench.num_classes": str(classes)} if classes else {}))
    onnx.save(proto, str(out_path))
    onnx.checker.check_model(str(out_path))
    return out_path
