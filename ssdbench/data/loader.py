"""Data loader: sharded, resumable sampling; per-sample augmentation in workers; padded batches.

Also the settings a training run's input paths share (`Shard`, `InputSettings`: size, targets
kept, crop tries, shard; the device pipeline, `gpu_pipeline`, takes the same) and the CPU
workers' own options (`WorkerOptions`).
A batch is a dict (N images, M = ``max_objects`` boxes per image, S = input size):

- ``images``: float32 (N, 3, S, S) normalised, or uint8 (N, 3, S, S) with ``defer_jitter``
  (then run ``transforms.jitter_and_normalize`` (train) or ``transforms.normalize`` (eval) on
  the device);
- ``boxes``: float32 (N, M, 4) ltrb normalised; ``labels``: int64 (N, M), **0 = padding**;
- ``image_ids``: int64 (N,); ``orig_sizes``: int64 (N, 2) as (h, w).

Samples whose image cannot be read (``BadSampleError``) are skipped with a warning naming the
image id and path, so N can be smaller than the batch size (even 0).
Randomness: sample i of epoch e is augmented (`augment.plan_sample`) with the generator
`augment.sample_rng` ``(seed, e, i)``, so results do not depend on the number of workers, and a
resumed run sees the same images.
"""

from __future__ import annotations

import copy
import functools
import random
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssdbench.data.augment import sample_rng
from ssdbench.data.coco import BadSampleError
from ssdbench.data.transforms import EvalTransform, TrainTransform


@dataclass(frozen=True)
class Shard:
    """Which part of a dataset this process reads: rank ``rank`` of ``world_size``, in the order
    ``seed`` draws (the sampler's shuffle and the per-sample augmentation draws)."""

    rank: int = 0
    world_size: int = 1
    seed: int = 0


class ShardedSampler(Sampler):
    """Per-rank shard of a per-epoch shuffled order of ``range(num_samples)``.

    ``shard`` (default `Shard()`: rank 0 of 1, seed 0) gives rank r, world_size and seed.
    Epoch e's order is ``default_rng([seed, e]).permutation(num_samples)`` (identical on every
    rank); rank r takes every ``world_size``-th index from position r. Equal shards (training:
    every rank runs the same number of steps) come two ways: ``pad=True`` appends the order's
    first ``-num_samples % world_size`` indices again, as torch's ``DistributedSampler`` does
    by default (ceil(n / world_size) per rank; the MLPerf reference's training sampler,
    train.py:243); ``drop_last=True`` drops the ``num_samples % world_size`` tail instead.
    With neither, every sample comes once, shards differing by at most one (evaluation).
    Without drop_last the shards cover every sample; without padding they are disjoint.
    ``with_epoch`` yields ``(epoch, index)`` pairs (used by `build_loader` to seed
    augmentation) instead of plain indices.
    """

    def __init__(self, num_samples: int, shard: Shard | None = None, shuffle: bool = True,
                 drop_last: bool = False, with_epoch: bool = False, pad: bool = False):
        shard = Shard() if shard is None else shard
        rank, world_size, seed = shard.rank, shard.world_size, shard.seed
        if num_samples < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad shard: num_samples={num_samples}, rank={rank}, world_size={world_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last, self.with_epoch = shuffle, drop_last, with_epoch
        self.pad = bool(pad) and not drop_last
        self.epoch = 0
        self._start = 0  # where the next iteration begins in this epoch's shard (resume)
        self._position = 0  # indices handed out so far in this epoch

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's shard of ``epoch`` (default: the current one), int64 (k,)."""
        epoch = self.epoch if epoch is None else epoch
        n = self.num_samples
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.drop_last:
            order = order[: n - n % self.world_size]
        elif self.pad and n % self.world_size:
            extra = -n % self.world_size  # DistributedSampler: indices += indices[:padding_size]
            order = np.concatenate([order, np.resize(order, extra)])
        return order[self.rank :: self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; a new epoch starts from its beginning (a resumed one does not)."""
        if epoch != self.epoch:
            self.epoch, self._start, self._position = int(epoch), 0, 0

    def __iter__(self):
        shard, epoch = self.indices(), self.epoch
        for pos in range(self._start, len(shard)):
            self._position = pos + 1
            yield (epoch, int(shard[pos])) if self.with_epoch else int(shard[pos])
        self._start = 0  # a finished epoch, iterated again, starts over

    def __len__(self) -> int:
        return len(self.indices()) - self._start

    def state_dict(self, consumed: int | None = None) -> dict:
        """Epoch and position to resume from.

        ``consumed``: samples of this epoch's shard the training loop has taken, counted from
        the epoch's start, before a resume included (e.g. ``steps_in_epoch * batch_size``);
        needed with DataLoader workers, which prefetch ahead. Without it, the indices handed
        out so far are used. The state is the same on every rank.
        """
        position = self._position if consumed is None else min(int(consumed), len(self.indices()))
        return {"epoch": self.epoch, "position": position, "seed": self.seed,
                "num_samples": self.num_samples, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration continues epoch ``state["epoch"]`` at ``state["position"]``."""
        for key in ("seed", "num_samples", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]}, "
                                 f"this sampler has {getattr(self, key)}")
        self.epoch = int(state["epoch"])
        self._start = self._position = int(state["position"])


