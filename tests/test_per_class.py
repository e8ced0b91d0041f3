"""Per-class AP, precision-recall curves, confusion matrix and their pictures (`ssdbench.eval`)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from test_coco_eval import CAT_IDS, make_gt, random_results

from ssdbench.eval.analysis import analyze, details_json
from ssdbench.eval.coco_scoring import coco_stats
from ssdbench.eval.confusion import confusion_matrix
from ssdbench.eval.per_class import format_table, mean_ap, per_class_rows, pr_curve, run_cocoeval
from ssdbench.eval.plots import write_eval_pictures


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_mean_of_per_class_ap_is_coco_ap(backend):
    gt = make_gt()
    results = random_results(gt)  # category 40 has ground truth but is never detected: AP 0
    ids = [img["id"] for img in gt["images"]]
    for subset in (None, ids[::2]):
        details = run_cocoeval(gt, results, subset, backend)
        rows = per_class_rows(details)
        stats = coco_stats(gt, results, image_ids=subset, backend=backend)
        np.testing.assert_allclose(details.stats, stats, rtol=0, atol=1e-12)
        assert abs(mean_ap(rows) - stats[0]) < 1e-9
        assert abs(mean_ap(rows, "ap50") - stats[1]) < 1e-9
        assert abs(mean_ap(rows, "ap75") - stats[2]) < 1e-9
        assert [r["category_id"] for r in rows] == sorted(CAT_IDS)
        assert next(r for r in rows if r["category_id"] == 40)["ap"] == 0.0


def test_class_without_ground_truth_and_gt_counts():
    gt = make_gt(seed=4)
    gt["categories"].append({"id": 77, "name": "unseen"})
    results = random_results(gt)
    results.append({"image_id": gt["images"][0]["id"], "category_id": 77, "bbox": [1, 1, 5, 5], "score": 0.5})
    details = run_cocoeval(gt, results)
    rows = {r["category_id"]: r for r in per_class_rows(details)}
    assert rows[77]["ap"] is None and rows[77]["gt"] == 0  # a false positive, no ground truth: no AP
    for c in CAT_IDS:  # independent count: non-crowd annotations of the class
        assert rows[c]["gt"] == sum(1 for a in gt["annotations"] if a["category_id"] == c and not a["iscrowd"])
    assert abs(mean_ap(list(rows.values())) - details.stats[0]) < 1e-9
    table = format_table(list(rows.values()))
    assert "unseen" in table and "(5 classes with ground truth)" in table


def test_pr_curve_points_are_the_precision_array():
    """One of two ground truths found exactly: interpolated precision 1 up to recall 0.5, 0 after;
    every point equals pycocotools' own precision array at that recall."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 4, "name": "x"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 4, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 4, "bbox": [60, 60, 30, 30], "area": 900, "iscrowd": 0}]}
    res = [{"image_id": 1, "category_id": 4, "bbox": [10, 10, 40, 40], "score": 0.8},
           {"image_id": 1, "category_id": 4, "bbox": [62, 61, 30, 30], "score": 0.6}]  # IoU 0.83
    details = run_cocoeval(gt, res, backend="faster")
    recall, precision = pr_curve(details, 0.5, 0)
    assert recall[50] == pytest.approx(0.5) and precision[50] == 1.0 and precision[100] == 1.0
    recall, precision = pr_curve(details, 0.95, 0)  # the second box misses at IoU 0.95
    assert precision[50] == 1.0 and precision[51] == 0.0
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes([dict(r) for r in res]), "bbox")
        ev.evaluate()
        ev.accumulate()
    for t, iou in enumerate(details.iou_thrs):
        for r in (0, 37, 50, 51, 88, 100):
            expected = ev.eval["precision"][t, r, 0, 0, 2]  # pycocotools; faster-coco-eval to 1e-12
            assert pr_curve(details, iou, 0)[1][r] == pytest.approx(expected, abs=1e-12)
            assert pr_curve(details, iou)[1][r] == pytest.approx(expected, abs=1e-12)


def test_all_class_curve_is_the_mean_over_classes_with_gt():
    gt = make_gt(seed=6)
    details = run_cocoeval(gt, random_results(gt, seed=2))
    _, mean_curve = pr_curve(details, 0.5)
    per_class = np.stack([pr_curve(details, 0.5, k)[1] for k in range(len(CAT_IDS))])
    np.testing.assert_allclose(mean_curve, per_class.mean(axis=0), atol=1e-12)
    assert abs(mean_curve.mean() - details.stats[1]) < 1e-9  # AP50 is its mean over recall


