"""Hostile images and boxes (docs/robustness.md, "Images" and "Boxes").

A JPEG whose header claims 65000x65000 pixels (a decompression bomb: libjpeg-turbo would ask for
11.8 GiB) is refused from its header, before any decoder allocates: train and eval skip it naming
the file, `data check` reports it, `predict` stops naming it. These runs happen in subprocesses
under an address-space limit (RLIMIT_AS) the bomb would exceed, and must stay far below it.
A bbox with a NaN coordinate is an error in `data check` and is skipped with a warning naming the
annotation by the training reader and by COCO scoring alike.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import synthetic_coco, write_coco
from PIL import Image

from ssdbench.cli import main
from ssdbench.data.coco import BadSampleError, CocoDetection
from ssdbench.data.decode import ImageTooLargeError, check_image_size, decode_image, max_image_pixels
from ssdbench.data.validate import check_dataset
from ssdbench.eval.coco_scoring import coco_stats

LIMIT_TORCH = 6 << 30  # address space for a process that imports torch (~0.7 GiB of it); the bomb needs 11.8 GiB
LIMIT_SMALL = 2 << 30  # for a process that only decodes
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def jpeg_claiming(width: int, height: int) -> bytes:
    """A valid 16x16 JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xC0:  # baseline frame: precision (1 byte), height, width (2 bytes each)
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF0 marker")


BOMB = jpeg_claiming(65000, 65000)


