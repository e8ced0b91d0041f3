"""LoadGen query sample library (QSL): preprocessed COCO val images held in memory.

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
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from ssdbench.data.decode import available_decoders
from ssdbench.data.jitter import MEAN, STD
from ssdbench.data.transforms import resize_uint8, to_chw
from ssdbench.io import atomic_write
from ssdbench.io import cache_dir as shared_cache_dir
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
        """Keep loaded samples as uint8 in ``store`` (`ssdbench.loadgen.shared_samples`) instead of
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
