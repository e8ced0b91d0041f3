"""Input-pipeline and COCO-eval benchmark.

1. Per JPEG decoder: images/s on one core (torch and BLAS held to one thread) for each stage of
   the SSD300 training pipeline on COCO-size synthetic JPEGs: decode (bytes in memory), geometric
   augmentation (crop, resize, flip), colour jitter + normalise, and the whole loader
   (file read + decode + augmentation + padded collate, no workers), with the jitter done per
   sample or deferred (uint8 batches, jitter then runs batched on the device).
2. COCO evaluation time of 5,000 images x 100 detections with each backend
   (faster-coco-eval vs pycocotools).

    python benchmarks/data.py                      # full run, JSON in benchmarks/out/
    python benchmarks/data.py --images 50 --repeats 2 --eval-images 500   # quick look

Prints a table and writes ``data.json`` to --out. Medians over --repeats after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # "per core": keep every library on one thread

import numpy as np
import torch
from tqdm import tqdm

from ssdbench.data.coco import CocoDetection
from ssdbench.data.decode import available_decoders, decode_image
from ssdbench.data.jitter import jitter_and_normalize
from ssdbench.data.loader import InputSettings, WorkerOptions, build_loader
from ssdbench.data.synth import make_synthetic_coco
from ssdbench.data.transforms import TrainTransform, to_chw


def median_rate(fn, count: int, repeats: int) -> dict:
    """Items/s of ``fn()`` (which processes ``count`` items), medians of repeats after a warm-up.

    ``cpu``: per CPU-second of this process (= per core with one thread; robust when other
    processes share the cores); ``wall``: per wall-clock second.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"cpu": count / statistics.median(cpu), "wall": count / statistics.median(wall)}


def turbojpeg_decoder():
    """A decode function for PyTurboJPEG when installed, else None."""
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG
    except ImportError:
        return None
    jpeg = TurboJPEG()
    return lambda data: jpeg.decode(data, pixel_format=TJPF_RGB)


def pipeline_rates(root: Path, decoder: str, batch: int, repeats: int) -> dict:
    """Images/s of each training-pipeline stage with one decoder."""
    data = CocoDetection(root, "train", decoder=decoder)
    blobs = [data.image_path(i).read_bytes() for i in range(len(data))]
    targets = [data.load(i)[1] for i in range(len(data))]
    images = [decode_image(b, decoder) for b in blobs]
    geo = TrainTransform(300, max_samples=1, defer_jitter=True)
    rng = np.random.default_rng(0)
    small = [to_chw(geo.geometric(im, t["boxes"], t["labels"], rng)[0]) for im, t in zip(images, targets)]
    n = len(data)
    rates = {
        "decode": median_rate(lambda: [decode_image(b, decoder) for b in blobs], n, repeats),
        "crop_resize_flip": median_rate(
            lambda: [geo.geometric(im, t["boxes"], t["labels"], rng) for im, t in zip(images, targets)],
            n, repeats,
        ),
        "jitter_normalize_per_image": median_rate(
            lambda: [jitter_and_normalize(x[None], rng) for x in small], n, repeats
        ),
    }
    for name, defer in (("loader_full", False), ("loader_deferred_jitter", True)):
        batch = min(batch, n)
        loader = build_loader(data, batch, train=True, inputs=InputSettings(300), workers=0,
                              options=WorkerOptions(defer_jitter=defer, pin_memory=False))
        count = len(loader) * batch
        rates[name] = median_rate(lambda loader=loader: [None for _ in loader], count, repeats)
    return rates


def decode_only_rate(root: Path, decode, repeats: int) -> float:
    data = CocoDetection(root, "train")
    blobs = [data.image_path(i).read_bytes() for i in range(len(data))]
    return median_rate(lambda: [decode(b) for b in blobs], len(blobs), repeats)


