"""`data check`: a clean dataset passes; each planted fault is found, counted and named."""

import json

import pytest
from data_fixtures import write_coco, write_image

from ssdbench.cli import main
from ssdbench.data.validate import check_dataset

CATS = [{"id": 3, "name": "a"}, {"id": 8, "name": "b"}]


def _clean(root):
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 40, "height": 30} for i in (1, 2, 3)]
    anns = [{"id": 100 + i, "image_id": i, "category_id": 3 if i % 2 else 8,
             "bbox": [2, 3, 10, 12], "area": 120, "iscrowd": 0} for i in (1, 2, 3)]
    return write_coco(root, "val", images, anns, CATS)


def _edit_json(root, change):
    path = root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _image(root, image_id=2):
    return root / "val2017" / f"{image_id:012d}.jpg"


def _truncate(root):
    data = _image(root).read_bytes()
    _image(root).write_bytes(data[: len(data) // 2])


def _set(field, value, index=1, key="annotations"):
    return lambda root: _edit_json(root, lambda d: d[key][index].__setitem__(field, value))


# fault name -> (plant(root), expected kind, text naming the offender, is an error)
FAULTS = {
    "missing": (lambda r: _image(r).unlink(), "missing_file", "image 2", True),
    "unreadable": (lambda r: (_image(r).unlink(), _image(r).mkdir()), "unreadable_file", "image 2", True),
    "truncated": (_truncate, "corrupt_image", "image 2", True),
    "garbage": (lambda r: _image(r).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg"), "corrupt_image", "image 2", True),
    "size": (lambda r: write_image(_image(r), 41, 30), "size_mismatch", "image 2", True),
    "grayscale": (lambda r: write_image(_image(r), 40, 30, "L"), "grayscale", "image 2", False),
    "cmyk": (lambda r: write_image(_image(r), 40, 30, "CMYK"), "cmyk", "image 2", False),
    "alpha": (lambda r: write_image(_image(r), 40, 30, "RGBA", "PNG"), "alpha", "image 2", False),
    "degenerate": (_set("bbox", [2, 3, 0, 12]), "degenerate_box", "annotation 102", False),
    "outside": (_set("bbox", [35, 3, 10, 12]), "box_outside_image", "annotation 102", False),
    "unknown_cat": (_set("category_id", 4), "unknown_category", "annotation 102 (category 4)", True),
    "unknown_image": (_set("image_id", 9), "unknown_image", "annotation 102 (image 9)", True),
    "dup_image": (_set("id", 1, key="images"), "duplicate_image_id", "image 1", True),
    "dup_ann": (_set("id", 101), "duplicate_annotation_id", "annotation 101", True),
    "bad_bbox": (_set("bbox", [1, 2, 3]), "malformed_annotation", "annotation 102", True),
    "json": (lambda r: (r / "annotations" / "instances_val2017.json").write_text("{oops"),
             "malformed_json", "instances_val2017.json", True),
}


def test_clean_dataset_has_no_findings(tmp_path):
    report = check_dataset(_clean(tmp_path), ("val",), progress=False)
    assert report.ok and report.findings == {}
    assert report.counts["val"] == {"images": 3, "annotations": 3, "categories": 2,
                                    "images with annotations": 3}


@pytest.mark.parametrize("fault", FAULTS)
def test_planted_fault_is_found(tmp_path, fault):
    plant, kind, offender, is_error = FAULTS[fault]
    root = _clean(tmp_path)
    plant(root)
    report = check_dataset(root, ("val",), progress=False)
    found = report.kinds("val")
    assert found.get(kind) == 1, report.summary()
    finding = report.findings[("val", kind)]
    assert offender in finding.offenders[0]
    assert report.ok is not is_error
    expected_others = {"alpha": {"not_jpeg"}, "dup_image": {"unknown_image"}}.get(fault, set())
    assert set(found) - {kind} <= expected_others, report.summary()


def test_first_offenders_are_capped_and_counted(tmp_path):
    root = _clean(tmp_path)
    _edit_json(root, lambda d: [a.__setitem__("category_id", 99) for a in d["annotations"]])
    finding = check_dataset(root, ("val",), progress=False).findings[("val", "unknown_category")]
    assert finding.count == 3 and len(finding.offenders) == 3


def test_cli_exit_status(tmp_path, capsys):
    root = _clean(tmp_path)
    assert main(["data", "check", str(root), "--split", "val"]) == 0
    assert "OK: 0 error(s)" in capsys.readouterr().out
    write_image(_image(root), 40, 30, "L")  # warning only
    assert main(["data", "check", str(root), "--split", "val"]) == 0
    _image(root, 3).unlink()
    assert main(["data", "check", str(root), "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert "error [val] missing_file: 1 (first: image 3" in out and "FAILED: 1 error(s), 1 warning(s)" in out
    assert main(["data", "check", str(tmp_path / "nope")]) == 2


def test_progress_goes_to_stderr_as_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSDBENCH_PROGRESS", "lines")  # as in a log
    check_dataset(_clean(tmp_path), ("val",), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "check val | img 3/3 (100%)" in err
