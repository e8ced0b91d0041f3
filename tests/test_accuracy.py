"""`ssdbench accuracy`: LoadGen accuracy logs -> COCO mAP, checked against `engine.evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from loadgen_fixtures import loadgen_env

from ssdbench import cli
from ssdbench.loadgen import settings as S
from ssdbench.loadgen.accuracy import coco_results, decode_log, evaluate_log, tuples_to_detections
from ssdbench.loadgen.run import RunInputs, run_loadgen
from ssdbench.model.postprocess import PaddedDetections


@pytest.fixture(scope="module")
def acc_env(tmp_path_factory):
    """(dataset root, dataset, weights) with the sample cache in a temporary folder."""
    from ssdbench.data.coco import CocoDetection

    # bias 2: favour background, yet keep enough varied detections for a meaningful mAP
    for data, weights in loadgen_env(tmp_path_factory, "acc", val_images=10, seed=1, background_bias=2.0):
        yield data, CocoDetection(data, "val", all_images=True), weights  # the QSL order


def _write_log(path, entries):
    """entries: [(qsl_idx, float32 (K, 7))] -> LoadGen's accuracy-log JSON (uppercase hex)."""
    rows = [{"seq_id": n, "qsl_idx": i, "data": a.astype(np.float32).tobytes().hex().upper()}
            for n, (i, a) in enumerate(entries)]  # fmt: skip
    path.write_text(json.dumps(rows))


def test_decode_and_pixel_boxes_by_hand(acc_env, tmp_path):
    _, dataset, _ = acc_env
    info = dataset.image_info(1)
    h, w = info["height"], info["width"]
    dets = np.array([[1, 0.1, 0.2, 0.5, 0.6, 0.9, 2], [1, 0.0, 0.0, 1.0, 1.0, 0.3, 1]], np.float32)
    log = tmp_path / "acc.json"
    _write_log(log, [(1, dets), (0, np.zeros((0, 7))), (1, dets[:1])])  # a repeat of 1 is ignored
    samples = decode_log(log)
    assert sorted(samples) == [0, 1] and samples[0].shape == (0, 7)
    np.testing.assert_array_equal(samples[1], dets)
    d = tuples_to_detections(dets)
    np.testing.assert_allclose(d.boxes[0].numpy(), [0.2, 0.1, 0.6, 0.5])  # ltrb
    results, ids = coco_results(samples, dataset)
    assert ids == [dataset.ids[0], dataset.ids[1]] and len(results) == 2
    first = results[0]
    assert first["image_id"] == dataset.ids[1] and first["category_id"] == dataset.label_to_cat_id[2]
    np.testing.assert_allclose(first["bbox"], [0.2 * w, 0.1 * h, 0.4 * w, 0.4 * h], rtol=1e-6)
    assert results[1]["bbox"] == pytest.approx([0, 0, w, h])


def test_bad_logs(acc_env, tmp_path):
    data, dataset, _ = acc_env
    log = tmp_path / "acc.json"
    log.write_text(json.dumps([{"seq_id": 0, "qsl_idx": 0, "data": "00" * 27}]))
    with pytest.raises(ValueError, match="27 bytes, not float32 7-tuples"):
        decode_log(log)
    _write_log(log, [(3, np.array([[4, 0, 0, 1, 1, 0.5, 1]]))])
    with pytest.raises(ValueError, match="another sample"):
        decode_log(log)
    _write_log(log, [(len(dataset) + 5, np.zeros((0, 7)))])
    with pytest.raises(ValueError, match="is --data the dataset of the run"):
        evaluate_log(log, dataset)
    log.write_text("[\n{ \"seq_id\" : 0")  # an interrupted run
    with pytest.raises(ValueError, match="not valid JSON"):
        decode_log(log)
    assert cli.main(["accuracy", "--log", str(tmp_path / "none.json"), "--data", str(data)]) == 2


