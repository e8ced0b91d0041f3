"""COCO reader on a hand-written file, and image decoding."""

import io
import json
import pickle

import numpy as np
import pytest
from data_fixtures import tiny_coco, write_image
from PIL import Image

from ssdbench.data.coco import BadSampleError, CocoDetection
from ssdbench.data.decode import available_decoders, decode_image


@pytest.fixture
def tiny(tmp_path):
    tiny_coco(tmp_path, "val")
    with pytest.warns(UserWarning, match=r"1 box\(es\) with non-positive.*annotation ids 5$"):
        return CocoDetection(tmp_path, "val")


def test_category_mapping_follows_file_order(tiny):
    assert tiny.cat_ids == [5, 2, 90]
    assert tiny.cat_names == ["five", "two", "ninety"]
    assert tiny.num_classes == 4
    assert tiny.label_to_cat_id == {1: 5, 2: 2, 3: 90}
    assert tiny.cat_id_to_label == {5: 1, 2: 2, 90: 3}


def test_images_without_annotations_dropped_crowd_only_kept(tiny):
    assert tiny.ids == [10, 20, 30, 50]
    assert len(tiny) == 4
    assert tiny.image_info(1)["file_name"] == "b.jpg"
    assert tiny.image_path(1) == tiny.root / "val2017" / "b.jpg"


def test_annotations_ltrb_pixels_crowd_kept_degenerate_excluded(tiny):
    boxes, labels = tiny.annotations(0)  # image 10: annotations 1 and 2
    np.testing.assert_array_equal(boxes, [[4, 8, 24, 18], [50, 30, 80, 60]])
    np.testing.assert_array_equal(labels, [3, 1])
    assert boxes.dtype == np.float32 and labels.dtype == np.int64
    boxes, labels = tiny.annotations(1)  # image 20: crowd 3 kept as in the reference, then 4
    np.testing.assert_array_equal(boxes, [[0, 0, 40, 40], [10, 10, 15, 16]])
    np.testing.assert_array_equal(labels, [2, 2])
    boxes, labels = tiny.annotations(2)  # image 30: degenerate 5 skipped
    np.testing.assert_array_equal(boxes, [[1, 2, 4, 6]])
    boxes, labels = tiny.annotations(3)  # image 50: crowd only
    np.testing.assert_array_equal(boxes, [[2, 2, 22, 22]])


def test_exclude_crowd_leaves_crowd_boxes_out(tmp_path):
    tiny_coco(tmp_path, "val")
    with pytest.warns(UserWarning, match="non-positive"):
        ds = CocoDetection(tmp_path, "val", exclude_crowd=True)
    assert ds.ids == [10, 20, 30, 50]  # a crowd-only image is still kept
    np.testing.assert_array_equal(ds.annotations(1)[0], [[10, 10, 15, 16]])  # crowd 3 left out
    assert ds.annotations(3)[0].shape == (0, 4)
    _, empty = ds.load(3)
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_load_normalises_and_clips(tiny):
    image, target = tiny.load(0)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    expected = [[4 / 64, 8 / 48, 24 / 64, 18 / 48], [50 / 64, 30 / 48, 1.0, 1.0]]
    np.testing.assert_allclose(target["boxes"], expected, rtol=1e-6)
    assert target["boxes"].dtype == np.float32
    np.testing.assert_array_equal(target["labels"], [3, 1])
    assert target["image_id"] == 10 and target["orig_size"] == (48, 64)


def test_unknown_category_names_annotation(tmp_path):
    tiny_coco(tmp_path, "train")
    path = tmp_path / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][3]["category_id"] = 77
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="annotation 4 has unknown category id 77"):
        CocoDetection(tmp_path, "train")


def test_missing_annotation_file_explains_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"instances_val2017\.json.*annotations/instances_"):
        CocoDetection(tmp_path, "val")


def test_malformed_json(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="malformed JSON"):
        CocoDetection(tmp_path, "val")


@pytest.mark.filterwarnings("ignore:.*non-positive")
def test_bad_samples_raise_bad_sample_error(tmp_path):
    tiny_coco(tmp_path, "val")
    (tmp_path / "val2017" / "a.jpg").unlink()
    data = (tmp_path / "val2017" / "b.jpg").read_bytes()
    (tmp_path / "val2017" / "b.jpg").write_bytes(data[: len(data) // 2])
    write_image(tmp_path / "val2017" / "c.jpg", 33, 32)  # annotated as 32x32
    ds = CocoDetection(tmp_path, "val")
    for i, (image_id, reason) in enumerate([(10, "not found"), (20, "truncated"), (30, "33")]):
        with pytest.raises(BadSampleError, match=f"image {image_id} .*{reason}") as info:
            ds.load(i)
        assert info.value.image_id == image_id
        again = pickle.loads(pickle.dumps(info.value))  # crosses DataLoader worker processes
        assert (again.image_id, again.path, again.reason) == (image_id, info.value.path, info.value.reason)


# --- decoding ---------------------------------------------------------------------------------
def _encode(array: np.ndarray, mode: str, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array)
    img = img.quantize(8) if mode == "P" else img.convert(mode)
    img.save(buf, format=fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    return buf.getvalue()


FLAT = np.full((16, 24, 3), (200, 40, 90), np.uint8)


@pytest.mark.parametrize("decoder", available_decoders() + ["auto"])
@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"),
                                      ("RGBA", "PNG"), ("P", "PNG"), ("L", "PNG")])
def test_decode_converts_to_rgb(decoder, mode, fmt):
    data = _encode(FLAT, mode, fmt)
    if decoder == "simplejpeg" and fmt != "JPEG":
        with pytest.raises(ValueError, match="JPEG only"):
            decode_image(data, decoder)
        return
    out = decode_image(data, decoder)
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    # Independent expectation: Pillow's own conversion of the same file (CMYK decoded by Pillow).
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)
    assert np.abs(out.astype(np.int16) - expected).max() <= 2
    if mode in ("RGB", "RGBA", "P"):  # colour kept: the flat colour comes back
        assert np.abs(out.astype(np.int16) - FLAT).max() <= 6


@pytest.mark.parametrize("decoder", available_decoders() + ["auto"])
def test_decode_rejects_corrupt(decoder):
    data = _encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB")
    with pytest.raises(ValueError, match="cannot decode|truncated"):
        decode_image(data[: len(data) // 2], decoder)
    with pytest.raises(ValueError):
        decode_image(b"\xff\xd8\xff" + b"\x00" * 20, decoder)
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"", decoder)


def test_decode_unknown_decoder():
    with pytest.raises(ValueError, match="unknown decoder 'turbo'"):
        decode_image(b"x", "turbo")


def test_malformed_bbox_names_annotation(tmp_path):
    tiny_coco(tmp_path, "val")
    path = tmp_path / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["bbox"] = [1, 2, 3]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotation 2 has a malformed bbox \[1, 2, 3\]"):
        CocoDetection(tmp_path, "val")
