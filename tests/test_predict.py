"""`ssdbench predict` and `draw_detections`: pixel boxes, names, drawn images, one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ssdbench.cli import main
from ssdbench.infer.draw import draw_detections
from ssdbench.infer.predict import categories, to_records
from ssdbench.model.postprocess import Detections
from ssdbench.model.ssd import build_model


def _dets(boxes, labels, scores):
    return Detections(torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), torch.tensor(scores))


def test_records_scale_boxes_to_original_pixels():
    dets = _dets([[0.1, 0.2, 0.5, 0.6], [-0.1, 0.5, 1.2, 0.9], [0.0, 0.0, 0.1, 0.1]], [2, 1, 1], [0.9, 0.5, 0.1])
    cats = [(7, "cat"), (11, "dog")]
    recs = to_records(dets, width=200, height=100, cats=cats, score_threshold=0.3)
    assert len(recs) == 2  # the 0.1 detection is below the threshold
    assert recs[0] == {"box": [20.0, 20.0, 100.0, 60.0], "category_id": 11, "label": 2, "name": "dog", "score": 0.9}
    assert recs[1]["box"] == [0.0, 50.0, 200.0, 90.0]  # clipped to the image
    assert recs[1]["category_id"] == 7


def test_draw_detections_marks_only_the_box_outline():
    image = np.zeros((100, 200, 3), np.uint8)
    dets = _dets([[0.25, 0.5, 0.75, 0.9], [0.0, 0.0, 0.2, 0.2]], [1, 2], [0.8, 0.1])
    out = draw_detections(image, dets, {1: "thing", 2: "other"}, score_threshold=0.5)
    px = np.asarray(out)
    assert out.size == (200, 100) and image.max() == 0  # the input is not modified
    assert px[70, 50].any() and px[89, 100].any()  # left and bottom edges (x=50, y=90 exclusive)
    assert not px[70, 100].any()  # inside the box stays untouched
    assert not px[5:19, 5:35].any()  # below the threshold: not drawn
    assert not px[95:, :].any() and not px[:, 155:].any()  # nothing outside the box and its tag


def test_categories_without_and_with_dataset(tmp_path):
    coco = categories(81)
    assert coco[0] == (1, "person") and coco[-1] == (90, "toothbrush") and len(coco) == 80
    assert categories(4) == [(1, "class 1"), (2, "class 2"), (3, "class 3")]
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "instances_val2017.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]}))
    assert categories(3, str(tmp_path)) == [(5, "a"), (9, "b")]
    with pytest.raises(ValueError, match="2 classes, the model 80"):
        categories(81, str(tmp_path))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = build_model("ssd128_mini")
    with torch.no_grad():
        for conf in model.conf:
            conf.bias.view(model.num_classes, -1)[1] = 8.0  # class 1 wins everywhere: many detections
    torch.save(model.state_dict(), root / "w.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(root / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(root / "b.png")
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def test_cli_writes_json_and_drawn_images(files, capsys):
    out = files / "out"
    rc = main(["predict", str(files / "a.jpg"), str(files / "b.png"), "--model", "ssd128_mini",
               "--weights", str(files / "w.pt"), "--out", str(out), "--score-threshold", "0.3"])
    assert rc == 0
    results = json.loads((out / "detections.json").read_text())
    assert [r["drawn"] for r in results] == ["a_det.jpg", "b_det.png"]
    for r, (w, h) in zip(results, [(160, 90), (40, 50)]):
        assert (r["width"], r["height"]) == (w, h)
        assert Image.open(out / r["drawn"]).size == (w, h)
        assert 0 < len(r["detections"]) <= 200
        for d in r["detections"]:
            l, t, rr, b = d["box"]
            assert 0 <= l <= rr <= w and 0 <= t <= b <= h and d["score"] >= 0.3
            assert (d["label"], d["category_id"], d["name"]) == (1, 1, "person")
    assert "a.jpg:" in capsys.readouterr().out


def test_cli_one_line_errors(files, capsys):
    weights = str(files / "w.pt")
    cases = [
        (["predict", str(files / "bad.jpg"), "--model", "ssd128_mini", "--weights", weights], "bad.jpg"),
        (["predict", str(files / "a.jpg"), "--model", "ssd300_r34", "--weights", weights], "does not fit"),
        (["predict", str(files / "missing.jpg"), "--model", "ssd128_mini", "--weights", weights], "missing.jpg"),
    ]
    for argv, culprit in cases:
        assert main(argv + ["--out", str(files / "err")]) == 2
        err = capsys.readouterr().err.strip()
        assert culprit in err and len(err.splitlines()) == 1
    assert not (files / "err").exists()  # nothing written when the inputs are bad
