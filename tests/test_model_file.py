"""Model files: the official resnet34-ssd1200.onnx layout (a file generated here in that layout),
our padded and raw exports, and the folder / file checks, under ONNX Runtime and OpenVINO."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from ssdbench.infer import model_file as MF
from ssdbench.infer.backends import make_backend

SIZE = 128  # ssd128_mini's input: the layout does not depend on the image size
# COCO 2017 has ids 1..90 with these ten unused (annotations/instances_val2017.json)
COCO_UNUSED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_IDS = [i for i in range(1, 91) if i not in COCO_UNUSED]  # label k -> COCO_IDS[k - 1]
# candidates of the stand-in graph: ltrb boxes, contiguous labels 1..80 (81 is past the 80 classes:
# dropped; 12 is kept, but would be dropped if labels were read as COCO category ids), scores unsorted
BOXES = [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.1, 0.4, 0.9], [0.6, 0.6, 0.7, 0.8], [0.2, 0.3, 0.3, 0.4],
         [0.5, 0.5, 0.9, 0.9]]
LABELS = [80, 1, 13, 12, 44, 81]
SCORES = [0.30, 0.90, 0.02, 0.95, 0.60, 0.50]  # 0.02 is below the graph's own 0.05 threshold: not output


class OfficialLike(nn.Module):
    """The official file's interface: image (1, 3, S, S) -> bboxes (1, K, 4), labels (1, K) int64
    contiguous 1..80, scores (1, K), K data-dependent (the graph thresholds at 0.05), not sorted."""

    def __init__(self):
        super().__init__()
        self.register_buffer("boxes", torch.tensor(BOXES))
        self.register_buffer("labels", torch.tensor(LABELS, dtype=torch.int64))
        self.register_buffer("scores", torch.tensor(SCORES))

    def forward(self, image):
        scores = self.scores + 0.0 * image.mean()  # depends on the input, as a real graph does
        keep = (scores > 0.05).nonzero()[:, 0]
        return self.boxes[keep][None], self.labels[keep][None], scores[keep][None]


def _official_file(folder, size: int):
    path = folder / "resnet34-ssd1200.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(OfficialLike(), (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["bboxes", "labels", "scores"])
    return path


@pytest.fixture(scope="module")
def official_onnx(tmp_path_factory):
    return _official_file(tmp_path_factory.mktemp("official"), SIZE)


def _expected(num_classes=81):
    """Independent: above 0.05, labels 1..num_classes-1 only and unchanged, by score descending."""
    rows = [(s, b, c) for b, c, s in zip(BOXES, LABELS, SCORES) if s > 0.05 and 1 <= c < num_classes]
    rows.sort(key=lambda r: -r[0])
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_official_layout_is_recognised_and_keeps_contiguous_labels(official_onnx, backend):
    runner = make_backend(backend, "ssd128_mini", model_file=official_onnx)
    info = runner.describe()
    assert (info["layout"], info["file_batch"], info["quantized"]) == ("official", 1, False)
    assert not runner.has_raw_maps and runner.num_classes == 81  # the network's spec: the file does not say
    dets = runner.predict(torch.randn(2, 3, SIZE, SIZE))  # batch 2 on a batch-1 file: one run per image
    scores, boxes, labels = _expected()
    assert dets.boxes.shape == (2, 200, 4) and dets.counts.tolist() == [4, 4]
    for n in range(2):
        assert dets.labels[n, :4].tolist() == labels == [12, 1, 44, 80]  # by score, as given; 81 dropped
        assert dets.scores[n, :4].tolist() == pytest.approx(scores)
        assert torch.allclose(dets.boxes[n, :4], torch.tensor(boxes))  # ltrb as the file gives them
        assert dets.labels[n, 4:].eq(0).all() and dets.scores[n, 4:].eq(0).all()
    with pytest.raises(ValueError, match="post-processing inside the graph"):
        runner.forward_raw(torch.randn(1, 3, SIZE, SIZE))


def test_official_labels_past_the_classes_are_dropped(official_onnx):
    with torch.no_grad():
        out = [t.numpy() for t in OfficialLike()(torch.zeros(1, 3, SIZE, SIZE))]
    dets = MF.detections(dict(zip(MF.DETECTION_OUTPUTS, out)), "official", num_classes=14)  # labels 1..13
    scores, _boxes, labels = _expected(14)
    assert dets.labels[0, : int(dets.counts[0])].tolist() == labels == [12, 1]  # 44, 80 and 81 dropped
    assert dets.scores[0, :2].tolist() == pytest.approx(scores)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_our_exports_keep_their_layouts(tmp_path, backend):
    from ssdbench.infer.export import export_model
    from ssdbench.model.ssd import build_model

    torch.manual_seed(0)
    model = build_model("ssd128_mini").eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    eager = make_backend("eager", "ssd128_mini", model=model).predict(x)
    for mode, layout in (("outside", "raw"), ("inside", "padded")):
        path = export_model(model, "ssd128_mini", tmp_path / f"{mode}.onnx", postprocess=mode)
        assert MF.inspect_onnx(path).layout == layout and MF.inspect_onnx(path).model_name == "ssd128_mini"
        runner = make_backend(backend, None, model_file=path)  # the file names its network
        assert runner.model_name == "ssd128_mini" and runner.describe()["file_batch"] is None
        got = runner.predict(x)
        k = int(eager.counts[0])
        assert got.counts.tolist() == eager.counts.tolist()
        assert torch.equal(got.labels[:, :k], eager.labels[:, :k])
        assert (got.boxes[:, :k] - eager.boxes[:, :k]).abs().max() < 1e-4


def test_bad_model_files_name_the_problem(tmp_path, official_onnx):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        MF.resolve_path(tmp_path / "none.onnx")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="without quantize.json"):
        MF.resolve_path(tmp_path / "folder")
    (tmp_path / "model.xml").write_text("<net/>")
    with pytest.raises(FileNotFoundError, match="model.bin are missing"):
        MF.resolve_path(tmp_path / "model.xml")
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected an .onnx file"):
        MF.resolve_path(tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="match no known layout"):
        MF.layout_of(["out0"], None, official_onnx)
    with pytest.raises(ValueError, match="--model-file runs with --backend onnxruntime or openvino"):
        make_backend("eager", "ssd128_mini", model_file=official_onnx)


def test_detections_pad_and_sort_independently():
    out = {"bboxes": np.array([[[0, 0, 1, 1], [0.1, 0.1, 0.2, 0.2]]], np.float32),
           "labels": np.array([[3, 1]]), "scores": np.array([[0.2, 0.7]], np.float32)}
    dets = MF.detections(out, "official")
    assert dets.counts.tolist() == [2] and dets.labels[0, :2].tolist() == [1, 3]
    assert torch.allclose(dets.boxes[0, 0], torch.tensor([0.1, 0.1, 0.2, 0.2]))


@pytest.mark.filterwarnings("ignore:.*non-positive")
def test_cli_predict_and_eval_on_the_official_layout(official_onnx, tmp_path, capsys):
    official_1200 = _official_file(tmp_path, 1200)  # the official input size, for --model ssd1200_r34
    """`predict` and `eval` take --model-file; an official-layout file's label k is the k-th category."""
    from data_fixtures import tiny_coco
    from PIL import Image

    from ssdbench.cli import main

    image = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(image)
    assert main(["predict", str(image), "--backend", "onnxruntime", "--model-file", str(official_1200),
                 "--out", str(tmp_path / "pred")]) == 0  # a file naming no network: SSD-Large
    records = json.loads((tmp_path / "pred" / "detections.json").read_text())[0]["detections"]
    # above --score-threshold 0.3, by score: labels 12, 1, 44, 80 -> COCO's 12th, 1st, 44th, 80th id
    assert [r["category_id"] for r in records] == [COCO_IDS[k - 1] for k in (12, 1, 44, 80)] == [13, 1, 49, 90]
    assert main(["predict", str(image), "--weights", "w.pt", "--model-file", str(official_onnx)]) == 2
    assert "exactly one of --weights and --model-file" in capsys.readouterr().err
    data = tiny_coco(tmp_path / "coco", "val")
    assert main(["eval", "--data", str(data), "--backend", "eager", "--model-file", str(official_onnx)]) == 2
    assert "--model-file needs --backend onnxruntime or openvino" in capsys.readouterr().err
    assert main(["eval", "--data", str(data), "--weights", "w.pt", "--amp", "--dtype", "fp32"]) == 2
    assert "--amp means --dtype bf16" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("mode", ["outside", "inside"])
