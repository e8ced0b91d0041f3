"""Generate the small TensorFlow test model with the interface of MLPerf's tf_ssd_resnet34_22.1.

Writes into ``tests/assets/tf_ssd/`` (or ``--out``):

- ``tiny_ssd_tf.pb``: a TF1 frozen GraphDef with the interface of ``resnet34_tf.22.1.pb`` (MLPerf
  inference ``vision/classification_and_detection/python/main.py``, profile ``ssd-resnet34-tf``):
  input ``image:0`` float32 (N, 3, S, S) NCHW, normalised as the PyTorch model's input; outputs
  ``detection_bboxes:0`` (N, 200, 4) [ymin, xmin, ymax, xmax] normalised, ``detection_classes:0``
  (N, 200) float, contiguous 1..80, ``detection_scores:0`` (N, 200), sorted by score, zero-padded.
  Its network is its own (a small conv trunk + a fixed colour detector, so that an image whose
  objects are known gives known labels and places), with SSD box decoding and class-wise NMS
  written in TensorFlow ops.
- ``tiny_ssd_tf.onnx``: its conversion with tf2onnx, as MLPerf's ``tools/convert-to-onnx.sh``
  converts the real graph (``--inputs image:0 --outputs detection_bboxes:0,...``).
- ``unreadable_tf.pb``: the same interface around a loop OpenVINO cannot read (its error's test).
- ``tf_detections.npz``: fixed inputs (uint8 RGB images, normalised as above before the run) and the
  detections TensorFlow itself computes for them.

Needs TensorFlow and tf2onnx (``pip install -e ".[tf-artifacts]"`` in a separate environment);
the tests only read the files. Same arguments, same bytes of the .pb (weights come from a seeded
NumPy generator).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SIZE = 128  # input S (the interface does not depend on it; the real file takes 1200)
NUM_CLASSES = 81  # background + 80 contiguous COCO labels
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
# The colour detector: a pure-colour region fires one label (contiguous 1..80). Label 12 is COCO
# category 13 (stop sign): read as a category id it would be 12, an unused id (checks --use-inv-map).
COLOUR_LABELS = {"red": 3, "green": 12, "blue": 50}
# Anchors (width, height in pixels) per feature map of stride 8 and 16; even sizes, so that a
# pooling window of that size centres on its cell (TF SAME padding).
LEVELS = ((8, ((16, 16), (32, 16), (16, 32))), (16, ((32, 32), (48, 48), (32, 64))))
# The known scene of the generator's first image: (colour, [x0, y0, x1, y1] in pixels), each on one
# anchor, tall / wide and off the diagonal so that swapped x/y would miss them.
KNOWN_OBJECTS = (("red", [8, 56, 40, 120]), ("green", [84, 20, 116, 36]))


def anchors() -> np.ndarray:
    """(B, 4) anchors (cy, cx, h, w) normalised, in the order of the heads' reshape (y, x, anchor)."""
    rows = []
    for stride, shapes in LEVELS:
        cells = SIZE // stride
        for i in range(cells):
            for j in range(cells):
                for w, h in shapes:
                    rows.append(((i + 0.5) / cells, (j + 0.5) / cells, h / SIZE, w / SIZE))
    return np.asarray(rows, np.float32)


def known_image() -> np.ndarray:
    img = np.full((SIZE, SIZE, 3), 128, np.uint8)
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    for colour, (x0, y0, x1, y1) in KNOWN_OBJECTS:
        img[y0:y1, x0:x1] = colours[colour]
    return img