def _reference_eval(dataset, weights, count):
    """`engine.evaluate` of the same weights on the same images (benchmark.md §5 preprocessing, batch 1)."""
    from ssdbench.data.transforms import preprocess_for_inference
    from ssdbench.eval.evaluate import evaluate
    from ssdbench.model.ssd import build_model

    loader = []
    for i in range(count):
        image = dataset.read_image(i)
        loader.append({"images": torch.from_numpy(preprocess_for_inference(image, 128))[None],
                       "image_ids": [dataset.ids[i]], "orig_sizes": [image.shape[:2]]})  # fmt: skip

    class Subset:  # the first `count` images, as the LoadGen QSL holds them
        ann_file, ids, label_to_cat_id = dataset.ann_file, dataset.ids[:count], dataset.label_to_cat_id

    model = build_model("ssd128_mini", weights=weights)
    return evaluate(model, loader, Subset, "cpu", progress=False)


def test_accuracy_mode_matches_evaluate(acc_env, tmp_path, capsys):
    data, dataset, weights = acc_env
    out = tmp_path / "out"
    rc = cli.main(["loadgen", "--scenario", "SingleStream", "--mode", "accuracy", "--preset", "cpu",
                   "--dtype", "fp32", "--warmup", "0", "--count", "8", "--data", str(data), "--weights", str(weights),
                   "--out", str(out)])  # fmt: skip
    assert rc == 0
    auto = capsys.readouterr().out
    assert "mAP=" in (out / "accuracy.txt").read_text() and "mAP=" in auto
    assert cli.main(["accuracy", "--log", str(out / "mlperf_log_accuracy.json"), "--data", str(data)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("mAP="))
    assert "(8 images" in line

    stats, results = _reference_eval(dataset, weights, 8)
    assert line.startswith(f"mAP={100 * stats[0]:.3f}%")
    ours, _ = coco_results(decode_log(out / "mlperf_log_accuracy.json"), dataset)
    assert len(ours) == len(results) > 0

    def key(r):
        return (r["image_id"], -r["score"], r["category_id"], r["bbox"])

    for a, b in zip(sorted(ours, key=key), sorted(results, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(a["bbox"] + [a["score"]], b["bbox"] + [b["score"]], rtol=1e-5, atol=1e-4)
    ours_stats, n = evaluate_log(out / "mlperf_log_accuracy.json", dataset)
    assert n == 8
    np.testing.assert_allclose(ours_stats, stats, atol=1e-9)


def test_oracle_detections_score_full_map(acc_env, tmp_path):
    """A stand-in network answering each image with its ground truth must reach mAP 1: any
    mix-up of y/x order, pixel scaling, label mapping or QSL index breaks that."""
    from ssdbench.data.transforms import preprocess_for_inference

    _, dataset, _ = acc_env
    truth = {}
    for i in range(len(dataset)):
        image, target = dataset.load(i)
        key = preprocess_for_inference(image, 128).tobytes()
        truth[key] = (torch.from_numpy(target["boxes"]), torch.from_numpy(target["labels"]))

    def oracle(batch):
        n, d = len(batch), 50
        boxes, scores = torch.zeros(n, d, 4), torch.zeros(n, d)
        labels, counts = torch.zeros(n, d, dtype=torch.long), torch.zeros(n, dtype=torch.long)
        for j in range(n):
            b, lab = truth[batch[j].numpy().tobytes()]
            k = len(lab)
            boxes[j, :k], labels[j, :k], scores[j, :k], counts[j] = b, lab, 1.0, k
        return PaddedDetections(boxes=boxes, labels=labels, scores=scores, counts=counts)

    settings = S.resolve("Offline", "accuracy", "cpu", flags={"warmup": 0, "count": 0, "max_batch_size": 4})
    run = run_loadgen(settings, tmp_path / "out", RunInputs(data=dataset.root, predict=oracle), verbose=False)
    assert run.map == pytest.approx(1.0, abs=1e-6)


class NoisyOracleSSD(torch.nn.Module):
    """A stand-in network whose raw outputs encode each image's ground truth plus fixed noise
    (seeded by the image bytes), so that mAP lands strictly between 0 and 1 and both pipelines
    run the real benchmark.md §4 post-processing on identical raw maps."""

    def __init__(self, truth: dict, num_classes: int):
        super().__init__()
        from ssdbench.model.boxes import default_boxes
        from ssdbench.model.specs import get_spec

        self.spec = get_spec("ssd128_mini", num_classes)
        self.truth, self.dboxes = truth, default_boxes("ssd128_mini")
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # so that .to()/.eval() behave

    def forward(self, images):
        import zlib

        from ssdbench.model.encoder import encode_targets

        locs, scores = [], []
        for image in images:
            key = image.float().cpu().numpy().tobytes()
            boxes, labels = self.truth[key]
            loc, lab = encode_targets(boxes[None], labels[None], self.dboxes)
            g = torch.Generator().manual_seed(zlib.crc32(key))
            logits = torch.nn.functional.one_hot(lab[0], self.spec.num_classes).float() * 6.0
            logits += 2.5 * torch.randn(logits.shape, generator=g)
            locs.append((loc[0] + 0.5 * torch.randn(loc[0].shape, generator=g)).T)
            scores.append(logits.T)
        return torch.stack(locs), torch.stack(scores)


def test_accuracy_log_map_equals_evaluate_nonzero(acc_env, tmp_path):
    """Same network, same images: LoadGen accuracy log mAP == engine.evaluate mAP, with 0 < mAP < 1."""
    from ssdbench.data.transforms import preprocess_for_inference
    from ssdbench.eval.evaluate import evaluate
    from ssdbench.infer.backends import make_backend

    _, dataset, _ = acc_env
    truth, loader = {}, []
    for i in range(len(dataset)):
        image, target = dataset.load(i)
        x = torch.from_numpy(preprocess_for_inference(image, 128))
        truth[x.numpy().tobytes()] = (torch.from_numpy(target["boxes"]), torch.from_numpy(target["labels"]))
        loader.append({"images": x[None], "image_ids": [dataset.ids[i]], "orig_sizes": [image.shape[:2]]})
    net = NoisyOracleSSD(truth, dataset.num_classes).eval()
    stats, _ = evaluate(net, loader, dataset, "cpu", progress=False)
    assert 0.05 < stats[0] < 0.95, stats[0]

    predict = make_backend("eager", "ssd128_mini", model=net).predict
    settings = S.resolve("Offline", "accuracy", "cpu", flags={"warmup": 0, "count": 0, "max_batch_size": 3})
    run = run_loadgen(settings, tmp_path / "out", RunInputs(data=dataset.root, predict=predict),
                      verbose=False)
    assert run.map == pytest.approx(stats[0], abs=1e-9)
    np.testing.assert_allclose(evaluate_log(tmp_path / "out" / "mlperf_log_accuracy.json", dataset)[0], stats,
                               atol=1e-9)  # fmt: skip


def _official_rule_map(ann_file, log_file) -> float:
    """AP@[.5:.95] of an accuracy log by MLPerf's rule, written here independently of ssdbench
    (tools/accuracy-coco.py --use-inv-map, mlcommons/inference r2.0): qsl_idx indexes the file's
    ``images`` list in file order; label k -> [0] + the file's category ids; boxes scale by that
    image's size; the first entry of an index counts; images without detections are evaluated."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann = json.loads(ann_file.read_text())
    image_map, inv_map = ann["images"], [0] + [c["id"] for c in ann["categories"]]
    detections, image_ids, seen = [], set(), set()
    for entry in json.loads(log_file.read_text()):
        idx = entry["qsl_idx"]
        if idx in seen:
            continue
        seen.add(idx)
        image = image_map[idx]
        image_ids.add(image["id"])
        data = np.frombuffer(bytes.fromhex(entry["data"]), np.float32)
        for k in range(0, len(data) - 6, 7):
            _, ymin, xmin, ymax, xmax, score, label = (float(v) for v in data[k:k + 7])
            h, w = image["height"], image["width"]
            detections.append({"image_id": image["id"], "category_id": inv_map[int(label)], "score": score,
                               "bbox": [xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h]})
    gt = COCO(str(ann_file))
    evaluation = COCOeval(gt, gt.loadRes(detections), iouType="bbox")
    evaluation.params.imgIds = sorted(image_ids)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return float(evaluation.stats[0])


def test_perfect_detections_score_one_under_the_official_rule(tmp_path):
    """A COCO-format set whose ``images`` list is not sorted by id and holds images without
    objects: an oracle answering each image with its ground truth, through the real QSL, SUT and
    LoadGen, scores AP = 1.0 by the official rule (file order, inverse label map) and by
    `ssdbench accuracy`; the former sorted, non-empty order would have scored far less."""
    from data_fixtures import write_coco

    from ssdbench.data.coco import CocoDetection
    from ssdbench.data.transforms import preprocess_for_inference

    images = [{"id": i, "file_name": f"{i}.jpg", "width": 48 + 8 * (i % 3), "height": 40 + 4 * (i % 5)}
              for i in (57, 12, 33, 4, 90, 21, 68, 45)]  # fmt: skip
    categories = [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}, {"id": 77, "name": "phone"}]
    boxes = {57: [(3, 4, 20, 18, 3)], 12: [(10, 6, 15, 20, 18), (1, 1, 12, 9, 77)], 4: [(5, 5, 30, 25, 18)],
             90: [(2, 3, 9, 12, 77)], 21: [(20, 10, 20, 22, 3), (4, 4, 10, 10, 3)], 45: [(7, 8, 25, 15, 18)]}
    annotations = [{"id": n, "image_id": img, "category_id": cat, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
                   for n, (img, (x, y, w, h, cat)) in enumerate(((i, b) for i, bs in boxes.items() for b in bs), 1)]
    root = write_coco(tmp_path / "coco", "val", images, annotations, categories)  # 33 and 68: no objects
    dataset = CocoDetection(root, "val", all_images=True)
    truth = {}
    for i in range(len(dataset)):
        image, target = dataset.load(i)
        truth[preprocess_for_inference(image, 128).tobytes()] = (target["boxes"], target["labels"])

    def oracle(batch):
        n = len(batch)
        out = PaddedDetections(boxes=torch.zeros(n, 4, 4), labels=torch.zeros(n, 4, dtype=torch.long),
                               scores=torch.zeros(n, 4), counts=torch.zeros(n, dtype=torch.long))  # fmt: skip
        for j in range(n):
            b, lab = truth[batch[j].numpy().tobytes()]
            out.boxes[j, :len(lab)], out.labels[j, :len(lab)] = torch.from_numpy(b), torch.from_numpy(lab)
            out.scores[j, :len(lab)], out.counts[j] = 1.0, len(lab)
        return out

    settings = S.resolve("Offline", "accuracy", "cpu", flags={"warmup": 0, "count": 0, "max_batch_size": 3})
    run = run_loadgen(settings, tmp_path / "out", RunInputs(data=root, predict=oracle, cache=False),
                      verbose=False)
    log = tmp_path / "out" / "mlperf_log_accuracy.json"
    assert {e["qsl_idx"] for e in json.loads(log.read_text())} == set(range(8))  # every image, empty ones too
    assert _official_rule_map(root / "annotations" / "instances_val2017.json", log) == pytest.approx(1.0)
    assert run.map == pytest.approx(1.0)
    # The order ssdbench used before (sorted ids of non-empty images) mis-scores the same log.
    old_order = [i for i in sorted(img["id"] for img in images) if i in boxes]
    shuffled = tmp_path / "old.json"
    ann = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    ann["images"] = [next(img for img in images if img["id"] == i) for i in old_order]
    ann["images"] += [img for img in images if img["id"] not in boxes]
    shuffled.write_text(json.dumps(ann))
    assert _official_rule_map(shuffled, log) < 0.5