def synthetic_eval_set(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """COCO-like ground truth (~7 objects/image, 80 sparse categories, 640x480) and detections
    (noisy copies of the ground truth plus random boxes, ``dets_per_image`` per image)."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(rng.choice(np.arange(1, 91), 80, replace=False).tolist())
    images, anns, dets = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id:012d}.jpg"})
        k = int(rng.integers(1, 15))
        xy = rng.uniform(0, [560, 400], (k, 2))
        wh = rng.uniform(8, 200, (k, 2)).clip(None, np.array([640, 480]) - xy)
        cats = rng.choice(cat_ids, k)
        for box, cat in zip(np.concatenate([xy, wh], 1), cats):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(cat), "iscrowd": 0,
                         "bbox": [round(float(v), 2) for v in box], "area": float(box[2] * box[3])})
        src = rng.integers(0, k, dets_per_image)
        noisy = np.concatenate([xy, wh], 1)[src] * rng.normal(1, 0.1, (dets_per_image, 4))
        random_cat = rng.random(dets_per_image) < 0.5
        det_cats = np.where(random_cat, rng.choice(cat_ids, dets_per_image), cats[src])
        for box, cat, score in zip(noisy, det_cats, rng.random(dets_per_image)):
            dets.append({"image_id": image_id, "category_id": int(cat), "score": float(score),
                         "bbox": [round(float(v), 2) for v in box.clip(0.5)]})
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in cat_ids]}
    return gt, dets


def eval_times(num_images: int, dets_per_image: int, repeats: int) -> dict:
    """Seconds per COCO evaluation (load results + evaluate + accumulate + summarize), per backend."""
    from ssdbench.eval.coco_scoring import coco_stats

    gt, dets = synthetic_eval_set(num_images, dets_per_image)
    out = {}
    for backend in ("faster", "pycocotools"):
        wall, cpu, stats = [], [], None
        for _ in tqdm(range(repeats), desc=f"eval {backend}", leave=False):
            w0, c0 = time.perf_counter(), time.process_time()
            stats = coco_stats(gt, dets, backend=backend)
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        out[backend] = {"seconds": statistics.median(wall), "cpu_seconds": statistics.median(cpu),
                        "repeats": repeats, "AP": float(stats[0])}
    return out


def dataset_root(out: Path, images: int) -> Path:
    root = out / f"synth_{images}"
    if not (root / "annotations" / "instances_train2017.json").is_file():
        make_synthetic_coco(root, train_images=images, val_images=0, seed=0)
    return root


def print_table(result: dict) -> None:
    if result["pipeline"]:
        print_pipeline(result)
    if "eval" in result:
        print_eval(result)


def print_pipeline(result: dict) -> None:
    stages = list(next(iter(result["pipeline"].values())))
    decoders = list(result["pipeline"])
    args = result["args"]
    print(f"\nimages/s per core: per CPU-second (per wall second), median of {args['repeats']}; "
          f"{args['images']} synthetic COCO-size JPEGs, {result['mean_pixels'] / 1e3:.0f} kpixel mean")
    print(f"{'stage':<28}" + "".join(f"{d:>22}" for d in decoders))
    cell = lambda r: f"{r['cpu']:.1f} ({r['wall']:.1f})"
    for stage in stages:
        print(f"{stage:<28}" + "".join(f"{cell(result['pipeline'][d][stage]):>22}" for d in decoders))
    for name, rate in result.get("decode_only", {}).items():
        print(f"{'decode (' + name + ')':<28}{cell(rate):>22}")


def print_eval(result: dict) -> None:
    ev = result["eval"]
    print(f"\nCOCO eval, {result['args']['eval_images']} images x {result['args']['dets']} detections")
    for backend, row in ev.items():
        print(f"{backend:<14}{row['cpu_seconds']:>8.2f} CPU s {row['seconds']:>8.2f} wall s"
              f"   (AP {row['AP']:.4f}, median of {row['repeats']})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"), help="folder for data.json")
    parser.add_argument("--images", type=int, default=200, help="synthetic training JPEGs")
    parser.add_argument("--batch", type=int, default=32, help="loader batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median)")
    parser.add_argument("--eval-images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--eval-repeats", type=int, default=1)
    parser.add_argument("--only", choices=("pipeline", "eval"), help="run one half of the benchmark")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    root = dataset_root(args.out, args.images)
    data = CocoDetection(root, "train")
    sizes = [data.image_info(i)["width"] * data.image_info(i)["height"] for i in range(len(data))]
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "torch": torch.__version__, "cpu_count": os.cpu_count()},
              "mean_pixels": float(np.mean(sizes)), "pipeline": {}, "decode_only": {}}
    if args.only != "eval":
        for decoder in tqdm(available_decoders(), desc="decoders"):
            result["pipeline"][decoder] = pipeline_rates(root, decoder, args.batch, args.repeats)
        turbo = turbojpeg_decoder()
        if turbo is not None:
            result["decode_only"]["turbojpeg"] = decode_only_rate(root, turbo, args.repeats)
    if args.only != "pipeline":
        result["eval"] = eval_times(args.eval_images, args.dets, args.eval_repeats)
    print_table(result)
    path = args.out / ("data.json" if args.only is None else f"data_{args.only}.json")
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
