"""Sharded sampler, padded collate, bad-sample skipping and the loader end to end."""

import warnings

import numpy as np
import pytest
import torch

from ssdbench.data.coco import BadSampleError
from ssdbench.data.gpu_pipeline import build_byte_loader
from ssdbench.data.loader import (
    InputSettings,
    PaddedCollate,
    Shard,
    ShardedSampler,
    WorkerOptions,
    build_loader,
    pad_targets,
)


class ArrayDataset:
    """In-memory stand-in for CocoDetection: image i is filled with i; ``bad`` ids fail to load."""

    def __init__(self, n=10, bad=(), objects=2):
        self.n, self.bad, self.objects = n, set(bad), objects

    def __len__(self):
        return self.n

    def load(self, i):
        if i in self.bad:
            raise BadSampleError(100 + i, f"/data/img{i}.jpg", "truncated JPEG")
        image = np.full((40 + i, 60, 3), i, np.uint8)
        k = self.objects
        boxes = np.tile(np.array([[0.2, 0.2, 0.8, 0.8]], np.float32), (k, 1))
        target = {"boxes": boxes, "labels": np.arange(1, k + 1, dtype=np.int64), "image_id": 100 + i,
                  "orig_size": image.shape[:2]}
        return image, target


def test_shards_disjoint_complete_and_reshuffled():
    for n in (10, 11):
        shards = [ShardedSampler(n, Shard(rank, 2, 3)) for rank in (0, 1)]
        a, b = (list(s) for s in shards)
        assert not set(a) & set(b) and sorted(a + b) == list(range(n))
        assert abs(len(a) - len(b)) <= 1 and len(shards[0]) == len(a)
        for s in shards:
            s.set_epoch(1)
        a1, b1 = (list(s) for s in shards)
        assert sorted(a1 + b1) == list(range(n)) and a1 != a  # a new order each epoch
    dropped = [list(ShardedSampler(11, Shard(rank, 2, 3), drop_last=True)) for rank in (0, 1)]
    assert len(dropped[0]) == len(dropped[1]) == 5 and not set(dropped[0]) & set(dropped[1])
    assert list(ShardedSampler(11, Shard(0, 2, 3))) == a and list(ShardedSampler(11, Shard(0, 2, 4))) != a
    assert list(ShardedSampler(5, Shard(1, 2), shuffle=False)) == [1, 3]
    with pytest.raises(ValueError, match="rank=2"):
        ShardedSampler(5, Shard(2, 2))


def test_sampler_resumes_mid_epoch():
    full = ShardedSampler(20, Shard(1, 2, 5))
    full.set_epoch(3)
    order = list(full)
    run = ShardedSampler(20, Shard(1, 2, 5))
    run.set_epoch(3)
    it = iter(run)
    seen = [next(it) for _ in range(4)]
    state = run.state_dict()
    assert state["epoch"] == 3 and state["position"] == 4
    resumed = ShardedSampler(20, Shard(1, 2, 5))
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the training loop calls this again on restart: must not rewind
    assert len(resumed) == len(order) - 4
    assert seen + list(resumed) == order
    resumed.set_epoch(4)
    assert len(list(resumed)) == len(order)  # the next epoch is whole
    # workers prefetch ahead: the loop states what it consumed in this epoch, resumed part included
    assert run.state_dict(consumed=2)["position"] == 2
    again = ShardedSampler(20, Shard(1, 2, 5))
    again.load_state_dict(state)
    assert again.state_dict(consumed=6)["position"] == 6
    with pytest.raises(ValueError, match="seed"):
        ShardedSampler(20, Shard(1, 2, 6)).load_state_dict(state)


