"""ONNX export: ONNX Runtime reproduces eager PyTorch, raw maps and detections, at any batch size."""

import re

import numpy as np
import onnx
import pytest
import torch

from ssdbench.cli import main
from ssdbench.infer.backends import make_backend
from ssdbench.infer.export import _OnnxNMS, export_model
from ssdbench.model.nms import greedy_nms_mask
from ssdbench.model.ssd import build_model

MODEL = "ssd128_mini"


def _model():
    """ssd128_mini with a strong background bias: about 150 detections per image, fewer than the
    200 cap, so both sides must agree on every detection rather than on a tied cut-off."""
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    with torch.no_grad():
        for conf in model.conf:
            conf.bias.view(model.num_classes, -1)[0] = 6.0  # class 0 (background) of every box shape
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _model()
    out = tmp_path_factory.mktemp("onnx")
    paths = {pp: export_model(model, MODEL, out / f"{pp}.onnx", postprocess=pp, batch_size=2)
             for pp in ("outside", "inside")}
    return model, paths


def _images(n, seed):
    return torch.randn(n, 3, 128, 128, generator=torch.Generator().manual_seed(seed))


def _sorted_dets(pred, i):
    """Image i's valid detections ordered by (label, score desc): independent of tie order."""
    n = int(pred.counts[i])
    labels, scores = pred.labels[i, :n].numpy(), pred.scores[i, :n].numpy()
    order = np.lexsort((-scores, labels))
    return pred.boxes[i, :n].numpy()[order], labels[order], scores[order]


def _assert_same_detections(got, ref):
    assert torch.equal(got.counts, ref.counts)
    assert 0 < int(ref.counts.min()) and int(ref.counts.max()) < 200
    for i in range(len(ref.counts)):
        gb, gl, gs = _sorted_dets(got, i)
        rb, rl, rs = _sorted_dets(ref, i)
        np.testing.assert_array_equal(gl, rl)
        np.testing.assert_allclose(gb, rb, atol=1e-4, rtol=0)
        np.testing.assert_allclose(gs, rs, atol=1e-5, rtol=0)
    assert (got.labels[:, 199] == 0).all()  # padding is label 0


def test_graph_interface(exported):
    _, paths = exported
    for pp, outputs in (("outside", ["locs", "scores"]), ("inside", ["bboxes", "labels", "scores"])):
        graph = onnx.load(str(paths[pp])).graph
        assert [i.name for i in graph.input] == ["image"]
        assert [o.name for o in graph.output] == outputs
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic (dynamic) batch
    ops = {n.op_type for n in onnx.load(str(paths["inside"])).graph.node}
    assert "NonMaxSuppression" in ops


@pytest.mark.parametrize("batch", [1, 3])
def test_outside_matches_eager(exported, batch):
    model, paths = exported
    eager = make_backend("eager", MODEL, model=model)
    ort = make_backend("onnxruntime", MODEL, model_file=paths["outside"])
    x = _images(batch, batch)
    (rl, rs), (gl, gs) = eager.forward_raw(x), ort.forward_raw(x)
    assert gl.shape == (batch, 4, model.spec.num_boxes)
    assert (gl - rl).abs().max() < 1e-4 and (gs - rs).abs().max() < 1e-4
    _assert_same_detections(ort.predict(x), eager.predict(x))


@pytest.mark.parametrize("batch", [1, 3])
def test_inside_matches_eager_postprocess(exported, batch):
    model, paths = exported
    eager = make_backend("eager", MODEL, model=model)
    ort = make_backend("onnxruntime", MODEL, model_file=paths["inside"])
    assert ort.postprocess_inside
    x = _images(batch, 10 + batch)
    got = ort.predict(x)
    assert got.boxes.shape == (batch, 200, 4) and got.labels.dtype == torch.int64
    _assert_same_detections(got, eager.predict(x))
    with pytest.raises(ValueError, match="inside the graph"):
        ort.forward_raw(x)