_IDS = iter(range(1, 1000))


def _box(x, y, w, h, cat, image=1, crowd=0):
    return {"id": next(_IDS), "image_id": image, "category_id": cat, "bbox": [x, y, w, h], "area": w * h,
            "iscrowd": crowd}


def test_confusion_matrix_by_hand():
    """Classes 3 (index 0) and 8 (index 1); background is index 2."""
    gt = {"images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
          "categories": [{"id": 3, "name": "a"}, {"id": 8, "name": "b"}],
          "annotations": [_box(0, 0, 50, 50, 3), _box(100, 100, 50, 50, 8), _box(0, 100, 40, 40, 3),
                          _box(150, 0, 50, 50, 8, crowd=1), _box(10, 10, 50, 50, 8, image=2)]}
    det = [  # image 1
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 50], "score": 0.9},  # a as a
        {"image_id": 1, "category_id": 3, "bbox": [2, 2, 50, 50], "score": 0.8},  # duplicate: background
        {"image_id": 1, "category_id": 3, "bbox": [100, 100, 50, 48], "score": 0.7},  # b taken for a
        {"image_id": 1, "category_id": 8, "bbox": [160, 5, 20, 20], "score": 0.6},  # in the crowd: ignored
        {"image_id": 1, "category_id": 8, "bbox": [0, 100, 40, 40], "score": 0.1},  # under the threshold
        {"image_id": 2, "category_id": 8, "bbox": [10, 12, 50, 50], "score": 0.95},  # b as b
        {"image_id": 2, "category_id": 8, "bbox": [120, 120, 30, 30], "score": 0.5}]  # nothing there
    matrix = confusion_matrix(gt, det, [3, 8])
    expected = np.array([[1, 0, 1],   # a: found as a once, missed once (the 40x40, its detection scored 0.1)
                         [1, 1, 0],   # b: taken for a once, found as b once
                         [1, 1, 0]])  # background: a duplicate a, a b where nothing is
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_array_equal(confusion_matrix(gt, det, [3, 8], image_ids=[2]),
                                  [[0, 0, 0], [0, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(confusion_matrix(gt, det, [3, 8], score_threshold=0.05)[0], [1, 1, 0])  # the 0.1 one: a taken for b


def test_analyze_json_and_pictures(tmp_path):
    gt = make_gt(seed=7)
    details = analyze(gt, random_results(gt), backend="faster")
    out = details_json(details)
    assert len(out["per_class"]) == len(CAT_IDS)
    counts = np.asarray(out["confusion"]["counts"])
    assert counts.shape == (len(CAT_IDS) + 1,) * 2 and counts[-1, -1] == 0
    # every non-crowd ground-truth box is in exactly one cell of its row (found, confused or missed)
    np.testing.assert_array_equal(counts[:-1].sum(axis=1), details.gt_counts)
    files = write_eval_pictures(details, tmp_path / "plots")
    assert sorted(p.name for p in files) == ["confusion_matrix.png", "per_class_ap.png", "pr_curves.png",
                                             "pr_curves_per_class.png"]
    for p in files:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size < 400_000


def test_eval_cli_prints_the_table_and_writes_the_analysis(tmp_path, capsys):
    import json

    import torch
    from test_evaluate import MODEL, tiny_coco

    from ssdbench import build_model
    from ssdbench.cli import main

    data = tiny_coco(tmp_path / "coco")
    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save({"model": build_model(MODEL, num_classes=3).state_dict()}, weights)
    args = ["eval", "--data", data, "--weights", str(weights), "--model", MODEL, "--out", str(tmp_path / "d.json"),
            "--workers", "0", "--batch-size", "2", "--device", "cpu"]
    assert main([*args, "--analysis", str(tmp_path / "analysis")]) == 0
    text = capsys.readouterr().out
    assert "class      AP    AP50    AP75  gt boxes" in text and "(2 classes with ground truth)" in text
    saved = json.loads((tmp_path / "analysis" / "eval.json").read_text())
    assert [(r["name"], r["gt"]) for r in saved["per_class"]] == [("a", 2), ("b", 1)]
    assert abs(mean_ap(saved["per_class"]) - saved["stats"]["AP"]) < 1e-9
    assert saved["confusion"]["labels"] == ["a", "b", "background"]
    assert np.asarray(saved["confusion"]["counts"])[:2].sum() == 3  # every ground-truth box once
    assert (tmp_path / "analysis" / "confusion_matrix.png").is_file()
    (tmp_path / "file").write_text("x")
    assert main([*args, "--analysis", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "--analysis" in err and "Traceback" not in err
