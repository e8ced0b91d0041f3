"""The embedded synthetic COCO-format dataset: shapes on cluttered backgrounds.

``make_synthetic_coco(out)`` writes the COCO 2017 layout (``annotations/instances_*2017.json``,
``train2017/``, ``val2017/``) with JPEGs of COCO-like sizes. Nine classes with sparse category
ids (like COCO's 1..90), told apart by shape and by colour/texture; each varies in scale
(COCO small, medium and large), aspect, rotation and colour. Backgrounds carry gradients, noise
and distractor strokes; objects occlude each other. Some images are crowded and contain
``iscrowd`` regions (a tight cluster of tiny objects annotated by one box, as COCO does); some
are empty (no annotation; the reader drops them, as it drops COCO's).

Boxes are the visible extent of each object (pixels not covered by later objects), ``area`` its
visible pixel count. Output is deterministic: every image draws from its own generator seeded
by (seed, split, index), so files and JSON are byte-identical for a seed at any worker count.

``default_dataset()`` generates the dataset once into ``$SSDBENCH_CACHE/synth-v1``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from ssdbench.data import scene, shapes
from ssdbench.data.pool import pool_map, process_pool
from ssdbench.io import cache_dir
from ssdbench.progress import Progress

VERSION = "synth-v1"  # bump when the generator's output changes (cache folder name)
DEFAULT_TRAIN, DEFAULT_VAL = 2000, 250
SPLIT_CODE = {"train": 0, "val": 1}
VAL_ID_OFFSET = 500_000  # image ids are unique across splits, as in COCO
# (width, height) of common COCO images
SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (640, 360), (427, 640), (612, 612), (640, 512)]
JPEG_QUALITY = 90


def image_id_of(split: str, index: int) -> int:
    """Image id of sample ``index`` of ``split`` (train 1.., val 500001..)."""
    return index + 1 + (VAL_ID_OFFSET if split == "val" else 0)


def _render_one(job: tuple[str, Path, int, int]) -> tuple[dict, list[dict]]:
    """Draw, encode and write one image; returns (image dict, annotation dicts without ids)."""
    split, folder, index, seed = job
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
    width, height = SIZES[rng.integers(len(SIZES))]
    canvas, anns = scene.draw_scene(rng, width, height, scene.scene_kind(index))
    image_id = image_id_of(split, index)
    file_name = f"{image_id:012d}.jpg"  # COCO's naming
    canvas.save(folder / file_name, format="JPEG", quality=JPEG_QUALITY)
    for ann in anns:
        ann["image_id"] = image_id
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}, anns


def _coco_json(split: str, images: list[dict], anns: list[dict]) -> dict:
    """The annotation file's content; annotation ids numbered 1.. in image order."""
    annotations = []
    for ann_id, ann in enumerate(anns, start=1):
        x, y, w, h = ann["bbox"]
        annotations.append({
            "id": ann_id, "image_id": ann["image_id"], "category_id": ann["category_id"],
            "bbox": [x, y, w, h], "area": ann["area"], "iscrowd": ann["iscrowd"],
            # Rectangle polygon: tools that insist on a segmentation field get one.
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        })
    return {
        "info": {"description": f"ssdbench synthetic COCO ({VERSION}, {split})", "version": VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": shapes.categories(),
    }


def _render_split(split, folder, count, seed, pool, progress) -> dict:
    jobs = [(split, folder, i, seed) for i in range(count)]
    images, anns = [], []
    with Progress(count, f"synth {split}", unit="img", enabled=progress, stream=sys.stderr) as bar:
        for image, image_anns in bar.iterate(pool_map(pool, _render_one, jobs, chunksize=8)):
            images.append(image)
            anns.extend(image_anns)
    return _coco_json(split, images, anns)


def _write_dataset(tmp: Path, splits: dict[str, int], seed: int, workers: int, progress: bool):
    (tmp / "annotations").mkdir(parents=True)
    with process_pool(workers) as pool:
        for split, count in splits.items():
            folder = tmp / f"{split}2017"
            folder.mkdir()
            data = _render_split(split, folder, count, seed, pool, progress)
            with open(tmp / "annotations" / f"instances_{split}2017.json", "w") as f:
                json.dump(data, f, separators=(",", ":"))
    meta = {"version": VERSION, "seed": seed, **{f"{s}_images": n for s, n in splits.items()}}
    (tmp / "ssdbench_synth.json").write_text(json.dumps(meta, indent=1) + "\n")


def make_synthetic_coco(out: str | Path, train_images: int = DEFAULT_TRAIN,
                        val_images: int = DEFAULT_VAL, seed: int = 0, workers: int | None = None,
                        progress: bool = True) -> Path:
    """Generate the synthetic dataset into ``out`` (must not exist or be empty); return its path.

    Built in a temporary sibling folder and renamed into place, so ``out`` is either absent or
    complete. Raises FileExistsError when ``out`` already holds files (a racing process that
    finished first, or a user's folder).
    """
    out = Path(out)
    if train_images < 0 or val_images < 0:
        raise ValueError(f"image counts must be >= 0, got train={train_images} val={val_images}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output folder {out} exists and is not empty")
    workers = workers or min(os.cpu_count() or 1, 8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private (0700); the dataset is shared like any folder
    try:
        _write_dataset(tmp, {"train": train_images, "val": val_images}, seed, workers, progress)
        if out.exists():
            out.rmdir()  # empty (checked above); rename cannot replace a folder otherwise
        os.rename(tmp, out)  # atomic on one filesystem
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"output folder {out} was created meanwhile") from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def default_dataset(progress: bool = True) -> Path:
    """Path of the embedded dataset, generated on first use into ``io.cache_dir("synth-v1")``.

    Safe when several processes race: each builds in its own temporary folder and the first
    rename wins; the others discard their copy and use the winner's.
    """
    path = cache_dir(VERSION)
    if (path / "ssdbench_synth.json").is_file():
        return path
    try:
        make_synthetic_coco(path, DEFAULT_TRAIN, DEFAULT_VAL, progress=progress)
    except FileExistsError:
        if not (path / "ssdbench_synth.json").is_file():
            raise FileExistsError(f"{path} exists but is not a complete synthetic dataset; "
                                  "remove it to regenerate") from None
    return path
