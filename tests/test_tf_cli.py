"""The TensorFlow-interface files through the commands: loadgen accuracy mode then `ssdbench
accuracy`, eval, predict, model info, quantize, and `data download --only ssd1200-tf`.

The data is a COCO-80 set of coloured rectangles (tf_fixtures.colour_coco) that the committed
graph detects: the embedded synthetic set has 9 classes, so a COCO-80 file cannot be scored on it.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from test_accuracy import _official_rule_map
from test_data_download import QUIET, FileServer
from tf_fixtures import ONNX, PB, colour_coco

from ssdbench.cli import main
from ssdbench.data.coco import CocoDetection
from ssdbench.infer.backends import make_backend
from ssdbench.loadgen.accuracy import decode_log

COUNT = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    patch = pytest.MonkeyPatch()
    patch.setenv("SSDBENCH_CACHE", str(root / "cache"))
    colour_coco(root / "coco", COUNT, seed=0)
    colour_coco(root / "coco", COUNT, seed=1, split="train")
    yield root / "coco"
    patch.undo()


def _direct(backend: str, path, data) -> list:
    """Per val image (file order): the backend's detections on its preprocessed image."""
    from ssdbench.data.decode import read_image
    from ssdbench.data.transforms import preprocess_for_inference

    runner = make_backend(backend, None, model_file=path)
    ann = json.loads((data / "annotations" / "instances_val2017.json").read_text())
    x = np.stack([preprocess_for_inference(read_image(data / "val2017" / im["file_name"]), 128)
                  for im in ann["images"]])
    return runner.predict(torch.from_numpy(x))