def test_a_fixed_batch_file_takes_shorter_and_longer_batches(tmp_path, backend, mode):
    """A file of fixed batch 2 given 1 or 3 images: the last run is filled up with zero images
    whose outputs are dropped; every real image gets eager PyTorch's detections."""
    from ssdbench.infer.export import export_model
    from ssdbench.model.ssd import build_model

    torch.manual_seed(0)
    model = build_model("ssd128_mini").eval()
    path = export_model(model, "ssd128_mini", tmp_path / "b2.onnx", postprocess=mode, dynamic_batch=False,
                        batch_size=2)
    runner = make_backend(backend, None, model_file=path)
    assert runner.describe()["file_batch"] == 2
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    eager = make_backend("eager", "ssd128_mini", model=model).predict(x)
    for n in (1, 3):
        got = runner.predict(x[:n])
        assert got.boxes.shape == (n, 200, 4) and got.counts.tolist() == eager.counts[:n].tolist()
        k = int(eager.counts[:n].min())
        assert torch.equal(got.labels[:, :k], eager.labels[:n, :k])
        assert (got.boxes[:, :k] - eager.boxes[:n, :k]).abs().max() < 1e-4
    if mode == "outside":
        locs, scores = runner.forward_raw(x[:1])
        assert locs.shape[0] == scores.shape[0] == 1 and scores.shape[1] == runner.num_classes == 81


