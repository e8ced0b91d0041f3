"""`evaluate`: an oracle network whose outputs decode to known boxes gives hand-computed mAP,
in one process and sharded over two gloo processes."""

from __future__ import annotations

import json
import os
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssdbench import dist as D
from ssdbench.eval.evaluate import evaluate, merge_shards
from ssdbench.model.boxes import default_boxes
from ssdbench.model.encoder import encode_targets

MODEL = "ssd128_mini"
CATS = {1: 3, 2: 8}  # label -> sparse COCO category id
# image id -> (width, height, [(label, x, y, w, h) pixels]); boxes of one image are disjoint
IMAGES = {
    11: (200, 100, [(1, 10, 10, 60, 40), (2, 120, 30, 70, 60)]),
    12: (100, 100, [(1, 5, 50, 40, 45)]),
    13: (300, 200, [(1, 150, 20, 120, 150)]),
    14: (150, 150, [(1, 20, 20, 100, 100), (2, 0, 0, 15, 130)]),  # its detections are withheld
}
MISSED = 14


class Oracle(torch.nn.Module):
    """Outputs the encoded ground truth of the image whose id is written in pixel (0, 0):
    locations (N, 4, B) = target offsets, logits (N, 3, B) = 10 on the matched class."""

    def __init__(self):
        super().__init__()
        self.spec = SimpleNamespace(name=MODEL)
        self.dboxes = default_boxes(MODEL)
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # has a device and an eval mode

    def forward(self, images):
        boxes, labels = [], []
        for image_id in images[:, 0, 0, 0].long().tolist():
            w, h, objs = IMAGES[image_id]
            objs = [] if image_id == MISSED else objs
            b = torch.tensor([[x / w, y / h, (x + bw) / w, (y + bh) / h] for _, x, y, bw, bh in objs] + [[0.0] * 4])
            boxes.append(b[:3] if len(b) >= 3 else torch.cat([b, torch.zeros(3 - len(b), 4)]))
            lab = torch.tensor([o[0] for o in objs] + [0, 0, 0])[:3]
            labels.append(lab)
        loc, lab = encode_targets(torch.stack(boxes), torch.stack(labels), self.dboxes)
        logits = torch.nn.functional.one_hot(lab, 3).permute(0, 2, 1).float() * 10
        return loc.permute(0, 2, 1), logits


def write_gt(folder) -> SimpleNamespace:
    images = [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, (w, h, _) in IMAGES.items()]
    anns = [{"id": 100 * i + k, "image_id": i, "category_id": CATS[lab], "bbox": [x, y, bw, bh],
             "area": bw * bh, "iscrowd": 0}
            for i, (_, _, objs) in IMAGES.items() for k, (lab, x, y, bw, bh) in enumerate(objs)]
    data = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "a"}, {"id": 8, "name": "b"}]}
    path = os.path.join(folder, "gt.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return SimpleNamespace(ann_file=path, ids=sorted(IMAGES), label_to_cat_id=CATS)


def batches(ids: list[int], batch_size: int = 2) -> list[dict]:
    out = []
    for s in range(0, len(ids), batch_size):
        chunk = ids[s : s + batch_size]
        images = torch.zeros(len(chunk), 3, 4, 4)
        images[:, 0, 0, 0] = torch.tensor(chunk, dtype=torch.float32)
        sizes = torch.tensor([[IMAGES[i][1], IMAGES[i][0]] for i in chunk])  # (h, w)
        out.append({"images": images, "image_ids": torch.tensor(chunk), "orig_sizes": sizes})
    return out


# Class "a" (label 1): 4 objects, 3 found at equal scores -> precision 1 up to recall 0.75:
# 76 of the 101 recall points. Class "b": 2 objects, 1 found -> 51 points (recall 0.5).
EXPECTED_AP = (76 / 101 + 51 / 101) / 2


def test_evaluate_oracle_by_hand(tmp_path):
    dataset = write_gt(str(tmp_path))
    stats, results = evaluate(Oracle(), batches(sorted(IMAGES)), dataset, "cpu", progress=False)
    assert stats[0] == pytest.approx(EXPECTED_AP, abs=1e-9)
    assert len(results) == 4 and {r["image_id"] for r in results} == {11, 12, 13}
    found = sorted((r["image_id"], r["category_id"], *np.round(r["bbox"], 3)) for r in results)
    want = sorted((i, CATS[lab], x, y, bw, bh) for i, (_, _, objs) in IMAGES.items() if i != MISSED
                  for lab, x, y, bw, bh in objs)
    np.testing.assert_allclose([f[2:] for f in found], [w[2:] for w in want], atol=1e-3)
    ref, _ = evaluate(Oracle(), batches(sorted(IMAGES)), dataset, "cpu", backend="pycocotools", progress=False)
    np.testing.assert_allclose(stats, ref, atol=1e-9)


def test_merge_shards_drops_repeats():
    a = {1: [{"image_id": 1, "v": "a"}], 2: []}
    b = {1: [{"image_id": 1, "v": "b"}], 3: [{"image_id": 3}]}
    assert merge_shards([a, b]) == [{"image_id": 1, "v": "a"}, {"image_id": 3}]


def _worker(rank: int, port: int, folder: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        dataset = write_gt(folder) if rank == 0 else SimpleNamespace(
            ann_file=os.path.join(folder, "gt.json"), ids=sorted(IMAGES), label_to_cat_id=CATS)
        dist.barrier()
        shard = [[11, 12], [13, 14, 11]][rank]  # rank 1 repeats image 11, as a padded shard does
        stats, results = evaluate(Oracle(), batches(shard), dataset, "cpu", distributed=True, progress=False)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"stats": stats.tolist(), "n": len(results), "rank": D.get_rank()}, f)
    finally:
        dist.destroy_process_group()


