"""Device-side input pipeline: CPU workers read JPEG bytes, the device does everything else.

Split of the work (the GPU must never wait on input at 3,000 images/s):

- CPU workers (`JpegBytesDataset` + `build_byte_loader`): read the file bytes and the
  annotations, nothing else (no decode, no pixel work).
- Host, per batch (`DevicePipeline.plan`): per sample the `augment.plan_sample` of the CPU
  `TrainTransform` (SSD random crop, flip, kept boxes, colour-jitter parameters; benchmark.md §5),
  stacked into a `BatchPlan`. Only small arrays.
- Device, per batch (`DevicePipeline.__call__`): JPEG decode (nvjpeg through
  ``torchvision.io.decode_jpeg(..., device="cuda")`` when torchvision and CUDA are present, else a
  CPU decode so the path runs anywhere), crop + flip + resize of the whole batch in two batched
  matmuls, colour jitter + normalisation batched, and optionally target encoding.

Resize. Pillow's bilinear filter (the CPU path's `transforms.resize_uint8`, which antialiases
when shrinking) is separable: each output row/column is a fixed weighted sum of source
rows/columns. Per sample we build those weights on the device as matrices Wy (S, H) and Wx (S, W)
that also encode the crop (zero weight outside it) and the flip (Wx's rows reversed), and resize
the padded batch (N, 3, H, W) as ``Wy @ image @ Wx^T``: one batched call per axis, exact
antialiasing, no per-sample kernels. Pillow rounds to uint8 after its horizontal and after its
vertical pass; we round at the same two places, so outputs agree to +-1 grey level (tested).

Random draws: sample ``i`` of epoch ``e`` draws its plan from `augment.sample_rng` ``(seed, e, i)``,
as `data/loader.py` does, so a batch here equals the CPU loader's batch up to the resize rounding
above (and nvjpeg's IDCT rounding on the GPU); the boxes are equal.

Batches: ``images`` float32 (N, 3, S, S) normalised, ``boxes`` (N, M, 4) ltrb normalised,
``labels`` (N, M) int64 (0 = padding), ``image_ids`` (N,), ``orig_sizes`` (N, 2) as (h, w);
with an encoder also ``loc_targets`` (N, B, 4) and ``box_labels`` (N, B).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssdbench.data.augment import AugmentSettings, SamplePlan, identity_plan, plan_sample, sample_rng
from ssdbench.data.coco import normalized_targets
from ssdbench.data.decode import check_image_size, decode_image
from ssdbench.data.jitter import jitter_normalize, to_device
from ssdbench.data.loader import InputSettings, batch_info, epoch_sampler, pad_targets

try:  # optional nvjpeg fast path (never required: torchvision may be absent)
    from torchvision.io import ImageReadMode, decode_jpeg
except Exception:  # noqa: BLE001 - any import failure means "no torchvision"
    decode_jpeg = None


def gpu_decode_available(device: torch.device | str) -> bool:
    """True when JPEGs can be decoded on ``device`` with nvjpeg (torchvision + CUDA)."""
    return decode_jpeg is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()


# ---------------------------------------------------------------- CPU workers: bytes only
class JpegBytesDataset(Dataset):
    """Per sample the encoded file bytes and the target; no decoding (CPU workers read only).

    ``dataset``: a `CocoDetection`. Keys are ``(epoch, index)`` (or ``index``). Returns a dict
    ``data`` uint8 (L,) tensor of file bytes, ``boxes`` float32 (n, 4) ltrb normalised with the
    annotated size and clipped (boxes wholly outside dropped: `coco.normalized_targets`),
    ``labels`` int64 (n,), ``image_id``, ``orig_size`` (h, w), ``key`` (epoch, index); or None
    (after a warning naming the image) when the file cannot be read or its header claims more
    pixels than `decode.max_image_pixels` (checked here, before nvjpeg allocates).
    """

    def __init__(self, dataset, max_objects: int = 200):
        self.dataset, self.max_objects = dataset, int(max_objects)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        info, path = self.dataset.image_info(index), self.dataset.image_path(index)
        try:
            raw = np.fromfile(path, dtype=np.uint8)
            check_image_size(raw.tobytes())
            data = torch.from_numpy(raw)
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping bad sample: image {info['id']} ({path}): {exc}", RuntimeWarning, stacklevel=2)
            return None
        h, w = int(info["height"]), int(info["width"])
        boxes, labels = normalized_targets(*self.dataset.annotations(index), h, w)
        boxes, labels = boxes[: self.max_objects], labels[: self.max_objects]
        return {"data": data, "boxes": boxes, "labels": labels, "image_id": int(info["id"]),
                "orig_size": (h, w), "key": (int(epoch), int(index))}


def _keep_samples(samples: list) -> list:
    """Collate: the list of non-None samples, untouched (bytes vary in length)."""
    return [s for s in samples if s is not None]


def build_byte_loader(dataset, batch_size: int, train: bool = True, inputs: InputSettings | None = None,
                      workers: int = 4, drop_last: bool | None = None) -> DataLoader:
    """DataLoader yielding lists of `JpegBytesDataset` samples over this rank's ``inputs.shard``.

    Same sampling as `loader.build_loader` (`loader.epoch_sampler`, shuffled for training;
    ``drop_last`` default = ``train``, False for training pads the shards as DistributedSampler
    does and keeps the last partial batch), so ``loader.sampler.set_epoch(e)`` and its resume
    state work the same way. Of ``inputs`` (default `InputSettings()`) only the shard and
    ``max_objects`` are read here.
    """
    inputs = InputSettings() if inputs is None else inputs
    drop_last = train if drop_last is None else drop_last
    sampler = epoch_sampler(len(dataset), batch_size, inputs.shard, shuffle=train, drop_last=drop_last,
                            pad=train and not drop_last)
    extra = {"prefetch_factor": 4, "persistent_workers": True} if workers > 0 else {}
    return DataLoader(JpegBytesDataset(dataset, inputs.max_objects), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, collate_fn=_keep_samples, drop_last=drop_last, **extra)


# ---------------------------------------------------------------- decode on the device
def _decode_cpu(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU fallback: bytes -> uint8 (3, H, W) on ``device`` (any format Pillow reads)."""
    image = torch.from_numpy(decode_image(data.numpy().tobytes()))
    return image.permute(2, 0, 1).contiguous().to(device, non_blocking=True)