@pytest.mark.filterwarnings("ignore:.*non-positive")
def test_cli_eval_checks_the_model_file_before_inference(official_onnx, tmp_path, monkeypatch, capsys):
    """eval --model-file: the file's class count against the dataset's before any inference;
    --channels-last on is an error for the file backends; openvino runs on the CPU even where
    --device auto would pick a GPU."""
    from data_fixtures import tiny_coco

    import ssdbench.eval.evaluate as E
    from ssdbench import dist as D
    from ssdbench.cli import main
    from ssdbench.infer.export import export_model
    from ssdbench.model.ssd import build_model

    data = tiny_coco(tmp_path / "coco", "val")  # 3 categories: 4 classes with background
    out = str(tmp_path / "det.json")
    evaluate = E.predict_backend
    monkeypatch.setattr(E, "predict_backend", lambda *a, **k: pytest.fail("inference ran"))
    assert main(["eval", "--data", str(data), "--backend", "onnxruntime", "--model-file", str(official_onnx),
                 "--model", "ssd128_mini", "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"--model-file {official_onnx} predicts 81 classes but --data {data} has 4 (with background)" in err
    for backend in ("onnxruntime", "openvino"):
        assert main(["eval", "--data", str(data), "--backend", backend, "--model-file", str(official_onnx),
                     "--channels-last", "on", "--out", out]) == 2
        assert f"--channels-last on does not apply to --backend {backend}" in capsys.readouterr().err

    four = export_model(build_model("ssd128_mini", num_classes=4).eval(), "ssd128_mini", tmp_path / "four.onnx")
    assert MF.inspect_onnx(four).num_classes == 4
    monkeypatch.setattr(E, "predict_backend", evaluate)
    real_pick = D.pick_device  # --device auto on a machine with a GPU: init_distributed picks it
    monkeypatch.setattr(D, "pick_device", lambda name, *a, **k: torch.device("cuda", 0) if name == "auto"
                        else real_pick(name, *a, **k))
    assert main(["eval", "--data", str(data), "--backend", "openvino", "--model-file", str(four),
                 "--dtype", "fp32", "--out", out]) == 0
    assert "ssd128_mini (openvino, fp32)" in capsys.readouterr().out


def test_loadgen_model_file_checks_the_resolved_backend(tmp_path, capsys):
    """`loadgen --model-file`: the backend may come from --preset or --user-conf (the resolved one
    counts, not the flag); --weights and --space-to-depth, which the file would silently override,
    are refused by name."""
    from ssdbench.cli import main

    missing = str(tmp_path / "absent.onnx")
    user = tmp_path / "user.conf"
    user.write_text("ssd-resnet34.*.backend = openvino\n")
    base = ["loadgen", "--scenario", "Offline", "--out", str(tmp_path / "lg"), "--model-file", missing]
    # backend from the user conf: accepted, so the next problem is the file itself
    assert main([*base, "--user-conf", str(user)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"model file not found: {missing}")
    # backend eager from the preset (no --backend flag): refused, naming where eager came from
    assert main([*base, "--preset", "cpu"]) == 2
    assert "--model-file needs --backend onnxruntime or openvino (got eager, backend from preset cpu)" \
        in capsys.readouterr().err
    # a flag still overrides a user conf
    assert main([*base, "--user-conf", str(user), "--backend", "compile"]) == 2
    assert "(got compile, --backend)" in capsys.readouterr().err
    for extra, named in ((["--weights", "w.pt"], "--weights cannot"),
                         (["--space-to-depth"], "--space-to-depth cannot"),
                         (["--weights", "w.pt", "--space-to-depth"], "--weights and --space-to-depth cannot")):
        assert main([*base, "--backend", "onnxruntime", *extra]) == 2
        err = capsys.readouterr().err
        assert f"error: {named} go with --model-file" in err and len(err.strip().splitlines()) == 1
