"""Samples by index: the QSL's loaded set as uint8 in shared memory, and what crosses a pipe.

The parent (the QSL's load callback) writes each loaded sample's uint8 (3, S, S) resize output
into a slot of one memory-mapped file under ``/dev/shm`` (`SharedSamples`); pool workers map the
same file read-only and receive only slot numbers. A worker normalises on its own device
(`Normaliser`: on a GPU after a 4x smaller uint8 copy) and answers with only the valid
detections (`pack_detections`), so nothing proportional to the image size crosses a pipe: a few
bytes per sample out, at most 200 x 22 bytes back.

Slots: LoadGen keeps at most ``performance_sample_count`` samples loaded at a time (accuracy mode
walks the QSL in sets of that size), so the file holds that many; a load beyond it is an error
naming the count, never a silent overwrite.
"""

from __future__ import annotations

import os
import tempfile
import threading

import numpy as np
import torch

from ssdbench.data.jitter import MEAN, STD
from ssdbench.model.postprocess import PaddedDetections

_SHM = "/dev/shm"


class SharedSamples:
    """``slots`` uint8 samples of ``sample_shape`` in a memory-mapped file; index -> slot."""

    def __init__(self, slots: int, sample_shape: tuple[int, ...]):
        self.sample_shape = tuple(int(s) for s in sample_shape)
        folder = _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK) else None
        fd, self.path = tempfile.mkstemp(prefix="ssdbench-qsl-", suffix=".u8", dir=folder)
        os.close(fd)
        self.shape = (int(slots), *self.sample_shape)
        self.array = np.memmap(self.path, np.uint8, mode="w+", shape=self.shape)
        self.slot_of: dict[int, int] = {}
        self._free = list(range(int(slots)))[::-1]
        self._lock = threading.Lock()  # LoadGen may call load/unload from its own threads

    def put(self, index: int, sample: np.ndarray) -> None:
        """Store QSL sample ``index`` (uint8 (3, S, S)); RuntimeError when every slot is taken."""
        if sample.shape != self.sample_shape or sample.dtype != np.uint8:
            raise ValueError(f"sample {index} is {sample.dtype} {sample.shape}, the store holds uint8 "
                             f"{self.sample_shape}")  # fmt: skip
        with self._lock:
            if index not in self.slot_of:
                if not self._free:
                    raise RuntimeError(f"shared sample store full: {self.shape[0]} slots "
                                       "(performance_sample_count) are loaded")  # fmt: skip
                self.slot_of[index] = self._free.pop()
            slot = self.slot_of[index]
        self.array[slot] = sample

    def drop(self, index: int) -> None:
        with self._lock:
            slot = self.slot_of.pop(index, None)
            if slot is not None:
                self._free.append(slot)

    def slots(self, indices) -> np.ndarray:
        """Slot numbers (int32) of loaded QSL indices; KeyError for one that is not loaded."""
        return np.fromiter((self.slot_of[int(i)] for i in indices), np.int32, len(indices))

    def handle(self) -> tuple[str, tuple[int, ...]]:
        """What a worker needs to map the file: (path, shape)."""
        return self.path, self.shape

    def close(self) -> None:
        """Unmap and delete the file (idempotent)."""
        self.array = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class SampleReader:
    """A worker's read-only view of a `SharedSamples` file, mapped on first use."""

    def __init__(self):
        self._maps: dict[str, np.memmap] = {}

    def batch(self, path: str, shape: tuple[int, ...], slots: np.ndarray) -> torch.Tensor:
        """uint8 (N, 3, S, S) of ``slots`` (a copy: the slots may be reused after the answer)."""
        if path not in self._maps:
            self._maps = {path: np.memmap(path, np.uint8, mode="r", shape=tuple(shape))}  # one store per run
        return torch.from_numpy(np.ascontiguousarray(self._maps[path][slots]))


class Normaliser:
    """uint8 (N, 3, S, S) on the host -> the model input on ``device`` (benchmark.md §5); one per worker.

    On CUDA the uint8 batch is pinned and copied (4x fewer bytes than float32), then converted
    and normalised there. On the CPU the result goes into a buffer kept from batch to batch and
    is normalised in place: fresh float32 temporaries cost 554 ms CPU per batch of 8 at
    1200x1200 (page faults), the reused buffer 64 ms (`benchmarks/RESULTS.md`). The float32
    operations are those of `SampleLibrary.preprocessed` (x / 255, then (x - mean) / std), so the
    result is bit for bit the QSL's own input; on the CPU it is valid until the next call.
    """

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.mean = torch.tensor(MEAN, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._buffer: torch.Tensor | None = None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            x = batch.pin_memory().to(self.device, non_blocking=True).float()
        else:
            if self._buffer is None or self._buffer.shape[1:] != batch.shape[1:] or len(self._buffer) < len(batch):
                self._buffer = torch.empty(batch.shape, dtype=torch.float32, device=self.device)
            x = self._buffer[: len(batch)]
            x.copy_(batch)
        return x.div_(255.0).sub_(self.mean).div_(self.std)


def normalise_uint8(batch: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """One batch through a fresh `Normaliser` (its own result tensor)."""
    return Normaliser(device)(batch)


def pack_detections(dets: PaddedDetections) -> tuple:
    """Only the valid detections, compact: (width D, counts int32 (N,), boxes float32 (K, 4),
    scores float32 (K,), labels int16 (K,)) with K = sum(counts), images in order."""
    counts = dets.counts.cpu().numpy().astype(np.int32)
    keep = torch.arange(dets.boxes.shape[1]).unsqueeze(0) < torch.from_numpy(counts).unsqueeze(1)
    boxes, scores, labels = (t.detach().cpu() for t in (dets.boxes, dets.scores, dets.labels))
    return (int(dets.boxes.shape[1]), counts, boxes[keep].float().numpy(), scores[keep].float().numpy(),
            labels[keep].numpy().astype(np.int16))  # fmt: skip


def unpack_detections(packed: tuple) -> PaddedDetections:
    """`pack_detections`' tuple -> `PaddedDetections` of width D, zero padding (its contract)."""
    width, counts, boxes, scores, labels = packed
    n = len(counts)
    keep = torch.arange(width).unsqueeze(0) < torch.from_numpy(counts.astype(np.int64)).unsqueeze(1)
    out_boxes, out_scores = torch.zeros(n, width, 4), torch.zeros(n, width)
    out_labels = torch.zeros(n, width, dtype=torch.int64)
    out_boxes[keep] = torch.from_numpy(boxes)
    out_scores[keep] = torch.from_numpy(scores)
    out_labels[keep] = torch.from_numpy(labels.astype(np.int64))
    return PaddedDetections(out_boxes, out_labels, out_scores, torch.from_numpy(counts.astype(np.int64)))
