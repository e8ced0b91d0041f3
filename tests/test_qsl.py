"""The LoadGen query sample library (`ssdbench.loadgen.qsl`): preprocessing, the disk cache, progress."""

from __future__ import annotations

import numpy as np
import pytest
from loadgen_fixtures import loadgen_env

from ssdbench.data.coco import CocoDetection
from ssdbench.data.transforms import preprocess_for_inference
from ssdbench.loadgen.qsl import SampleLibrary


@pytest.fixture(scope="module")
def qsl_dataset(tmp_path_factory):
    """A 12-image synthetic val split (`CocoDetection`), the sample cache in a temporary folder."""
    for data, _weights in loadgen_env(tmp_path_factory, "qsl", val_images=12, seed=0, background_bias=3.0):
        yield CocoDetection(data, "val")


def test_qsl_matches_preprocessing_and_uses_cache(qsl_dataset, tmp_path):
    dataset = qsl_dataset
    qsl = SampleLibrary(dataset, 128, count=3, cache_dir=tmp_path, progress=False)
    qsl.load([0, 2])
    expected = preprocess_for_inference(dataset.read_image(2), 128)
    np.testing.assert_array_equal(qsl.get(2), expected)
    assert qsl.cache_path(2).is_file() and not qsl.cache_path(1).exists()
    qsl.unload([0, 2])
    assert qsl.samples == {}
    again = SampleLibrary(dataset, 128, count=3, cache_dir=tmp_path, progress=False)
    again.dataset = None  # a decode would now fail: the sample must come from the cache
    again.image_id = qsl.image_id
    again.load([2])
    np.testing.assert_array_equal(again.get(2), expected)


def test_cache_files_are_whole_and_empty_variable_means_default(qsl_dataset, tmp_path, monkeypatch):
    """Cache entries are written atomically (no temporary file stays), and SSDBENCH_CACHE="" is
    the default ~/.cache/ssdbench, as for every other cache."""
    qsl = SampleLibrary(qsl_dataset, 64, count=4, cache_dir=tmp_path / "c", progress=False)
    qsl.prepare()
    files = sorted(p.name for p in qsl.cache_path(0).parent.iterdir())
    assert files == sorted(f"{qsl.image_id(i)}.npy" for i in range(4))
    monkeypatch.setenv("SSDBENCH_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = SampleLibrary(qsl_dataset, 64, count=1, progress=False)
    assert default.cache_dir == tmp_path / "home" / ".cache" / "ssdbench" / "loadgen_samples"


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