def _limited(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_limited(code_or_argv, limit: int) -> subprocess.CompletedProcess:
    """Run Python code (str) or an ssdbench command (list) under an address-space limit; the
    child's peak resident memory in KiB is printed last by a wrapper. (VmHWM of the process's
    own memory map: `ru_maxrss` would carry over the forking test process's size through exec.)"""
    body = code_or_argv if isinstance(code_or_argv, str) else (
        f"from ssdbench import cli\nrc = cli.main({code_or_argv!r})\n")
    wrapper = body + ("\nimport re, sys\nstatus = open('/proc/self/status').read()\n"
                      "print('PEAK_KIB', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
                      "sys.exit(rc if 'rc' in dir() else 0)\n")
    return subprocess.run([sys.executable, "-c", wrapper], check=False, capture_output=True, text=True,
                          timeout=300, env=ENV, preexec_fn=_limited(limit))


def _peak_bytes(proc) -> int:
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK_KIB"))
    return int(line.split()[1]) * 1024


@pytest.fixture(scope="module")
def bomb_data(tmp_path_factory):
    """A synthetic dataset with its second train image and second val image replaced by the bomb;
    returns (root, {split: (image id, path)})."""
    root = synthetic_coco(tmp_path_factory.mktemp("bomb") / "coco", train=16, val=4)
    planted = {}
    for split in ("train", "val"):
        ds = CocoDetection(root, split)
        path = ds.image_path(1)
        path.write_bytes(BOMB)
        planted[split] = (ds.ids[1], path)
    return root, planted


def test_header_is_read_without_decoding():
    assert check_image_size(jpeg_claiming(40, 30)) == (40, 30)
    with pytest.raises(ImageTooLargeError, match="65000x65000 = 4,225,000,000 pixels, over the limit of 89,478,485"):
        check_image_size(BOMB)
    with pytest.raises(ValueError, match="image too large"):
        decode_image(BOMB, "pillow")  # every decoder is behind the same check


def test_the_limit_is_configurable(monkeypatch):
    assert max_image_pixels() == Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit
    monkeypatch.setenv("SSDBENCH_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageTooLargeError, match="40x30 = 1,200 pixels, over the limit of 1,000"):
        decode_image(jpeg_claiming(40, 30))
    monkeypatch.setenv("SSDBENCH_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValueError, match="SSDBENCH_MAX_IMAGE_PIXELS must be a positive integer, got 'lots'"):
        max_image_pixels()


def test_bomb_is_a_bad_sample_far_below_a_memory_limit(bomb_data):
    root, planted = bomb_data
    code = (f"from ssdbench.data.coco import CocoDetection, BadSampleError\n"
            f"try:\n    CocoDetection({str(root)!r}, 'train').read_image(1)\n"
            f"except BadSampleError as exc:\n    print('BAD', exc)\n")
    proc = _run_limited(code, LIMIT_SMALL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image_id, path = planted["train"]
    assert f"BAD bad sample: image {image_id} ({path}): image too large" in proc.stdout
    assert _peak_bytes(proc) < LIMIT_SMALL // 8, _peak_bytes(proc)  # nowhere near the limit


def test_train_and_eval_skip_the_bomb_under_a_memory_limit(bomb_data, tmp_path):
    root, planted = bomb_data
    out = tmp_path / "run"
    proc = _run_limited(["train", "--data", str(root), "--model", "ssd128_mini", "--epochs", "1", "--eval-epochs", "1",
                         "--batch-size", "4",
                         "--workers", "0", "--log-every", "1", "--lr", "0.01", "--out", str(out)], LIMIT_TORCH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("train", "val"):  # the last epoch evaluates: the val bomb is met there
        image_id, path = planted[split]
        assert f"skipping bad sample: image {image_id} ({path}): image too large" in proc.stderr, split
    assert _peak_bytes(proc) < LIMIT_TORCH // 4, _peak_bytes(proc)
    proc = _run_limited(["eval", "--data", str(root), "--weights", str(out / "checkpoints" / "last.pt"),
                         "--workers", "0", "--out", str(tmp_path / "d.json")], LIMIT_TORCH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    image_id, path = planted["val"]
    assert f"skipping bad sample: image {image_id} ({path}): image too large" in proc.stderr
    assert _peak_bytes(proc) < LIMIT_TORCH // 4


def test_device_pipeline_workers_skip_the_bomb(bomb_data):
    from ssdbench.data.gpu_pipeline import JpegBytesDataset

    root, planted = bomb_data
    image_id, _path = planted["train"]
    with pytest.warns(RuntimeWarning, match=rf"skipping bad sample: image {image_id} .*image too large"):
        assert JpegBytesDataset(CocoDetection(root, "train"))[1] is None


def test_data_check_reports_the_bomb(bomb_data, capsys):
    root, planted = bomb_data
    report = check_dataset(root, ("train",), progress=False)
    assert not report.ok and report.kinds("train").get("image_too_large") == 1
    assert main(["data", "check", str(root), "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert f"error [val] image_too_large: 1 (first: image {planted['val'][0]}" in out


def test_predict_names_the_bomb(bomb_data, tmp_path, capsys):
    _root, planted = bomb_data
    path = planted["train"][1]
    assert main(["predict", str(path), "--weights", str(tmp_path / "unused.pt"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ssdbench predict: error: {path}: image too large") and "\n" not in err


# ---------------------------------------------------------------- non-finite boxes
CATS = [{"id": 1, "name": "a"}]
IMAGES = [{"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 30} for i in (1, 2)]
ANNS = [{"id": 11, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 1, "bbox": [20, 5, float("nan"), 8], "area": 80, "iscrowd": 0},
        {"id": 21, "image_id": 2, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}]


@pytest.fixture()
def nan_box(tmp_path):
    root = write_coco(tmp_path / "nan", "val", IMAGES, ANNS, CATS)  # json writes NaN, as COCO tools may
    assert "NaN" in (root / "annotations" / "instances_val2017.json").read_text()
    return root


def test_data_check_reports_a_nan_box(nan_box, capsys):
    assert main(["data", "check", str(nan_box), "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert "error [val] non_finite_box: 1 (first: annotation 12 (bbox [20, 5, nan, 8]))" in out


def test_training_reader_skips_a_nan_box_naming_it(nan_box):
    with pytest.warns(UserWarning, match=r"skipped 1 box\(es\) with a NaN or infinite coordinate: annotation ids 12"):
        ds = CocoDetection(nan_box, "val")
    boxes, _labels = ds.annotations(0)
    np.testing.assert_array_equal(boxes, [[2, 3, 12, 15]])  # annotation 11 only


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_scoring_drops_the_same_box(nan_box, tmp_path, backend):
    """Detections equal to the finite boxes score AP 1 only if the NaN box is no ground truth."""
    results = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
               for a in ANNS if a["id"] != 12]
    ann_file = nan_box / "annotations" / "instances_val2017.json"
    with pytest.warns(UserWarning, match=r"skipped 1 ground-truth box\(es\) with a NaN .*annotation ids 12"):
        stats = coco_stats(ann_file, results, backend=backend)
    without = json.loads(ann_file.read_text())
    without["annotations"] = [a for a in without["annotations"] if a["id"] != 12]
    assert stats[0] == pytest.approx(1.0)
    np.testing.assert_allclose(stats, coco_stats(without, results, backend=backend))


def test_nan_in_a_box_is_not_an_unreadable_image(nan_box):
    """Only the box is dropped: the image and its other box still load."""
    with pytest.warns(UserWarning):
        ds = CocoDetection(nan_box, "val")
    image, target = ds.load(0)
    assert image.shape == (30, 40, 3) and len(target["boxes"]) == 1


def test_bad_sample_error_pickles_with_its_reason():
    """Workers send the error across processes; its message must survive (it names the image)."""
    import pickle

    exc = pickle.loads(pickle.dumps(BadSampleError(7, Path("x.jpg"), "image too large")))
    assert str(exc) == "bad sample: image 7 (x.jpg): image too large"
