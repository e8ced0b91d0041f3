"""The QSL's samples: the query sample library over COCO val (`SampleLibrary`), its loaded set
as uint8 in shared memory for the pool workers (`SharedSamples`), and the compact detections
that cross a pipe (`pack_detections`).

QSL index ``i`` is image ``i`` of the annotation file's ``images`` list in file order, every
image included (`CocoDetection(root, "val", all_images=True)`; 5,000 on COCO val 2017), limited
to the first ``count``: the order MLPerf's accuracy script assumes (benchmark.md §7). LoadGen
chooses which samples are resident: its load callback preprocesses them (benchmark.md §5: RGB,
bilinear resize to SxS, /255, mean/std, NCHW float32) and its unload callback frees them, so timed
queries never decode.

Resized samples are cached on disk, one ``.npy`` per image. The cache folder is keyed by the
sample order and the preprocessing (dataset path, annotation file, the ordered (id, file name)
list of its images, input size, resize, decoders, cache format), each file by the image's content
stamp (id, file size, modification time): a cache of another order, another preprocessing or an
edited image is never reused, and the caches of the former sorted, non-empty order live in other
folders. The cache holds the uint8 (3, S, S) resize output, not the float32 input: normalising is
cheap and exact, and the uint8 file is 4x smaller (4.3 MB per image at 1200x1200, 21 GB for the
5,000 COCO val images). With the cache on, `prepare()` fills it for all QSL samples before LoadGen
starts, so an image that fails to decode stops the run before any timing (an exception must never
escape a LoadGen callback: LoadGen cannot recover from it). Default location
``$SSDBENCH_CACHE/loadgen_samples``.

Samples by index: the QSL's loaded set as uint8 in shared memory, and what crosses a pipe.

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

import hashlib
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import torch

from ssdbench.data.decode import available_decoders
from ssdbench.data.jitter import MEAN, STD
from ssdbench.data.transforms import resize_uint8, to_chw
from ssdbench.io import atomic_write
from ssdbench.io import cache_dir as shared_cache_dir
from ssdbench.model.postprocess import PaddedDetections
from ssdbench.progress import Progress

DEFAULT_PERFORMANCE_COUNT = 64  # benchmark.md §7
CACHE_FORMAT = 2  # 1: sorted non-empty order, per-id files; 2: file order, content-stamped files
_MEAN = np.asarray(MEAN, np.float32).reshape(3, 1, 1)  # benchmark.md §5
_STD = np.asarray(STD, np.float32).reshape(3, 1, 1)


class SampleLibrary:
    """The QSL: preprocessed samples float32 (3, S, S) of a COCO-format val split.

    dataset: a `CocoDetection` (``ids``, ``image_info(i)``, ``image_path(i)``, ``read_image(i)``,
      ``root``), normally opened with ``all_images=True`` (`ssdbench.loadgen.accuracy.open_val_dataset`).
    input_size: S, the model's input side (1200 for ssd1200_r34).
    count: samples in the QSL (0 or None: the whole split).
    performance_count: samples LoadGen keeps resident in performance mode (64, benchmark.md §7).
    """

    def __init__(self, dataset, input_size: int, count: int | None = None,
                 performance_count: int = DEFAULT_PERFORMANCE_COUNT, cache: bool = True,
                 cache_dir: str | Path | None = None, progress: bool = True):  # fmt: skip
        if len(dataset) == 0:
            raise ValueError(f"dataset {dataset.root} has no val images")
        if count is not None and count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        self.dataset, self.input_size = dataset, int(input_size)
        self.count = min(count or len(dataset), len(dataset))
        self.performance_count = max(1, min(int(performance_count), self.count))
        self.cache_dir = Path(cache_dir) if cache_dir else shared_cache_dir("loadgen_samples")
        self.cache, self.progress = cache, progress
        self.samples: dict[int, np.ndarray] = {}
        self.error: BaseException | None = None  # first failure inside a LoadGen callback
        self._folder_key: str | None = None
        self._stamps: dict[int, str] = {}
        self.store = None  # a `SharedSamples`: loaded samples kept there as uint8 for pool workers

    def use_store(self, store) -> None:
        """Keep loaded samples as uint8 in ``store`` (`ssdbench.loadgen.samples`) instead of
        float32 in this process: the pool's workers read them by index and normalise themselves."""
        self.store = store

    def __len__(self) -> int:
        return self.count

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)

    def image_id(self, index: int) -> int:
        return int(self.dataset.ids[index])

    def cache_key(self) -> str:
        """The cache folder's name: a hash of the sample order and the preprocessing (module doc)."""
        if self._folder_key is None:
            dataset = self.dataset
            key = {"format": CACHE_FORMAT, "root": str(Path(dataset.root).resolve()),
                   "ann_file": str(getattr(dataset, "ann_file", "")), "size": self.input_size,
                   "resize": "pillow-bilinear-uint8", "decoder": getattr(dataset, "decoder", "auto"),
                   "decoders": available_decoders(),
                   "order": [[int(i), str(dataset.image_info(k)["file_name"])] for k, i in enumerate(dataset.ids)]}  # fmt: skip
            digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            self._folder_key = f"v{CACHE_FORMAT}-{digest}"
        return self._folder_key

    def _stamp(self, index: int) -> str:
        """``<image id>-<file size>-<mtime ns>`` of sample ``index`` (``missing`` when unreadable)."""
        if index not in self._stamps:
            try:
                st = Path(self.dataset.image_path(index)).stat()
                self._stamps[index] = f"{self.image_id(index)}-{st.st_size}-{st.st_mtime_ns}"
            except OSError:
                return f"{self.image_id(index)}-missing"
        return self._stamps[index]

    def cache_path(self, index: int) -> Path:
        """``<cache>/v2-<order and preprocessing hash>/<size>_uint8/<image id>-<bytes>-<mtime ns>.npy``."""
        return self.cache_dir / self.cache_key() / f"{self.input_size}_uint8" / f"{self._stamp(index)}.npy"

    def prepare(self) -> None:
        """Fill the disk cache for every QSL sample (decode errors surface here, before LoadGen)."""
        if not self.cache:
            return
        todo = [i for i in range(self.count) if not self.cache_path(i).is_file()]
        with self._progress(len(todo), "QSL cache", bool(todo)) as progress:
            for i in progress.iterate(todo):
                _save(self.cache_path(i), self._resized(i))

    def load(self, indices) -> None:
        """LoadGen's load callback: make ``indices`` resident (preprocessed float32 (3, S, S)).

        Never raises (LoadGen cannot recover from a callback exception): a failure is kept in
        ``self.error``, the sample stays absent and the SUT answers it empty and fails the run.
        """
        loaded = self.samples if self.store is None else self.store.slot_of
        todo = [int(i) for i in indices if int(i) not in loaded]
        with self._progress(len(todo), "QSL load", len(todo) > 16) as progress:
            for i in progress.iterate(todo):
                self._load_one(i)

    def _load_one(self, i: int) -> None:
        try:
            self._check_index(i)
            if self.store is not None:
                self.store.put(i, self._cached_resized(i))
            else:
                self.samples[i] = self.preprocessed(i)
        except Exception as exc:  # noqa: BLE001 - reported after the run
            self.error = self.error or exc

    def _progress(self, total: int, desc: str, worth_showing: bool) -> Progress:
        """A bar on a terminal, plain lines in logs; on stderr, like the command's other notes."""
        return Progress(total, desc, unit="img", enabled=self.progress and worth_showing, stream=sys.stderr)

    def unload(self, indices) -> None:
        """LoadGen's unload callback: free the samples."""
        for i in indices:
            self.samples.pop(int(i), None)
            if self.store is not None:
                self.store.drop(int(i))

    def get(self, index: int) -> np.ndarray:
        """A resident sample, float32 (3, S, S); KeyError if LoadGen did not load it."""
        return self.samples[index]

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.count:
            raise IndexError(f"QSL index {i} out of range 0..{self.count - 1}")

    def preprocessed(self, i: int) -> np.ndarray:
        """Sample ``i`` as the model input, float32 (3, S, S): benchmark.md §5 normalisation of the resize.

        Equal, bit for bit, to `preprocess_for_inference(image, S)` (same resize; the same float32
        operations as `normalize`, in numpy: LoadGen calls back from its own threads, where torch
        starts a thread pool per thread, seconds per call on a busy machine).
        """
        x = self._cached_resized(i).astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray((x - _MEAN) / _STD)

    def _cached_resized(self, i: int) -> np.ndarray:
        path = self.cache_path(i)
        if self.cache and path.is_file():
            try:
                sample = np.load(path, allow_pickle=False)
                if sample.shape == self.sample_shape and sample.dtype == np.uint8:
                    return sample
            except (OSError, ValueError):
                pass  # damaged cache entry: rebuild it below
        sample = self._resized(i)
        if self.cache:
            _save(path, sample)
        return sample

    def _resized(self, i: int) -> np.ndarray:
        """Decode + bilinear resize (benchmark.md §5) -> uint8 (3, S, S); BadSampleError when decoding fails."""
        chw = to_chw(resize_uint8(self.dataset.read_image(i), self.input_size))
        return np.ascontiguousarray(np.asarray(chw, dtype=np.uint8))

    def construct(self):
        """Register with LoadGen; returns the QSL handle (free it with `lg.DestroyQSL`)."""
        import mlperf_loadgen as lg

        return lg.ConstructQSL(self.count, self.performance_count, self.load, self.unload)


def _save(path: Path, array: np.ndarray) -> None:
    """Atomically (a concurrent or interrupted run never reads half a file)."""
    atomic_write(path, lambda tmp: np.save(tmp, array, allow_pickle=False))


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
