"""COCO evaluation: result conversion by hand, both backends against each other and hand values."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

from ssdbench.eval.coco_scoring import STAT_NAMES, coco_stats, detections_to_coco, format_stats

Det = namedtuple("Det", "boxes labels scores")
CAT_IDS = [2, 5, 11, 17, 40]  # sparse, as on COCO


def make_gt(seed: int = 0, n_images: int = 40) -> dict:
    """Random COCO dataset: varied image sizes, objects of all three area ranges, empty images,
    a few crowd boxes."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n_images):
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 640))
        images.append({"id": 1000 + 3 * i, "width": w, "height": h, "file_name": f"{i}.jpg"})
        n_obj = 0 if i % 7 == 3 else int(rng.integers(1, 6))  # every 7th image is empty
        for _ in range(n_obj):
            bw, bh = rng.uniform(5, w * 0.6), rng.uniform(5, h * 0.6)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({
                "id": len(anns) + 1, "image_id": images[-1]["id"],
                "category_id": int(rng.choice(CAT_IDS)), "bbox": [x, y, bw, bh],
                "area": bw * bh, "iscrowd": int(rng.random() < 0.05),
            })
    cats = [{"id": c, "name": f"c{c}"} for c in CAT_IDS]
    return {"images": images, "annotations": anns, "categories": cats}


def random_results(gt: dict, seed: int = 1, skip_cat: int = 40) -> list[dict]:
    """Jittered copies of the ground truth, false positives and misses; category ``skip_cat`` and
    some images never get a detection; scores are distinct so that ranking has no ties."""
    rng = np.random.default_rng(seed)
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    results = []
    for a in gt["annotations"]:
        if a["category_id"] == skip_cat or rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]]})
    for img_id, (w, h) in sizes.items():
        if img_id % 5 == 0:
            continue  # images with no detection at all
        for _ in range(int(rng.integers(0, 4))):
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            results.append({"image_id": img_id, "category_id": int(rng.choice(CAT_IDS[:-1])),
                            "bbox": [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]})
    scores = rng.permutation(len(results)) / len(results) * 0.9 + 0.05
    for r, s in zip(results, scores):
        r["score"] = float(s)
    return results


def test_detections_to_coco_by_hand():
    det = Det(np.array([[0.1, 0.2, 0.5, 0.6]]), np.array([2]), np.array([0.9]))
    empty = Det(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0))
    out = detections_to_coco([det, empty], [7, 8], [(100, 200), (50, 50)], [0, 3, 9])
    assert len(out) == 1
    r = out[0]
    assert r["image_id"] == 7 and r["category_id"] == 9 and r["score"] == pytest.approx(0.9)
    # h=100, w=200: x = 0.1*200, y = 0.2*100, w = 0.4*200, h = 0.4*100
    np.testing.assert_allclose(r["bbox"], [20.0, 20.0, 80.0, 40.0])
    with pytest.raises(ValueError, match="label 5"):
        detections_to_coco([Det(det.boxes, np.array([5]), det.scores)], [7], [(1, 1)], [0, 3, 9])


def test_backends_agree_random():
    gt = make_gt()
    results = random_results(gt)
    assert {r["category_id"] for r in results} == set(CAT_IDS[:-1])  # one class never detected
    ids = [img["id"] for img in gt["images"]]
    for subset in (None, ids[::2]):
        fast = coco_stats(gt, results, image_ids=subset, backend="faster")
        ref = coco_stats(gt, results, image_ids=subset, backend="pycocotools")
        assert fast.shape == (12,) and fast.dtype == np.float64
        assert 0.1 < ref[0] < 0.9  # a non-trivial case
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-9)


def test_perfect_detections_give_ap_one():
    gt = make_gt(seed=3)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 1.0} for a in gt["annotations"] if not a["iscrowd"]]
    for backend in ("faster", "pycocotools"):
        stats = coco_stats(gt, results, backend=backend)
        np.testing.assert_allclose(stats[:3], 1.0)


def test_one_of_two_found_by_hand():
    """2 ground truths, 1 exact detection: precision 1 up to recall 0.5, so the 101-point
    interpolated AP is 51/101 at every IoU threshold; AR@100 = 0.5."""
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "categories": [{"id": 4, "name": "x"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 4, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 4, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 0}]}
    res = [{"image_id": 1, "category_id": 4, "bbox": [10, 10, 40, 40], "score": 0.8}]
    for backend in ("faster", "pycocotools"):
        s = coco_stats(gt, res, backend=backend)
        assert s[0] == pytest.approx(51 / 101, abs=1e-12)
        assert s[8] == pytest.approx(0.5, abs=1e-12)
        # the 30x30 box is small (area < 32^2) and missed, the 40x40 one medium and found;
        # there is no large object: undefined, reported as -1 as pycocotools does
        np.testing.assert_allclose(s[3:6], [0.0, 1.0, -1.0], atol=1e-12)


def test_empty_results_and_path_input(tmp_path):
    import json

    gt = make_gt(seed=5, n_images=8)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(gt))
    for backend in ("faster", "pycocotools"):
        s = coco_stats(str(path), [], backend=backend)
        assert s.shape == (12,)
        assert s[0] == 0 and s[8] == 0
    assert len(format_stats(s).splitlines()) == len(STAT_NAMES)


def test_bad_inputs():
    gt = make_gt(seed=2, n_images=3)
    with pytest.raises(ValueError, match="backend"):
        coco_stats(gt, [], backend="nope")
    with pytest.raises(ValueError, match="image_id 99"):
        coco_stats(gt, [{"image_id": 99, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(FileNotFoundError):
        coco_stats("/nonexistent/ann.json", [])
