"""Synthetic dataset: COCO-valid, deterministic, visible-extent boxes, atomic cache."""

import hashlib
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import synthetic_coco

from ssdbench.data import synth
from ssdbench.data.coco import CocoDetection
from ssdbench.data.synth import CLASSES, Scene
from ssdbench.data.validate import check_dataset

N_TRAIN, N_VAL = 26, 8


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    return synthetic_coco(root, N_TRAIN, N_VAL, seed=3, workers=2)


def test_loads_in_pycocotools(dataset):
    from pycocotools.coco import COCO

    coco = COCO(str(dataset / "annotations" / "instances_train2017.json"))
    assert len(coco.getImgIds()) == N_TRAIN
    cat_ids = coco.getCatIds()
    assert cat_ids == [c.cat_id for c in CLASSES] and cat_ids != list(range(1, len(cat_ids) + 1))
    anns = coco.loadAnns(coco.getAnnIds())
    assert anns and any(a["iscrowd"] for a in anns)
    areas = np.array([a["area"] for a in anns if not a["iscrowd"]])
    assert (areas < 32**2).any() and ((areas >= 32**2) & (areas < 96**2)).any() and (areas >= 96**2).any()
    for img in coco.loadImgs(coco.getImgIds()):
        assert (img["width"], img["height"]) in synth.SIZES


def test_passes_check(dataset):
    report = check_dataset(dataset, progress=False)
    assert report.ok and not report.findings, report.summary()


def test_reader_drops_empty_images(dataset):
    ds = CocoDetection(dataset, "train")
    assert len(ds) < N_TRAIN  # scene_kind(7) is empty
    assert synth.image_id_of("train", 7) not in ds.ids
    image, target = ds.load(0)
    assert image.shape[:2] == target["orig_size"]
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()


def test_deterministic_at_any_worker_count(dataset, tmp_path):
    again = synthetic_coco(tmp_path / "again", N_TRAIN, N_VAL, seed=3, workers=1)
    assert _digests(again) == _digests(dataset)
    other = synthetic_coco(tmp_path / "other", 2, 0, seed=4, workers=1)
    assert _digests(other)["train2017/000000000001.jpg"] != _digests(dataset)["train2017/000000000001.jpg"]


def test_refuses_non_empty_output(dataset):
    with pytest.raises(FileExistsError, match="not empty"):
        synth.make_synthetic_coco(dataset, 1, 1, progress=False)


def _bar_scene() -> Scene:
    """Two axis-aligned bars, the second drawn over the right part of the first."""
    scene = Scene(np.random.default_rng(0), 100, 80)
    bar = next(c for c in CLASSES if c.name == "bar")  # rectangle, never rotated
    for owner, (x0, y0, w, h) in enumerate([(10, 10, 40, 20), (30, 0, 30, 40)], start=1):
        scene.objects.append({"cls": bar, "box": (x0, y0, x0 + w, y0 + h), "crowd": False})
        scene.paint(bar, x0, y0, w, h, owner)
    return scene


def test_boxes_are_visible_extent():
    anns = _bar_scene().annotations()
    # Hand computation: bar 1 keeps columns 10..29 (the rest is under bar 2), rows 10..29.
    assert anns[0]["bbox"] == [10, 10, 20, 20] and anns[0]["area"] == 400
    assert anns[1]["bbox"] == [30, 0, 30, 40] and anns[1]["area"] == 1200


def test_default_dataset_built_once_and_race_safe(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(synth, "DEFAULT_TRAIN", 3)
    monkeypatch.setattr(synth, "DEFAULT_VAL", 2)
    (tmp_path / ".synth-v1.tmp-crashed").mkdir()  # a dead run's partial folder: never used
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=synth.default_dataset, kwargs={"progress": False}) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    path = synth.default_dataset(progress=False)
    assert path == tmp_path / "synth-v1"
    assert len(list((path / "train2017").iterdir())) == 3
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "synth-v1")
    assert leftovers == [".synth-v1.tmp-crashed"]


def test_default_dataset_rejects_foreign_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDBENCH_CACHE", str(tmp_path))
    (tmp_path / "synth-v1").mkdir()
    (tmp_path / "synth-v1" / "junk").write_text("x")
    with pytest.raises(FileExistsError, match="not a complete synthetic dataset"):
        synth.default_dataset(progress=False)


def test_empty_cache_variable_means_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDBENCH_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(synth, "DEFAULT_TRAIN", 1)
    monkeypatch.setattr(synth, "DEFAULT_VAL", 0)
    assert synth.default_dataset(progress=False) == tmp_path / ".cache" / "ssdbench" / "synth-v1"
