"""MLPerf's TensorFlow SSD-ResNet34 interface: the committed frozen graph (OpenVINO's TensorFlow
reader) and its tf2onnx conversion (ONNX Runtime, OpenVINO) give TensorFlow's own detections;
box order, label convention, reading rule and input layout; the one-line error of a graph
OpenVINO cannot read. No TensorFlow needed: tools/make_tf_artifacts.py wrote the files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tf_fixtures import ONNX, PB, UNREADABLE, normalised, saved

from ssdbench.infer import model_file as MF
from ssdbench.infer.backends import make_backend, model_file_network

RUNS = [("openvino", PB), ("openvino", ONNX), ("onnxruntime", ONNX)]
KNOWN = {3: [8, 56, 40, 120], 12: [84, 20, 116, 36]}  # the generator's known scene: label -> x0, y0, x1, y1 px


def _tf_rows(tf_out: dict, n: int) -> list[tuple]:
    """TensorFlow's detections of image ``n``, read independently of ssdbench: up to the first
    score < 0.05, (score, label, ltrb box) with the box from its [ymin, xmin, ymax, xmax]."""
    rows = []
    for box, cls, score in zip(tf_out["detection_bboxes"][n], tf_out["detection_classes"][n],
                               tf_out["detection_scores"][n]):  # fmt: skip
        if score < 0.05:
            break
        ymin, xmin, ymax, xmax = box
        rows.append((float(score), int(cls), [xmin, ymin, xmax, ymax]))
    return rows


@pytest.mark.parametrize(("backend", "path"), RUNS, ids=["pb-openvino", "onnx-openvino", "onnx-onnxruntime"])
def test_files_give_tensorflows_own_detections(backend, path):
    tf_out = saved()
    runner = make_backend(backend, None, model_file=path)
    info = runner.describe()
    assert (runner.model_name, info["layout"], info["file_batch"]) == ("ssd128_mini", "tf", 1)
    assert runner.file.input_name == "image:0" and runner.file.input_layout == "NCHW"
    assert runner.file.format == {".pb": "tensorflow", ".onnx": "onnx"}[path.suffix]
    dets = runner.predict(torch.from_numpy(normalised(tf_out["images"])))  # 4 images on a batch-1 file
    for n in range(len(tf_out["images"])):
        want = _tf_rows(tf_out, n)
        k = int(dets.counts[n])
        assert k == len(want) > 30
        got = list(zip(dets.scores[n, :k].tolist(), dets.labels[n, :k].tolist(), dets.boxes[n, :k].tolist()))
        assert [g[0] for g in got] == sorted((g[0] for g in got), reverse=True)
        for score, label, box in got:  # each detection is one of TensorFlow's (ties may swap order)
            assert any(abs(score - s) < 1e-5 and label == c and np.abs(np.subtract(box, b)).max() < 1e-5
                       for s, c, b in want), (n, score, label, box)  # fmt: skip
        assert sorted(g[1] for g in got) == sorted(w[1] for w in want)
        assert dets.labels[n, k:].eq(0).all() and dets.scores[n, k:].eq(0).all()


@pytest.mark.parametrize(("backend", "path"), [RUNS[0], RUNS[2]], ids=["pb-openvino", "onnx-onnxruntime"])
def test_known_scene_box_order_and_labels(backend, path):
    """The first fixed image holds a tall red and a wide green rectangle (apart, off the diagonal):
    the detections of label 3 / 12 overlap their rectangle more than the rectangle with x and y
    swapped, the best one by far (so boxes are read as [ymin, xmin, ymax, xmax]); no other label is
    found (labels contiguous 1..80, kept as they are)."""
    image = saved()["images"][:1]
    dets = make_backend(backend, None, model_file=path).predict(torch.from_numpy(normalised(image)))
    k = int(dets.counts[0])
    labels, boxes = dets.labels[0, :k].tolist(), (dets.boxes[0, :k] * 128).tolist()
    assert set(labels) == set(KNOWN)
    for label, (x0, y0, x1, y1) in KNOWN.items():
        mine = [b for b, c in zip(boxes, labels) if c == label]
        straight = [_overlap(b, (x0, y0, x1, y1)) for b in mine]
        swapped = [_overlap(b, (y0, x0, y1, x1)) for b in mine]
        assert straight[0] > 0.5 * (x1 - x0) * (y1 - y0) * 0.2 and swapped[0] == 0  # the best detection
        assert sum(straight) > 3 * sum(swapped)


def _overlap(box, rect) -> float:
    """Intersection area of two ltrb boxes."""
    w = min(box[2], rect[2]) - max(box[0], rect[0])
    h = min(box[3], rect[3]) - max(box[1], rect[1])
    return max(w, 0.0) * max(h, 0.0)


def test_reading_rule_box_order_and_labels_by_hand():
    """PostProcessCocoTf reads up to the first score < 0.05 (a later higher score is not read);
    classes stay contiguous; 0 and labels past the classes are dropped; yxyx -> ltrb."""
    boxes = np.array([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4],
                       [0.3, 0.1, 0.9, 0.2], [0.1, 0.1, 0.2, 0.2]]], np.float32)  # fmt: skip
    classes = np.array([[12.0, 80.0, 81.0, 0.0, 1.0, 7.0]], np.float32)
    scores = np.array([[0.9, 0.5, 0.4, 0.3, 0.04, 0.8]], np.float32)  # 0.8 comes after 0.04: unread
    out = {MF.TF_BOXES: boxes, MF.TF_CLASSES: classes, MF.TF_SCORES: scores}
    dets = MF.detections(out, "tf", num_classes=81)
    assert dets.counts.tolist() == [2]
    assert dets.labels[0, :2].tolist() == [12, 80] and dets.scores[0, :2].tolist() == pytest.approx([0.9, 0.5])
    np.testing.assert_allclose(dets.boxes[0, :2].numpy(), [[0.2, 0.1, 0.4, 0.3], [0.6, 0.5, 0.8, 0.7]], atol=1e-7)
    assert MF.detections(out, "tf", num_classes=13).labels[0].tolist()[:2] == [12, 0]  # 80 is past 1..12


def test_input_layout_from_the_files_shape(tmp_path):
    """NCHW (N, 3, S, S) or NHWC (N, S, S, 3), from the file's input: an NHWC wrapper of the ONNX
    conversion (a Transpose in front, as the reference's onnxruntime-tf profile feeds NHWC) gives
    the same detections."""
    import onnx
    from onnx import helper

    assert MF.tf_input_layout([1, 3, 1200, 1200], PB) == ("NCHW", 1200)
    assert MF.tf_input_layout([None, 1200, 1200, 3], PB) == ("NHWC", 1200)
    assert MF.tf_input_layout([None, 3, None, None], PB) == ("NCHW", None)
    with pytest.raises(ValueError, match="neither"):
        MF.tf_input_layout([1, 4, 8, 8], PB)
    proto = onnx.load(str(ONNX))
    graph = proto.graph
    old = graph.input[0]
    nhwc = helper.make_tensor_value_info("image_nhwc:0", onnx.TensorProto.FLOAT, [1, 128, 128, 3])
    graph.node.insert(0, helper.make_node("Transpose", ["image_nhwc:0"], [old.name], perm=[0, 3, 1, 2]))
    graph.input.remove(old)
    graph.input.insert(0, nhwc)
    path = tmp_path / "nhwc.onnx"
    onnx.save(proto, str(path))
    x = torch.from_numpy(normalised(saved()["images"][:2]))
    ref = make_backend("onnxruntime", None, model_file=ONNX).predict(x)
    for backend in ("onnxruntime", "openvino"):
        runner = make_backend(backend, None, model_file=path)
        assert runner.file.input_layout == "NHWC" and runner.file.input_size == 128
        got = runner.predict(x)
        assert got.counts.tolist() == ref.counts.tolist()
        assert (got.scores - ref.scores).abs().max() < 1e-5


def test_unreadable_graph_and_wrong_requests_are_one_line():
    with pytest.raises(ValueError, match=r"OpenVINO cannot read this TensorFlow graph \(operations: TensorList\)"
                                         r"; convert it as MLPerf does \(python -m tf2onnx.convert --input "
                                         r"unreadable_tf.pb .*--inputs image:0"):
        make_backend("openvino", "ssd128_mini", model_file=UNREADABLE)
    with pytest.raises(ValueError, match="runs .onnx files, not tiny_ssd_tf.pb .*tf2onnx conversion"):
        make_backend("onnxruntime", "ssd128_mini", model_file=PB)
    with pytest.raises(ValueError, match=r"takes 128x128 images, but model ssd1200_r34 takes 1200x1200"):
        make_backend("openvino", "ssd1200_r34", model_file=PB)
    assert model_file_network(PB) == model_file_network(ONNX) == "ssd128_mini"  # by input size
