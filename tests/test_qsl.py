"""The LoadGen query sample library (`ssdbench.loadgen.samples`): preprocessing, the disk cache, progress."""

from __future__ import annotations

import numpy as np
import pytest
from loadgen_fixtures import loadgen_env

from ssdbench.data.coco import CocoDetection
from ssdbench.data.transforms import preprocess_for_inference
from ssdbench.loadgen.samples import SampleLibrary


@pytest.fixture(scope="module")
def qsl_dataset(tmp_path_factory):
    """A 12-image synthetic val split (`CocoDetection`), the sample cache in a temporary folder."""
    for data, _weights in loadgen_env(tmp_path_factory, "qsl", val_images=12, seed=0, background_bias=3.0):
        yield CocoDetection(data, "val", all_images=True)  # the QSL order


def _no_decoding(qsl, monkeypatch):
    """From now on a decode of ``qsl``'s dataset fails: samples must come from the cache."""
    def refuse(i):
        raise AssertionError(f"image {i} decoded instead of read from the cache")

    monkeypatch.setattr(qsl.dataset, "read_image", refuse)


def test_qsl_matches_preprocessing_and_uses_cache(qsl_dataset, tmp_path, monkeypatch):
    dataset = qsl_dataset
    qsl = SampleLibrary(dataset, 128, count=3, cache_dir=tmp_path, progress=False)
    qsl.load([0, 2])
    expected = preprocess_for_inference(dataset.read_image(2), 128)
    np.testing.assert_array_equal(qsl.get(2), expected)
    assert qsl.cache_path(2).is_file() and not qsl.cache_path(1).exists()
    qsl.unload([0, 2])
    assert qsl.samples == {}
    again = SampleLibrary(dataset, 128, count=3, cache_dir=tmp_path, progress=False)
    _no_decoding(again, monkeypatch)
    again.load([2])
    assert again.error is None
    np.testing.assert_array_equal(again.get(2), expected)


def test_cache_files_are_whole_and_empty_variable_means_default(qsl_dataset, tmp_path, monkeypatch):
    """Cache entries are written atomically (no temporary file stays), and SSDBENCH_CACHE="" is
    the default ~/.cache/ssdbench, as for every other cache."""
    qsl = SampleLibrary(qsl_dataset, 64, count=4, cache_dir=tmp_path / "c", progress=False)
    qsl.prepare()
    files = sorted(p.name for p in qsl.cache_path(0).parent.iterdir())
    stamps = []
    for i in range(4):
        st = qsl_dataset.image_path(i).stat()
        stamps.append(f"{qsl.image_id(i)}-{st.st_size}-{st.st_mtime_ns}.npy")
    assert files == sorted(stamps)
    monkeypatch.setenv("SSDBENCH_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = SampleLibrary(qsl_dataset, 64, count=1, progress=False)
    assert default.cache_dir == tmp_path / "home" / ".cache" / "ssdbench" / "loadgen_samples"


def test_cache_is_keyed_by_order_and_content(tmp_path, monkeypatch):
    """Another image order, another input size or an edited image never reuses a cache entry; the
    former layout (<sha1 of root>/<size>_uint8/<id>.npy, sorted non-empty order) is never read."""
    import hashlib
    import json
    import os

    from data_fixtures import write_coco

    images = [{"id": 30, "file_name": "c.jpg", "width": 40, "height": 32},
              {"id": 10, "file_name": "a.jpg", "width": 32, "height": 48},
              {"id": 20, "file_name": "b.jpg", "width": 36, "height": 36}]  # fmt: skip
    cats = [{"id": 1, "name": "one"}]
    root = write_coco(tmp_path / "d", "val", images, [], cats)
    cache = tmp_path / "cache"
    first = SampleLibrary(CocoDetection(root, "val", all_images=True), 32, cache_dir=cache, progress=False)
    assert [first.image_id(i) for i in range(3)] == [30, 10, 20]  # file order, empty images kept
    first.prepare()
    folder = first.cache_path(0).parent
    # the same file with its images listed in another order: another cache folder
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images[::-1], "annotations": [], "categories": cats}))
    swapped = SampleLibrary(CocoDetection(root, "val", all_images=True), 32, cache_dir=cache, progress=False)
    assert swapped.cache_path(0).parent != folder and swapped.image_id(0) == 20
    assert SampleLibrary(swapped.dataset, 64, cache_dir=cache, progress=False).cache_path(0).parent.parent != \
        swapped.cache_path(0).parent.parent  # fmt: skip
    # an edited image gets a new stamp, so its stale entry is not read
    path = swapped.dataset.image_path(0)
    before = swapped.cache_path(0).name
    swapped.prepare()
    from PIL import Image

    Image.new("RGB", (36, 36), (255, 0, 0)).save(path, quality=95)
    os.utime(path, ns=(1, 1))
    edited = SampleLibrary(CocoDetection(root, "val", all_images=True), 32, cache_dir=cache, progress=False)
    assert edited.cache_path(0).name != before
    edited.load([0])
    assert edited.get(0)[0].mean() > 1.5  # red after normalisation: the new pixels, not the cached ones
    # a format-1 entry (a sample of zeros under the old name) is not picked up
    old_key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    old = cache / old_key / "32_uint8" / "10.npy"
    old.parent.mkdir(parents=True)
    np.save(old, np.zeros((3, 32, 32), np.uint8))
    fresh = SampleLibrary(CocoDetection(root, "val", all_images=True), 32, cache_dir=tmp_path / "c2", progress=False)
    fresh.cache_dir = cache
    k = [fresh.image_id(i) for i in range(3)].index(10)
    fresh.load([k])
    np.testing.assert_array_equal(fresh.get(k), preprocess_for_inference(fresh.dataset.read_image(k), 32))


def test_progress_is_plain_lines_in_logs(qsl_dataset, tmp_path, monkeypatch, capsys):
    """Not a terminal: one plain line per pass on stderr, no bar, nothing on stdout."""
    monkeypatch.setenv("SSDBENCH_PROGRESS", "lines")
    n = len(qsl_dataset)
    qsl = SampleLibrary(qsl_dataset, 64, cache_dir=tmp_path, progress=True)
    qsl.prepare()
    qsl.load(range(n))  # fewer than 17 samples: loading shows no progress
    out, err = capsys.readouterr()
    assert out == "" and "\r" not in err
    assert [line.split(" | ")[:2] for line in err.splitlines()] == [["QSL cache", f"img {n}/{n} (100%)"]]
    quiet = SampleLibrary(qsl_dataset, 64, cache_dir=tmp_path / "q", progress=False)
    quiet.prepare()
    assert capsys.readouterr() == ("", "")