@dataclass(frozen=True)
class InputSettings:
    """What a training run's input paths share (the CPU loader, the byte loader and the device
    pipeline get the same values): input size S, ``max_objects`` targets kept per image (M),
    ``max_samples`` SSD crop tries per mode (MLPerf: 1 or 50; training only) and the ``shard``
    read (rank, world size, seed)."""

    size: int = 300
    max_objects: int = 200
    max_samples: int = 1
    shard: Shard = field(default_factory=Shard)


@dataclass(frozen=True)
class WorkerOptions:
    """How the CPU loader's workers hand batches over: ``decoder`` overrides the dataset's JPEG
    decoder (on a copy; None keeps it); ``defer_jitter``: images come as uint8 and colour
    jitter + normalisation are left to the caller, on the device; ``pin_memory`` (None: CUDA
    being available) pins the batches for the copy to the device."""

    decoder: str | None = None
    defer_jitter: bool = False
    pin_memory: bool | None = None


def epoch_sampler(num_samples: int, batch_size: int, shard: Shard, shuffle: bool, drop_last: bool,
                  pad: bool = False) -> ShardedSampler:
    """A loader's `ShardedSampler` yielding ``(epoch, index)``; ValueError unless ``batch_size >= 1``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return ShardedSampler(num_samples, shard, shuffle=shuffle, drop_last=drop_last, with_epoch=True, pad=pad)


class AugmentedDataset(Dataset):
    """``dataset.load(i)`` + transform, keyed by ``(epoch, i)`` (or ``i``, epoch 0).

    Returns a dict (image (3, S, S), boxes float32 (k, 4), labels int64 (k,), image_id,
    orig_size) with k <= max_objects, or None for a bad sample (after a warning).
    """

    def __init__(self, dataset, transform, train: bool, seed: int = 0, max_objects: int = 200):
        self.dataset, self.transform, self.train = dataset, transform, train
        self.seed, self.max_objects = int(seed), int(max_objects)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        try:
            image, target = self.dataset.load(index)
        except BadSampleError as exc:
            warnings.warn(f"skipping {exc}", RuntimeWarning, stacklevel=2)
            return None
        if self.train:
            image, target = self.transform(image, target, sample_rng(self.seed, epoch, index))
        else:
            image, target = self.transform(image, target)
        return self._sample(image, target)

    def _sample(self, image: torch.Tensor, target: dict) -> dict:
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(target["labels"], dtype=np.int64).reshape(-1)
        if (labels <= 0).any():
            raise ValueError(f"image {target['image_id']}: labels must be >= 1 (0 marks padding)")
        if len(labels) > self.max_objects:
            warnings.warn(f"image {target['image_id']} has {len(labels)} objects; keeping the first "
                          f"{self.max_objects} (max_objects)", RuntimeWarning, stacklevel=2)
            boxes, labels = boxes[: self.max_objects], labels[: self.max_objects]
        return {"image": image, "boxes": boxes, "labels": labels,
                "image_id": int(target["image_id"]), "orig_size": tuple(target["orig_size"])}


def pad_targets(boxes: list[np.ndarray], labels: list[np.ndarray], max_objects: int):
    """Per-sample boxes (k_i, 4) and labels (k_i,) -> float32 (N, M, 4) and int64 (N, M) arrays.

    The first M = ``max_objects`` targets of each sample; the rest is zero (label 0 = padding).
    """
    n, m = len(boxes), int(max_objects)
    out_boxes, out_labels = np.zeros((n, m, 4), np.float32), np.zeros((n, m), np.int64)
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        k = min(len(lab), m)
        out_boxes[i, :k], out_labels[i, :k] = b[:k], lab[:k]
    return out_boxes, out_labels


def batch_info(samples: list[dict]) -> dict:
    """``image_ids`` int64 (N,) and ``orig_sizes`` int64 (N, 2) as (h, w) of a batch's samples."""
    return {
        "image_ids": torch.tensor([s["image_id"] for s in samples], dtype=torch.int64),
        "orig_sizes": torch.tensor([s["orig_size"] for s in samples], dtype=torch.int64).reshape(-1, 2),
    }