@pytest.mark.parametrize(("backend", "path"), [("openvino", PB), ("onnxruntime", ONNX)], ids=["pb", "onnx"])
def test_loadgen_accuracy_log_is_the_files_detections_and_scores_as_mlperf(backend, path, data, tmp_path, capsys):
    out = tmp_path / "lg"
    assert main(["loadgen", "--scenario", "SingleStream", "--mode", "accuracy", "--preset", "cpu", "--backend",
                 backend, "--model-file", str(path), "--data", str(data), "--warmup", "0", "--count", str(COUNT),
                 "--no-cache", "--out", str(out)]) == 0  # fmt: skip
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model_file"] == str(path) and settings["sut"]["model"] == "ssd128_mini"
    log = out / "mlperf_log_accuracy.json"
    capsys.readouterr()
    assert main(["accuracy", "--log", str(log), "--data", str(data)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("mAP="))
    official = _official_rule_map(data / "annotations" / "instances_val2017.json", log)
    assert 0.5 < official and line.startswith(f"mAP={100 * official:.3f}%")
    # the log holds the file's own detections ([ymin, xmin, ymax, xmax], labels as they are)
    dets = _direct(backend, path, data)
    by_idx = decode_log(log)
    assert sorted(by_idx) == list(range(COUNT))
    for idx, rows in by_idx.items():
        rows = np.asarray(rows, np.float64).reshape(-1, 7)
        k = int(dets.counts[idx])
        assert len(rows) == k > 0
        want = np.concatenate([dets.boxes[idx, :k].numpy()[:, [1, 0, 3, 2]], dets.scores[idx, :k, None].numpy(),
                               dets.labels[idx, :k, None].numpy()], axis=1)  # fmt: skip
        np.testing.assert_allclose(rows[:, 1:], want, atol=1e-5)


def test_eval_and_predict_on_both_files(data, tmp_path, capsys):
    stats = {}
    for backend, path in (("openvino", PB), ("openvino", ONNX), ("onnxruntime", ONNX)):
        dets_file = tmp_path / f"{backend}-{path.suffix[1:]}.json"
        assert main(["eval", "--backend", backend, "--model-file", str(path), "--data", str(data),
                     "--out", str(dets_file)]) == 0  # fmt: skip
        text = capsys.readouterr().out
        stats[(backend, path.suffix)] = float(text.split("maxDets=100 ] = ")[1].split()[0])
        results = json.loads(dets_file.read_text())
        cats = {c for c in (r["category_id"] for r in results)}
        assert cats <= {3, 13, 55} and 13 in cats  # labels 3, 12, 50 -> COCO ids 3, 13, 55 (inverse map)
    assert len(set(stats.values())) == 1 and stats[("openvino", ".pb")] > 0.5
    image = data / "val2017" / CocoDetection(data, "val").image_path(0).name
    for backend, path in (("openvino", PB), ("onnxruntime", ONNX)):
        out = tmp_path / f"pred-{backend}"
        assert main(["predict", str(image), "--backend", backend, "--model-file", str(path), "--data", str(data),
                     "--out", str(out)]) == 0  # fmt: skip
        assert "detections" in capsys.readouterr().out and any(out.glob("*_det.*"))
        assert json.loads((out / "detections.json").read_text())


def test_model_info_names_the_interface(capsys):
    assert main(["model", "info", "--model-file", str(PB)]) == 0
    text = capsys.readouterr().out
    for part in ("tensorflow file, layout tf", "image:0 [1,3,128,128] float32 NCHW", "detection_bboxes:0 [1,",
                 "detection_classes:0", "[ymin, xmin, ymax, xmax] normalised", "contiguous 1..80", "ssd128_mini"):
        assert part in text, part
    assert main(["model", "info", "--model-file", str(ONNX)]) == 0
    assert "onnx file, layout tf" in capsys.readouterr().out
    assert main(["model", "info"]) == 2
    assert "a NAME or --model-file" in capsys.readouterr().err


def test_quantize_openvino_keeps_the_tf_layout(data, tmp_path, capsys):
    """NNCF quantizes the frozen graph's convolutions (elementwise arithmetic, box decoding and NMS
    stay float): an INT8 IR with the TensorFlow outputs that keeps >= 99 % of the fp32 mAP. (On this
    test graph the scores come mostly from float arithmetic: docs/model_files.md.)"""
    out = tmp_path / "q"
    assert main(["quantize", "--backend", "openvino", "--model-file", str(PB), "--data", str(data),
                 "--calib-count", str(COUNT), "--out", str(out)]) == 0  # fmt: skip
    info = json.loads((out / "quantize.json").read_text())
    assert (info["layout"], info["model"], info["file"]) == ("tf", "ssd128_mini", "model.xml")
    runner = make_backend("openvino", None, model_file=out)
    assert runner.layout == "tf" and runner.file.quantized
    assert main(["quantize", "--backend", "onnxruntime", "--model-file", str(PB), "--data", str(data),
                 "--calib-count", "2", "--out", str(tmp_path / "q2")]) == 2
    assert "quantized with --backend openvino" in capsys.readouterr().err
    maps = []
    for path in (PB, out):
        assert main(["eval", "--backend", "openvino", "--model-file", str(path), "--data", str(data),
                     "--out", str(tmp_path / "dets.json")]) == 0  # fmt: skip
        maps.append(float(capsys.readouterr().out.split("maxDets=100 ] = ")[1].split()[0]))
    assert maps[0] > 0.5 and maps[1] >= 0.99 * maps[0]


def test_download_ssd1200_tf_extracts_the_graph_and_resumes(tmp_path, capsys):
    zip_path, onnx_path = "record/3345892/files/tf_ssd_resnet34_22.1.zip", "record/4735664/files/ssd_resnet34_mAP_20.2.onnx"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tf_ssd_resnet34_22.1/resnet34_tf.22.1.pb", PB.read_bytes())  # the layout of the real zip
    srv = FileServer({zip_path: buf.getvalue(), onnx_path: ONNX.read_bytes()})
    try:
        srv.drop_once.add(onnx_path)
        from ssdbench.data.download import download_coco

        dest = tmp_path / "models"
        done = download_coco(dest, ["ssd1200-tf"], base_url=srv.url, **QUIET)
        assert done == {"ssd1200_tf": "downloaded, extracted", "ssd1200_tf_onnx": "downloaded"}
        assert [rng for path, rng in srv.log if path == onnx_path][1].startswith("bytes=")  # resumed
        pb = dest / "tf_ssd_resnet34_22.1" / "resnet34_tf.22.1.pb"
        assert pb.read_bytes() == PB.read_bytes()
        assert (dest / "ssd_resnet34_mAP_20.2.onnx").read_bytes() == ONNX.read_bytes()
        assert main(["data", "download", "--dest", str(dest), "--base-url", srv.url, "--only", "ssd1200-tf"]) == 0
        assert "ssd1200_tf: already complete" in capsys.readouterr().out
        assert make_backend("openvino", None, model_file=pb).layout == "tf"
        bad = "ssd_resnet34_mAP_20.2.onnx=" + "0" * 64
        assert main(["data", "download", "--dest", str(tmp_path / "m2"), "--base-url", srv.url, "--only",
                     "ssd1200_tf_onnx", "--sha256", bad]) == 2  # fmt: skip
        assert "ssd_resnet34_mAP_20.2.onnx is corrupt" in capsys.readouterr().err
    finally:
        srv.close()