def decode_batch(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Encoded images (uint8 (L,) CPU tensors) -> list of uint8 (3, H_i, W_i) RGB on ``device``.

    nvjpeg decodes the whole list in one batched call when available; if that call fails (a
    CMYK or non-JPEG file, which nvjpeg rejects), each image is retried alone and falls back to
    the CPU decoder. A corrupt file raises ValueError from the CPU decoder.
    """
    device = torch.device(device)
    if not gpu_decode_available(device):
        return [_decode_cpu(d, device) for d in datas]
    try:
        return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        out = []
        for d in datas:
            try:
                out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(_decode_cpu(d, device))
        return out


# ---------------------------------------------------------------- host plan: crop, flip, jitter
@dataclass
class BatchPlan:
    """The `augment.SamplePlan` of N samples, stacked.

    ``crops`` int64 (N, 4) ltrb pixels of the source image (the whole image when not cropped),
    ``flips`` bool (N,), ``boxes`` float32 (N, M, 4) / ``labels`` int64 (N, M) padded targets
    after crop and flip (label 0 = padding), ``factors`` float32 (N, 4) / ``order`` int64 (N, 4)
    colour jitter (None when jitter is off).
    """

    crops: np.ndarray
    flips: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    factors: np.ndarray | None
    order: np.ndarray | None


def stack_plans(plans: list[SamplePlan], max_objects: int) -> BatchPlan:
    """Stack per-sample plans; targets padded (or cut) to ``max_objects``; jitter None unless all have it."""
    n = len(plans)
    boxes, labels = pad_targets([p.boxes for p in plans], [p.labels for p in plans], max_objects)
    crops = np.array([p.crop for p in plans], dtype=np.int64).reshape(n, 4)
    flips = np.array([p.flip for p in plans], dtype=bool).reshape(n)
    if any(p.factors is None for p in plans):
        return BatchPlan(crops, flips, boxes, labels, None, None)
    factors = np.array([p.factors for p in plans], dtype=np.float32).reshape(n, 4)
    order = np.array([p.order for p in plans], dtype=np.int64).reshape(n, 4)
    return BatchPlan(crops, flips, boxes, labels, factors, order)


# ---------------------------------------------------------------- batched crop + flip + resize
def axis_weights(start: torch.Tensor, stop: torch.Tensor, flip: torch.Tensor, out_size: int,
                 in_size: int) -> torch.Tensor:
    """Pillow-bilinear resampling matrices for one axis of a batch: (N, out_size, in_size) float64.

    ``start``/``stop`` (N,) float: the crop's pixel range [start, stop) along the axis;
    ``flip`` (N,) bool reverses the output order. Pillow (Resample.c): scale = length / out,
    filterscale = max(scale, 1), output j samples centre (j + 0.5) * scale of the crop with the
    triangle 1 - |(x + 0.5 - centre) / filterscale| (x = source pixel), weights normalised to sum
    1 over the pixels inside the crop. Pillow reads only the window where the triangle is
    non-zero, so the dense formula gives exactly its weights. Computed in float64 as Pillow does
    (float32 centres move the 22-bit fixed-point weights by one unit and flip roundings).
    """
    device = start.device
    start, stop = start.double(), stop.double()
    length = (stop - start).view(-1, 1, 1)
    scale = length / out_size
    j = torch.arange(out_size, device=device, dtype=torch.float64).view(1, -1, 1)
    j = torch.where(flip.view(-1, 1, 1), out_size - 1 - j, j)
    centre = (j + 0.5) * scale  # crop-local coordinates
    x = torch.arange(in_size, device=device, dtype=torch.float64).view(1, 1, -1) - start.view(-1, 1, 1)
    w = (1 - ((x + 0.5 - centre) / scale.clamp(min=1.0)).abs()).clamp_(min=0)
    w = w * ((x >= 0) & (x < length))
    return w / w.sum(dim=2, keepdim=True).clamp(min=1e-12)


def pad_batch(images: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """uint8 (3, H_i, W_i) images -> ``dtype`` (N, 3, max H, max W), zero padded (weights ignore it)."""
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    canvas = torch.zeros((len(images), 3, h, w), dtype=dtype, device=images[0].device)
    for i, im in enumerate(images):
        canvas[i, :, : im.shape[1], : im.shape[2]] = im
    return canvas


def _round_pixels(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round half up to an integer grey level in 0..255 (Pillow's clip8 after each pass)."""
    return torch.floor(x.float() + 0.5).clamp_(0, 255).to(dtype)


def crop_resize(canvas: torch.Tensor, crops: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Crop, flip and resize a padded batch to float32 (N, 3, size, size), integers in 0..255.

    ``canvas`` (N, 3, H, W) float 0..255 (float16 is exact for integers and halves the matmul
    cost on a GPU), ``crops`` (N, 4) float ltrb pixels, ``flips`` (N,) bool, on one device.
    Horizontal pass first, then vertical, each rounded half up to an integer, with Pillow's
    fixed-point weights. Pillow 13 sometimes runs the vertical pass first (its rule is not
    documented), so single grey levels differ on some pixels; see tests/test_gpu_pipeline.py.
    """
    _, _, h, w = canvas.shape
    wx = _fixed_point(axis_weights(crops[:, 0], crops[:, 2], flips, size, w)).to(canvas.dtype)  # (N, S, W)
    wy = _fixed_point(axis_weights(crops[:, 1], crops[:, 3], torch.zeros_like(flips), size, h)).to(canvas.dtype)
    rows = _round_pixels(torch.matmul(canvas, wx.transpose(1, 2).unsqueeze(1)), canvas.dtype)  # (N, 3, H, S)
    return _round_pixels(torch.matmul(wy.unsqueeze(1), rows), torch.float32)  # (N, 3, S, S)


def _fixed_point(weights: torch.Tensor) -> torch.Tensor:
    """Quantise weights to Pillow's 22-bit fixed point (PRECISION_BITS = 32 - 8 - 2), rounded half
    away from zero; exact in float32 (values k / 2^22 with k <= 2^22)."""
    scale = float(1 << 22)
    return torch.floor(weights * scale + 0.5) / scale


# ---------------------------------------------------------------- the pipeline
class DevicePipeline:
    """Byte samples (from `build_byte_loader`) -> a device batch (module docstring).

    ``inputs`` (default `InputSettings()`): input size S, targets kept (M), crop tries and the
    seed of ``inputs.shard`` (the values the CPU loader gets). ``train=True``: SSD crop
    (``inputs.max_samples`` tries, benchmark.md §5), flip with ``flip_p``, resize, colour jitter
    (``jitter``), normalise.
    ``train=False``: resize + normalise (eval, benchmark.md §5). ``encoder``: optional
    `model.encoder.Encoder` to add encoded targets. ``resize_dtype``: matmul dtype of the resize
    (default float16 on CUDA, float32 elsewhere).
    """

    def __init__(self, inputs: InputSettings | None = None, device="cpu", train: bool = True,
                 flip_p: float = 0.5, jitter: bool = True, encoder=None, resize_dtype: torch.dtype | None = None):
        inputs = InputSettings() if inputs is None else inputs
        max_samples = int(inputs.max_samples)
        self.augment = AugmentSettings(max_samples, flip_p, jitter and train)
        self.size, self.device, self.train = int(inputs.size), torch.device(device), train
        self.seed, self.max_objects = int(inputs.shard.seed), int(inputs.max_objects)
        self.max_samples, self.flip_p = max_samples, flip_p
        self.jitter, self.encoder = jitter and train, encoder
        cuda = self.device.type == "cuda"
        self.resize_dtype = resize_dtype or (torch.float16 if cuda else torch.float32)

    def plan_one(self, sample: dict) -> SamplePlan:
        """The sample's plan: drawn from its `augment.sample_rng` when training, else the identity."""
        h, w = sample["orig_size"]
        if not self.train:
            return identity_plan(sample["boxes"], sample["labels"], h, w)
        rng = sample_rng(self.seed, *sample["key"])
        return plan_sample(sample["boxes"], sample["labels"], h, w, rng, self.augment)

    def plan(self, samples: list[dict]) -> BatchPlan:
        """Host decisions for the batch, drawn per sample exactly as the CPU loader draws them."""
        return stack_plans([self.plan_one(s) for s in samples], self.max_objects)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return to_device(torch.from_numpy(np.ascontiguousarray(array)), self.device)

    def pixels(self, samples: list[dict], plan: BatchPlan) -> torch.Tensor:
        """Decode + crop + flip + resize -> float32 (N, 3, S, S) in 0..255 (integers)."""
        images = decode_batch([s["data"] for s in samples], self.device)
        for s, im in zip(samples, images):
            if tuple(im.shape[1:]) != tuple(s["orig_size"]):
                # Boxes are in the annotated size (as CocoDetection.read_image checks).
                raise ValueError(f"image {s['image_id']} decodes to {tuple(im.shape[1:])}, "
                                 f"annotation says {tuple(s['orig_size'])} (HxW)")
        canvas = pad_batch(images, self.resize_dtype)
        crops = self._to_device(plan.crops.astype(np.float32))
        flips = self._to_device(plan.flips)
        return crop_resize(canvas, crops, flips, self.size)

    def __call__(self, samples: list[dict]) -> dict:
        if not samples:
            raise ValueError("empty batch: every sample of the batch was unreadable")
        plan = self.plan(samples)
        x = self.pixels(samples, plan).div_(255.0)
        batch = {
            "images": jitter_normalize(x, plan.factors, plan.order),
            "boxes": self._to_device(plan.boxes),
            "labels": self._to_device(plan.labels),
            **batch_info(samples),
        }
        if self.encoder is not None:
            batch["loc_targets"], batch["box_labels"] = self.encoder(batch["boxes"], batch["labels"])
        return batch


def device_batches(loader, pipeline: DevicePipeline):
    """Iterate device batches; on CUDA the next batch is prepared on a side stream meanwhile.

    The side stream overlaps decode/resize of batch i+1 with the consumer's work on batch i: the
    consumer's stream waits on batch i's own event (no host sync, and not on batch i+1's work),
    and batch i's tensors are marked as used by the consumer's stream.
    """
    if pipeline.device.type != "cuda":
        yield from (pipeline(samples) for samples in loader)
        return
    side = torch.cuda.Stream(device=pipeline.device)
    pending = None
    for samples in loader:
        with torch.cuda.stream(side):
            batch = pipeline(samples)
            ready = torch.cuda.Event()
            ready.record(side)
        if pending is not None:
            yield _handoff(*pending)
        pending = (batch, ready)
    if pending is not None:
        yield _handoff(*pending)


def _handoff(batch: dict, ready: torch.cuda.Event) -> dict:
    current = torch.cuda.current_stream()
    current.wait_event(ready)
    for value in batch.values():
        if value.is_cuda:
            value.record_stream(current)
    return batch


@functools.lru_cache(maxsize=1)
def describe_decoder() -> str:
    """"nvjpeg (torchvision)" when GPU decode is possible here, else the CPU fallback's name."""
    return "nvjpeg (torchvision)" if gpu_decode_available("cuda") else "cpu (ssdbench.data.decode)"