def test_in_graph_nms_matches_project_nms():
    # The traced stand-in for ONNX NonMaxSuppression against the project's NMS kernel.
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(6, 40, 2, generator=g) * 0.6
    boxes = torch.cat([xy, xy + 0.1 + torch.rand(6, 40, 2, generator=g) * 0.3], dim=-1)
    scores = torch.rand(6, 40, generator=g).sort(dim=1, descending=True).values
    sel = _OnnxNMS.apply(boxes, scores.unsqueeze(1), 40, 0.5, 0.3)
    mine = torch.zeros(6, 40, dtype=torch.bool)
    mine[sel[:, 0], sel[:, 2]] = True
    assert (sel[:, 1] == 0).all()
    assert torch.equal(mine, greedy_nms_mask(boxes, scores > 0.3, 0.5))
    assert 0 < mine.sum() < (scores > 0.3).sum()  # some suppression happened


class _NmsOnly(torch.nn.Module):
    """Just the in-graph NMS: boxes (M, k, 4), scores (M, 1, k) -> selected (S, 3)."""

    def forward(self, boxes, scores):
        return _OnnxNMS.apply(boxes, scores, 3, 0.5, 0.2)


def _onnxruntime_nms(tmp_path, boxes, scores):
    import warnings

    import onnxruntime

    path = tmp_path / "nms.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(_NmsOnly(), (boxes, scores), str(path), dynamo=False, opset_version=17,
                          input_names=["boxes", "scores"], output_names=["selected"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (selected,) = session.run(None, {"boxes": boxes.numpy(), "scores": scores.numpy()})
    return torch.from_numpy(selected)


def test_eager_nms_answers_like_onnxruntime_on_exact_ties(tmp_path):
    """IoU exactly 0.5 (exact in float32): ONNX NonMaxSuppression keeps the box (it drops IoU > t),
    benchmark.md §4 drops it (IoU >= t). The traced stand-in must answer as ONNX Runtime does,
    including the score threshold and the per-row cap (3 here)."""
    boxes = torch.tensor([
        [[0, 0, 1, 1], [0, 0, 1, 0.5], [0, 0, 0.5, 0.5], [0.6, 0.6, 1, 1]],  # IoU(0,1) = IoU(1,2) = 0.5
        [[0, 0, 1, 1], [0, 0, 1, 0.6], [0.5, 0.5, 1, 1], [0, 0, 0.2, 0.2]],  # IoU(0,1) = 0.6
    ])  # fmt: skip
    scores = torch.tensor([[[0.9, 0.8, 0.7, 0.6]], [[0.9, 0.8, 0.1, 0.05]]])  # row 1: two below 0.2
    eager = _OnnxNMS.apply(boxes, scores, 3, 0.5, 0.2)
    assert eager.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [1, 0, 0]]  # row 0: 4 survive, 3 kept
    assert torch.equal(eager, _onnxruntime_nms(tmp_path, boxes, scores))
    ours = greedy_nms_mask(boxes, scores[:, 0] > 0.2, 0.5)  # benchmark.md §4: the tie is dropped
    assert ours[0].tolist() == [True, False, True, True]


def test_space_to_depth_export_keeps_plain_input(tmp_path):
    from ssdbench.infer.space_to_depth import apply_space_to_depth

    model = _model()
    path = export_model(apply_space_to_depth(model), MODEL, tmp_path / "s2d.onnx")
    x = _images(2, 7)
    ref = make_backend("eager", MODEL, model=model).forward_raw(x)
    got = make_backend("onnxruntime", MODEL, model_file=path).forward_raw(x)
    assert (got[0] - ref[0]).abs().max() < 1e-4 and (got[1] - ref[1]).abs().max() < 1e-4


def test_export_does_not_import_backends():
    """Imports go one way (backends -> export): a fresh interpreter importing export never loads backends."""
    import subprocess
    import sys

    code = "import sys, ssdbench.infer.export; print('ssdbench.infer.backends' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_export_and_errors(tmp_path, capsys):
    torch.save(_model().state_dict(), tmp_path / "w.pt")
    out = tmp_path / "m.onnx"
    rc = main(["export", "onnx", "--model", MODEL, "--weights", str(tmp_path / "w.pt"), "--out", str(out),
               "--postprocess", "inside", "--check"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file() and "check: detections eager" in text
    eager_n, ort_n = re.search(r"eager (\d+) / onnxruntime (\d+)", text).groups()
    assert eager_n == ort_n
    assert main(["export", "onnx", "--model", "ssd300_r34", "--weights", str(tmp_path / "w.pt"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit" in err and len(err.splitlines()) == 1
