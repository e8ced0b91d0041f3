"""Device input pipeline (CPU fallback here): equal to the CPU loader, boxes on the pixels, seeded."""

import numpy as np
import pytest
import torch
from data_fixtures import write_coco
from PIL import Image

from ssdbench.data.coco import CocoDetection
from ssdbench.data.gpu_pipeline import (
    DevicePipeline,
    JpegBytesDataset,
    build_byte_loader,
    crop_resize,
    pad_batch,
)
from ssdbench.data.jitter import MEAN, STD
from ssdbench.data.loader import InputSettings, Shard, build_loader
from ssdbench.data.transforms import hflip, resize_uint8
from ssdbench.model.encoder import Encoder

LEVEL = 1 / 255 / min(STD)  # one grey level in normalised units (~0.0174)


def _images(rng, shapes):
    """Smooth and noisy uint8 (H, W, 3) images: noise is the hardest case for a resize."""
    out = []
    for k, (h, w) in enumerate(shapes):
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append(noise if k % 2 else np.asarray(Image.fromarray(noise[::4, ::4]).resize((w, h))))
    return out


def test_batched_crop_flip_resize_matches_pillow_per_sample():
    """Tolerance: |diff| <= 1 grey level everywhere and on < 30% of the values (Pillow 13
    sometimes runs its two passes in the other order, which moves some roundings by one)."""
    rng = np.random.default_rng(0)
    shapes = [(48, 64), (100, 37), (64, 64), (30, 25), (90, 120), (33, 70)]
    crops = np.array([[0, 0, 64, 48], [3, 10, 30, 90], [0, 0, 64, 64], [2, 3, 20, 28], [10, 5, 110, 60],
                      [0, 0, 70, 33]])
    flips = np.array([False, True, True, False, True, False])
    images = _images(rng, shapes)
    size = 40  # upscaling and downscaling crops
    canvas = pad_batch([torch.from_numpy(im.copy()).permute(2, 0, 1) for im in images], torch.float32)
    out = crop_resize(canvas, torch.tensor(crops, dtype=torch.float32), torch.tensor(flips), size)
    diffs = []
    for k, (im, (l, t, r, b), flip) in enumerate(zip(images, crops, flips)):
        ref = resize_uint8(im[t:b, l:r], size)
        ref = hflip(ref, np.zeros((0, 4)))[0] if flip else ref
        diffs.append(out[k].permute(1, 2, 0).numpy() - ref)
    diffs = np.stack(diffs)
    assert np.abs(diffs).max() <= 1 and (diffs != 0).mean() < 0.3
    assert np.abs(diffs).mean() < 0.2


def _painted_dataset(root, n=6, size=(72, 96)):
    """PNG images (lossless) with one white rectangle on black, annotated by its exact box."""
    rng = np.random.default_rng(2)
    h, w = size
    images, anns = [], []
    for k in range(n):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 30))
        bw, bh = int(rng.integers(15, 40)), int(rng.integers(12, 30))
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[y0:y0 + bh, x0:x0 + bw] = 255
        (root / "train2017").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "train2017" / f"{k}.png")
        images.append({"id": k + 1, "file_name": f"{k}.png", "width": w, "height": h})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [x0, y0, bw, bh],
                     "area": bw * bh, "iscrowd": 0})
    write_coco(root, "train", images, anns, [{"id": 1, "name": "box"}], write_images=False)
    return CocoDetection(root, "train")


@pytest.mark.parametrize("train", [True, False])
def test_boxes_land_on_the_painted_pixels(tmp_path, train):
    data = _painted_dataset(tmp_path)
    size = 64
    inputs = InputSettings(size, max_objects=4, max_samples=50, shard=Shard(seed=3))
    pipe = DevicePipeline(inputs, train=train, jitter=False)
    loader = build_byte_loader(data, batch_size=3, train=train, inputs=inputs, workers=0)
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        for samples in loader:
            batch = pipe(samples)
            grey = (batch["images"] * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1))
            for img, box, label in zip(grey.mean(1), batch["boxes"], batch["labels"]):
                assert label[0] == 1 and (label[1:] == 0).all()
                ys, xs = torch.nonzero(img > 0.5, as_tuple=True)  # the painted rectangle after resize
                found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
                assert torch.allclose(found, box[0] * size, atol=1.5), (found, box[0] * size)


def test_equals_the_cpu_loader_batch_for_batch(tmp_path):
    images = [{"id": k + 1, "file_name": f"{k}.jpg", "width": w, "height": h}
              for k, (w, h) in enumerate([(64, 48), (40, 56), (80, 60), (48, 48), (50, 70), (64, 40)])]
    anns = [{"id": k + 1, "image_id": k % 6 + 1, "category_id": 1 + k % 2,
             "bbox": [2 + k % 5, 3 + k % 4, 15 + k % 7, 12 + k % 9], "area": 100, "iscrowd": 0} for k in range(12)]
    data = CocoDetection(write_coco(tmp_path, "train", images, anns, [{"id": 1}, {"id": 2}]), "train")
    kwargs = {"batch_size": 3, "train": True, "workers": 0,
              "inputs": InputSettings(48, max_objects=8, max_samples=50, shard=Shard(seed=5))}
    cpu = build_loader(data, **kwargs)
    dev = build_byte_loader(data, **kwargs)
    pipe = DevicePipeline(kwargs["inputs"], train=True, encoder=Encoder("ssd128_mini"))
    for epoch in range(2):
        cpu.sampler.set_epoch(epoch)
        dev.sampler.set_epoch(epoch)
        for a, samples in zip(cpu, dev):
            b = pipe(samples)
            assert torch.equal(a["image_ids"], b["image_ids"]) and torch.equal(a["labels"], b["labels"])
            assert torch.equal(a["orig_sizes"], b["orig_sizes"])
            assert torch.allclose(a["boxes"], b["boxes"], atol=1e-6)
            diff = (a["images"] - b["images"]).abs()  # resize roundings (+-1 level) through the jitter
            assert diff.mean() < 0.5 * LEVEL and diff.max() < 6 * LEVEL, (diff.mean(), diff.max())
            loc, lab = Encoder("ssd128_mini")(a["boxes"], a["labels"])
            assert torch.equal(b["box_labels"], lab) and torch.allclose(b["loc_targets"], loc, atol=1e-4)


def test_seeded_and_epoch_dependent(tmp_path):
    data = _painted_dataset(tmp_path, n=3)
    samples = [JpegBytesDataset(data)[(0, i)] for i in range(3)]
    inputs = InputSettings(32, shard=Shard(seed=1))
    a = DevicePipeline(inputs)(samples)
    b = DevicePipeline(inputs)(samples)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    c = DevicePipeline(inputs)([JpegBytesDataset(data)[(1, i)] for i in range(3)])  # next epoch
    assert not torch.equal(a["images"], c["images"])


def test_bad_inputs_are_named(tmp_path):
    data = _painted_dataset(tmp_path, n=2)
    sample = JpegBytesDataset(data)[0]
    with pytest.raises(ValueError, match="cannot decode"):
        DevicePipeline(InputSettings(32))([{**sample, "data": sample["data"][:40]}])
    with pytest.raises(ValueError, match="image 1 decodes to"):
        DevicePipeline(InputSettings(32))([{**sample, "orig_size": (10, 10)}])
    with pytest.raises(ValueError, match="empty batch"):
        DevicePipeline(InputSettings(32))([])
    data.image_path(1).unlink()
    with pytest.warns(RuntimeWarning, match="image 2"):
        assert JpegBytesDataset(data)[1] is None