class PaddedCollate:
    """List of samples (None = skipped) -> batch dict with (N, M) padded targets (label 0)."""

    def __init__(self, size: int, max_objects: int = 200, uint8: bool = False):
        self.size, self.max_objects = int(size), int(max_objects)
        self.dtype = torch.uint8 if uint8 else torch.float32

    def __call__(self, samples: list) -> dict:
        samples = [s for s in samples if s is not None]
        boxes, labels = pad_targets([s["boxes"] for s in samples], [s["labels"] for s in samples],
                                    self.max_objects)
        if samples:
            images = torch.stack([s["image"] for s in samples])
        else:
            images = torch.zeros((0, 3, self.size, self.size), dtype=self.dtype)
        return {"images": images, "boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                **batch_info(samples)}


def _seed_worker(worker_id: int, sampler: ShardedSampler, seed: int, rank: int) -> None:
    """Seed the global RNGs of a worker from (seed, epoch, rank, worker), for third-party code.

    Our own augmentation uses per-sample generators and does not read these.
    """
    state = np.random.SeedSequence([seed, sampler.epoch, rank, worker_id]).generate_state(2)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))


def build_loader(dataset, batch_size: int, train: bool, inputs: InputSettings = InputSettings(),
                 workers: int = 2, drop_last: bool | None = None,
                 options: WorkerOptions = WorkerOptions()) -> DataLoader:
    """DataLoader of padded batches (see the module docstring) over this rank's shard.

    ``dataset``: anything with ``len`` and ``load(i)`` -> (uint8 (H, W, 3) image, target), e.g.
    ``CocoDetection``. ``train`` picks `TrainTransform` (shuffled) or `EvalTransform` (in order,
    every sample once). ``inputs``: input size, targets kept, crop tries and ``inputs.shard``.
    Training batches: ``drop_last`` (default True) drops each rank's last
    partial batch and the shard tail; ``drop_last=False`` keeps the partial batch and pads the
    shards as torch's DistributedSampler does (the MLPerf reference, train.py:242-250: at 8 x 128
    on COCO, 115 steps per epoch instead of 114). ``options``: the workers' decoder, deferred
    jitter and pinned memory (`WorkerOptions`). Call
    ``loader.sampler.set_epoch(e)`` before each epoch; ``loader.sampler`` also resumes.
    """
    shard, size, max_objects = inputs.shard, inputs.size, inputs.max_objects
    drop_last = train if drop_last is None else drop_last
    sampler = epoch_sampler(len(dataset), batch_size, shard, shuffle=train,
                            drop_last=drop_last, pad=train and not drop_last)
    if options.decoder is not None:
        dataset = copy.copy(dataset)
        dataset.decoder = options.decoder
    pin_memory = torch.cuda.is_available() if options.pin_memory is None else options.pin_memory
    defer_jitter = options.defer_jitter
    if train:
        transform = TrainTransform(size, max_samples=inputs.max_samples, defer_jitter=defer_jitter)
    else:
        transform = EvalTransform(size, defer_normalize=defer_jitter)
    extra = {"prefetch_factor": 2} if workers > 0 else {}
    return DataLoader(
        AugmentedDataset(dataset, transform, train, shard.seed, max_objects),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=PaddedCollate(size, max_objects, uint8=defer_jitter),
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=functools.partial(_seed_worker, sampler=sampler, seed=shard.seed, rank=shard.rank),
        **extra,
    )