def fixed_images() -> np.ndarray:
    """The inputs whose TensorFlow detections are saved: the known scene, then seeded noise with
    coloured patches (many overlapping candidates: NMS matters)."""
    rng = np.random.default_rng(7)
    images = [known_image()]
    for _ in range(3):
        img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        for _ in range(4):
            x0, y0 = rng.integers(0, SIZE - 24, 2)
            w, h = rng.integers(12, 48, 2)
            img[y0:y0 + h, x0:x0 + w] = rng.choice([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
        images.append(img)
    return np.stack(images)


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S): /255, ImageNet mean/std (pre_process_coco_resnet34)."""
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2).copy()


def class_logits(tf, quality, cells: int):
    """(1, cells, cells, 3) colour fit qualities -> (1, cells, cells, 81) logits: 16 * quality - 6
    for the colour's label, -8 for the other objects, 0 for background. Written with elementwise
    operations and a concatenation (no convolution), like a detector's score arithmetic."""
    pieces, previous = [tf.zeros([1, cells, cells, 1])], 0
    for k, label in enumerate(COLOUR_LABELS.values()):
        if label - previous > 1:
            pieces.append(tf.fill([1, cells, cells, label - previous - 1], -8.0))
        pieces.append(16.0 * quality[..., k:k + 1] - 6.0)
        previous = label
    pieces.append(tf.fill([1, cells, cells, NUM_CLASSES - 1 - previous], -8.0))
    return tf.concat(pieces, axis=-1)


def fit_quality(tf, mask, stride: int, w: int, h: int):
    """How well an anchor (w x h px) at each cell fits a colour region: the share of the anchor
    covered minus the share of the anchor doubled (1 - 1/4 for an exact fit, 0 inside a larger
    region, small for a region much smaller or off-centre: it ranks anchors as IoU would)."""
    inside = tf.nn.avg_pool2d(mask, ksize=(h, w), strides=stride, padding="SAME")
    around = tf.nn.avg_pool2d(mask, ksize=(2 * h, 2 * w), strides=stride, padding="SAME")
    return inside - around


def build_graph(tf):
    """The frozen graph (weights are constants); returns its GraphDef."""
    v1 = tf.compat.v1
    rng = np.random.default_rng(2019)
    graph = tf.Graph()
    with graph.as_default():
        image = v1.placeholder(tf.float32, [1, 3, SIZE, SIZE], name="image")  # batch 1: see below
        x = tf.transpose(image, [0, 2, 3, 1])  # TF's CPU convolutions are NHWC

        def conv(t, cin, cout, stride, scale, k=3):
            w = tf.constant((rng.standard_normal((k, k, cin, cout)) * scale).astype(np.float32))
            b = tf.constant((rng.standard_normal(cout) * 0.01).astype(np.float32))
            return tf.nn.bias_add(tf.nn.conv2d(t, w, strides=stride, padding="SAME"), b)

        # colour masks: how red / green / blue each pixel is (normalised input), in [0, 1]
        mix = np.array([[1, -.5, -.5], [-.5, 1, -.5], [-.5, -.5, 1]], np.float32).T[None, None]
        mask = tf.minimum(tf.nn.relu(tf.nn.conv2d(x, tf.constant(mix), strides=1, padding="SAME") / 4.0), 1.0)
        t = tf.nn.relu(conv(x, 3, 16, 2, 0.3))
        t = tf.nn.relu(conv(t, 16, 32, 2, 0.15))
        t8 = tf.nn.relu(conv(t, 32, 32, 2, 0.1))
        t16 = tf.nn.relu(conv(t8, 32, 32, 2, 0.1))
        locs, logits = [], []
        for (stride, shapes), feat in zip(LEVELS, (t8, t16)):
            n_a, cells = len(shapes), SIZE // stride
            per_anchor = [class_logits(tf, fit_quality(tf, mask, stride, w, h), cells) for w, h in shapes]
            cls = tf.stack(per_anchor, axis=3)  # (N, cells, cells, anchors, classes)
            noise = 0.05 * conv(feat, 32, n_a * NUM_CLASSES, 1, 0.3, k=1)  # the trunk's share
            cls = tf.reshape(cls, [-1, cells * cells * n_a, NUM_CLASSES])
            logits.append(cls + tf.reshape(noise, [-1, cells * cells * n_a, NUM_CLASSES]))
            loc = 0.02 * conv(feat, 32, n_a * 4, 1, 0.3, k=1)
            locs.append(tf.reshape(loc, [-1, cells * cells * n_a, 4]))
        boxes = decode(tf, tf.concat(locs, 1), tf.constant(anchors()))
        scores = tf.nn.softmax(tf.concat(logits, 1), axis=-1)[:, :, 1:]  # background dropped
        # one image per run (batch fixed at 1): a per-image loop (tf.map_fn) becomes TensorList ops
        # that OpenVINO's TensorFlow reader and tf2onnx's ONNX both fail on
        dets = class_wise_nms(tf, boxes[0], scores[0])
        for name, value in zip(("detection_bboxes", "detection_classes", "detection_scores"), dets):
            tf.identity(value[None], name=name)
    return graph.as_graph_def()


def decode(tf, locs, anchor):
    """SSD offsets (dy, dx, dh, dw; variances 0.1, 0.2) on anchors (cy, cx, h, w) -> yxyx boxes."""
    cy = anchor[:, 0] + 0.1 * locs[..., 0] * anchor[:, 2]
    cx = anchor[:, 1] + 0.1 * locs[..., 1] * anchor[:, 3]
    h = anchor[:, 2] * tf.exp(0.2 * locs[..., 2])
    w = anchor[:, 3] * tf.exp(0.2 * locs[..., 3])
    return tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def class_wise_nms(tf, boxes, scores, max_out: int = 200):
    """One image's yxyx boxes (B, 4) and object scores (B, 80) -> its top ``max_out`` detections
    after NMS within each class (IoU 0.5, score >= 0.05), sorted by score, zero-padded: boxes
    (max_out, 4) clipped to [0, 1], classes (max_out,) float 1..80, scores (max_out,). Classes are
    kept apart by shifting each class's boxes by 2 x its index (boxes of two classes never overlap),
    so that one NonMaxSuppressionV3 runs over every (box, class) candidate."""
    num_boxes, num_obj = tf.shape(scores)[0], scores.shape[-1]
    classes = tf.reshape(tf.tile(tf.range(num_obj, dtype=tf.float32)[None], [num_boxes, 1]), [-1])
    cand = tf.reshape(tf.tile(tf.clip_by_value(boxes, 0.0, 1.0)[:, None, :], [1, num_obj, 1]), [-1, 4])
    flat_scores = tf.reshape(scores, [-1])
    keep = tf.image.non_max_suppression(cand + 2.0 * classes[:, None], flat_scores, max_out,
                                        iou_threshold=0.5, score_threshold=0.05)
    pad = [[0, max_out - tf.shape(keep)[0]]]
    out_boxes = tf.pad(tf.gather(cand, keep), pad + [[0, 0]])
    out_classes = tf.pad(tf.gather(classes, keep) + 1.0, pad)  # 0-based -> contiguous 1..80
    out_scores = tf.pad(tf.gather(flat_scores, keep), pad)
    return tf.ensure_shape(out_boxes, [max_out, 4]), tf.ensure_shape(out_classes, [max_out]), \
        tf.ensure_shape(out_scores, [max_out])


def build_unreadable_graph(tf):
    """The same interface around a per-image ``tf.map_fn`` loop (TensorList operations), which
    OpenVINO's TensorFlow reader cannot convert: the file of the one-line error's test."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [None, 3, 8, 8], name="image")
        per_image = tf.map_fn(lambda t: tf.reduce_mean(t) * tf.ones([200]), image)
        tf.identity(tf.stack([per_image] * 4, axis=-1), name="detection_bboxes")
        tf.identity(per_image, name="detection_classes")
        tf.identity(per_image, name="detection_scores")
    return graph.as_graph_def()


OUTPUTS = ("detection_bboxes:0", "detection_classes:0", "detection_scores:0")


def run_tf(tf, graph_def, inputs: np.ndarray) -> dict[str, np.ndarray]:
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        runs = [sess.run(list(OUTPUTS), {"image:0": one[None]}) for one in inputs]
    return {name.split(":")[0]: np.concatenate([r[k] for r in runs]) for k, name in enumerate(OUTPUTS)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests/assets/tf_ssd"))
    parser.add_argument("--opset", type=int, default=11, help="tf2onnx opset (the published conversion: 11)")
    args = parser.parse_args(argv)
    import tensorflow as tf

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    graph_def = build_graph(tf)
    pb = out / "tiny_ssd_tf.pb"
    pb.write_bytes(graph_def.SerializeToString(deterministic=True))
    (out / "unreadable_tf.pb").write_bytes(build_unreadable_graph(tf).SerializeToString(deterministic=True))
    images = fixed_images()
    inputs = normalise(images)
    dets = run_tf(tf, graph_def, inputs)
    np.savez_compressed(out / "tf_detections.npz", images=images, **dets)
    onnx = out / "tiny_ssd_tf.onnx"
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--input", str(pb), "--output", str(onnx),
                    "--inputs", "image:0", "--outputs", ",".join(OUTPUTS), "--opset", str(args.opset)],
                   check=True)
    meta = {"size": SIZE, "colour_labels": COLOUR_LABELS, "known_objects": dict(KNOWN_OBJECTS),
            "tensorflow": tf.__version__, "opset": args.opset}
    (out / "tf_artifacts.json").write_text(json.dumps(meta, indent=2) + "\n")
    for f in sorted(out.iterdir()):
        print(f"{f.name:24} {f.stat().st_size:>9,} bytes")
    print("valid detections per image:", [(int((s >= 0.05).sum())) for s in dets["detection_scores"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