def test_evaluate_two_ranks_gloo(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children skip re-importing torch (seconds on a shared 2-core machine)
    mp.start_processes(_worker, args=(port, str(tmp_path), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["stats"] == r1["stats"]  # broadcast: every rank gets rank 0's numbers
    assert r0["stats"][0] == pytest.approx(EXPECTED_AP, abs=1e-9)
    assert (r0["rank"], r1["rank"], r0["n"]) == (0, 1, 4)


def test_distributed_helpers_without_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    assert (D.get_rank(), D.get_world_size(), D.is_main()) == (0, 1, True)
    assert D.all_gather_object({"a": 1}) == [{"a": 1}] and D.broadcast_object(5) == 5
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert (D.get_rank(), D.get_world_size(), D.is_main()) == (3, 8, False)
    monkeypatch.setenv("RANK", "1")  # torchrun inside a Slurm step wins
    assert D.get_rank() == 1
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK"):
        D.get_rank()


def tiny_coco(root) -> str:
    """Three JPEGs and two categories in the COCO 2017 layout."""
    from PIL import Image

    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i, (w, h) in enumerate([(64, 48), (48, 64), (80, 60)], start=1):
        Image.new("RGB", (w, h), (40 * i, 90, 200)).save(root / "val2017" / f"{i:012d}.jpg")
        images.append({"id": i, "width": w, "height": h, "file_name": f"{i:012d}.jpg"})
        anns.append({"id": i, "image_id": i, "category_id": 3 if i % 2 else 8, "bbox": [5, 5, 20, 30],
                     "area": 600, "iscrowd": 0})
    data = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "a"}, {"id": 8, "name": "b"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return str(root)


def test_eval_cli(tmp_path, capsys):
    from ssdbench import build_model
    from ssdbench.cli import main

    data = tiny_coco(tmp_path / "coco")
    weights = tmp_path / "w.pt"
    torch.save({"model": build_model(MODEL, num_classes=3).state_dict()}, weights)
    out = tmp_path / "det.json"
    args = ["eval", "--data", data, "--weights", str(weights), "--model", MODEL, "--out", str(out),
            "--workers", "0", "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Average Precision  @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in text
    results = json.loads(out.read_text())
    assert isinstance(results, list) and {r["image_id"] for r in results} <= {1, 2, 3}
    torch.save({"model": build_model(MODEL).state_dict()}, weights)  # 81 classes: does not fit
    assert main(args) == 2
    assert "81 classes" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path / "none"), "--weights", str(weights)]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
