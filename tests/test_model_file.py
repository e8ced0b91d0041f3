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
# candidates of the stand-in graph: ltrb boxes, COCO category ids (12 is unused: dropped), scores unsorted
BOXES = [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.1, 0.4, 0.9], [0.6, 0.6, 0.7, 0.8], [0.2, 0.3, 0.3, 0.4]]
CAT_IDS = [90, 1, 13, 12, 44]
SCORES = [0.30, 0.90, 0.02, 0.95, 0.60]  # 0.02 is below the graph's own 0.05 threshold: not output


class OfficialLike(nn.Module):
    """The official file's interface: image (1, 3, S, S) -> bboxes (1, K, 4), labels (1, K) int64
    category ids, scores (1, K), K data-dependent (the graph thresholds at 0.05), not sorted."""

    def __init__(self):
        super().__init__()
        self.register_buffer("boxes", torch.tensor(BOXES))
        self.register_buffer("labels", torch.tensor(CAT_IDS, dtype=torch.int64))
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


def _expected(category_ids):
    """Independent: above 0.05, known ids only, by score descending, id -> position in the list + 1."""
    rows = [(s, b, category_ids.index(c) + 1) for b, c, s in zip(BOXES, CAT_IDS, SCORES)
            if s > 0.05 and c in category_ids]
    rows.sort(key=lambda r: -r[0])
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def test_coco80_ids_are_cocos():
    assert list(MF.COCO80_CATEGORY_IDS) == [i for i in range(1, 91) if i not in COCO_UNUSED]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_official_layout_is_recognised_and_mapped(official_onnx, backend):
    runner = make_backend(backend, "ssd128_mini", model_file=official_onnx)
    info = runner.describe()
    assert (info["layout"], info["file_batch"], info["quantized"]) == ("official", 1, False)
    assert not runner.has_raw_maps
    dets = runner.predict(torch.randn(2, 3, SIZE, SIZE))  # batch 2 on a batch-1 file: one run per image
    scores, boxes, labels = _expected(list(MF.COCO80_CATEGORY_IDS))
    assert dets.boxes.shape == (2, 200, 4) and dets.counts.tolist() == [3, 3]
    for n in range(2):
        assert dets.labels[n, :3].tolist() == labels == [1, 40, 80]  # by score: 1 -> 1, 44 -> 40, 90 -> 80; 12 dropped
        assert dets.scores[n, :3].tolist() == pytest.approx(scores)
        assert torch.allclose(dets.boxes[n, :3], torch.tensor(boxes))  # ltrb as the file gives them
        assert dets.labels[n, 3:].eq(0).all() and dets.scores[n, 3:].eq(0).all()
    with pytest.raises(ValueError, match="post-processing inside the graph"):
        runner.forward_raw(torch.randn(1, 3, SIZE, SIZE))


def test_official_layout_with_a_datasets_category_ids(official_onnx):
    cat_ids = [1, 13, 90]  # a dataset with three categories: label k -> its k-th id
    runner = make_backend("onnxruntime", "ssd128_mini", model_file=official_onnx, category_ids=cat_ids)
    dets = runner.predict(torch.zeros(1, 3, SIZE, SIZE))
    scores, _boxes, labels = _expected(cat_ids)
    assert dets.labels[0, : int(dets.counts[0])].tolist() == labels == [1, 3]  # 1 -> 1, 90 -> 3; 44 unknown
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
    runner = make_backend("onnxruntime", "ssd128_mini", model_file=official_onnx)
    runner.file = MF.ModelFile(official_onnx, "onnx", "official", None, False, 2, {})  # a batch-2 file
    with pytest.raises(ValueError, match="takes batches of 2, got 3 images"):
        runner.predict(torch.zeros(3, 3, SIZE, SIZE))


def test_detections_pad_and_sort_independently():
    out = {"bboxes": np.array([[[0, 0, 1, 1], [0.1, 0.1, 0.2, 0.2]]], np.float32),
           "labels": np.array([[3, 1]]), "scores": np.array([[0.2, 0.7]], np.float32)}
    dets = MF.detections(out, "official", category_ids=(1, 2, 3))
    assert dets.counts.tolist() == [2] and dets.labels[0, :2].tolist() == [1, 3]
    assert torch.allclose(dets.boxes[0, 0], torch.tensor([0.1, 0.1, 0.2, 0.2]))


@pytest.mark.filterwarnings("ignore:.*non-positive")
def test_cli_predict_and_eval_on_the_official_layout(official_onnx, tmp_path, capsys):
    official_1200 = _official_file(tmp_path, 1200)  # the official input size, for --model ssd1200_r34
    """`predict` and `eval` take --model-file; an official-layout file's category ids are the dataset's."""
    from data_fixtures import tiny_coco
    from PIL import Image

    from ssdbench.cli import main

    image = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(image)
    assert main(["predict", str(image), "--backend", "onnxruntime", "--model-file", str(official_1200),
                 "--out", str(tmp_path / "pred")]) == 0  # a file naming no network: SSD-Large
    records = json.loads((tmp_path / "pred" / "detections.json").read_text())[0]["detections"]
    assert [r["category_id"] for r in records] == [1, 44, 90]  # above --score-threshold 0.3, by score
    assert main(["predict", str(image), "--weights", "w.pt", "--model-file", str(official_onnx)]) == 2
    assert "exactly one of --weights and --model-file" in capsys.readouterr().err
    data = tiny_coco(tmp_path / "coco", "val")
    assert main(["eval", "--data", str(data), "--backend", "eager", "--model-file", str(official_onnx)]) == 2
    assert "--model-file needs --backend onnxruntime or openvino" in capsys.readouterr().err
    assert main(["eval", "--data", str(data), "--weights", "w.pt", "--amp", "--dtype", "fp32"]) == 2
    assert "--amp means --dtype bf16" in capsys.readouterr().err


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