def test_padded_collate_by_hand():
    samples = [
        {"image": torch.zeros(3, 4, 4), "boxes": np.array([[0.1, 0.2, 0.3, 0.4]], np.float32),
         "labels": np.array([7]), "image_id": 11, "orig_size": (30, 40)},
        None,  # a skipped sample
        {"image": torch.ones(3, 4, 4), "boxes": np.zeros((0, 4), np.float32),
         "labels": np.zeros(0, np.int64), "image_id": 12, "orig_size": (50, 60)},
    ]
    batch = PaddedCollate(size=4, max_objects=3)(samples)
    assert batch["images"].shape == (2, 3, 4, 4)
    expected_boxes = torch.zeros(2, 3, 4)
    expected_boxes[0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    torch.testing.assert_close(batch["boxes"], expected_boxes)
    assert batch["labels"].tolist() == [[7, 0, 0], [0, 0, 0]]
    assert batch["image_ids"].tolist() == [11, 12] and batch["orig_sizes"].tolist() == [[30, 40], [50, 60]]
    empty = PaddedCollate(size=4, max_objects=3)([None])
    assert empty["images"].shape == (0, 3, 4, 4) and empty["orig_sizes"].shape == (0, 2)


def test_pad_targets_by_hand():
    per_sample_boxes = [np.full((3, 4), 0.5, np.float32), np.zeros((0, 4))]
    boxes, labels = pad_targets(per_sample_boxes, [np.array([4, 5, 6]), np.zeros(0)], max_objects=2)
    assert boxes.dtype == np.float32 and boxes.shape == (2, 2, 4) and labels.dtype == np.int64
    assert labels.tolist() == [[4, 5], [0, 0]] and (boxes[0] == 0.5).all() and not boxes[1].any()


@pytest.mark.parametrize("build", [build_loader, build_byte_loader])
def test_batch_size_is_checked_by_both_loaders(build):
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        build(ArrayDataset(4), 0, train=True)


def test_bad_sample_skipped_with_warning():
    loader = build_loader(ArrayDataset(6, bad={2}), batch_size=3, train=False, inputs=InputSettings(16),
                          workers=0)
    with pytest.warns(RuntimeWarning, match=r"image 102 \(/data/img2.jpg\): truncated JPEG"):
        batches = list(loader)
    ids = torch.cat([b["image_ids"] for b in batches]).tolist()
    assert ids == [100, 101, 103, 104, 105]


def test_eval_batches_in_order_and_padded():
    loader = build_loader(ArrayDataset(5), batch_size=2, train=False, inputs=InputSettings(16, max_objects=4),
                          workers=0)
    batches = list(loader)
    assert [len(b["image_ids"]) for b in batches] == [2, 2, 1]  # no drop_last in eval
    b = batches[0]
    assert b["images"].shape == (2, 3, 16, 16) and b["images"].dtype == torch.float32
    assert b["labels"].tolist() == [[1, 2, 0, 0]] * 2 and b["boxes"].shape == (2, 4, 4)
    assert b["orig_sizes"].tolist() == [[40, 60], [41, 60]]
    # image i is filled with value i: normalised pixels identify it
    np.testing.assert_allclose(b["images"][1, 0].numpy(), (1 / 255 - 0.485) / 0.229, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:.*keeping the first")
def test_train_loader_reproducible_across_worker_counts():
    data = ArrayDataset(8, objects=3)
    kwargs = {"batch_size": 4, "train": True, "inputs": InputSettings(32, max_objects=2, shard=Shard(seed=9))}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        serial = list(build_loader(data, workers=0, **kwargs))
    assert any("keeping the first 2" in str(w.message) for w in caught)
    parallel = list(build_loader(data, workers=2, **kwargs))
    assert len(serial) == len(parallel) == 2
    for s, p in zip(serial, parallel):
        for key in s:
            assert torch.equal(s[key], p[key]), key
    assert serial[0]["labels"].shape == (4, 2) and serial[0]["images"].dtype == torch.float32
    loader = build_loader(data, workers=0, options=WorkerOptions(defer_jitter=True), **kwargs)
    loader.sampler.set_epoch(1)
    batch = next(iter(loader))
    assert batch["images"].dtype == torch.uint8
    assert not torch.equal(batch["image_ids"], serial[0]["image_ids"])  # epoch 1 reshuffles


def test_synthetic_coco_end_to_end(tmp_path):
    from ssdbench.data.coco import CocoDetection
    from ssdbench.data.synth import make_synthetic_coco

    root = make_synthetic_coco(tmp_path / "coco", train_images=6, val_images=0, workers=1, progress=False)
    data = CocoDetection(root, "train")
    data.image_path(1).write_bytes(data.image_path(1).read_bytes()[:300])  # truncate one JPEG
    bad_id = data.ids[1]
    loader = build_loader(data, batch_size=3, train=True, inputs=InputSettings(64), workers=0,
                          options=WorkerOptions(decoder="pillow"))
    with pytest.warns(RuntimeWarning, match=f"image {bad_id} .*{data.image_path(1).name}"):
        batches = list(loader)
    assert sum(len(b["image_ids"]) for b in batches) == 5 and bad_id not in torch.cat(
        [b["image_ids"] for b in batches]).tolist()
    assert data.decoder == "auto"  # the loader's decoder choice does not touch the caller's dataset
    for b in batches:
        n = len(b["image_ids"])
        assert b["images"].shape == (n, 3, 64, 64) and b["labels"].shape == (n, 200)
        valid = b["labels"] > 0
        boxes = b["boxes"][valid]
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 1
    assert any((b["labels"] > 0).any() for b in batches)
