"""COCO-format detection dataset reader (benchmark.md §5).

Layout (COCO 2017): ``root/annotations/instances_{split}2017.json`` and images in
``root/{split}2017/``. Any COCO-format dataset in that layout works, with its own categories.

Label mapping: category ids of the file (sparse, 1..90 on COCO) map to contiguous labels 1..K in
the order of the file's ``categories`` list; label 0 is background (docs/ARCHITECTURE.md).

Filtering, as the MLPerf training reference does: images without any annotation are dropped
(117,266 train and 4,952 val images remain on COCO 2017). ``all_images=True`` keeps instead every
image of the file's ``images`` list in file order, empty ones included (5,000 on COCO val 2017):
the sample order of MLPerf inference, whose accuracy script reads LoadGen's ``qsl_idx`` as an
index into that list (benchmark.md §7).

Crowd annotations (``iscrowd=1``) are ordinary targets by default, as in the MLPerf training
reference (mlcommons/training retired_benchmarks/ssd-v1/ssd/utils.py:545-550 appends every
annotation of an image, crowd or not). ``exclude_crowd=True`` is ssdbench's option (open
division): a crowd box covers a group of objects ("people in a stand"), so training on it teaches
the model a box that COCO eval never rewards (COCO eval reads crowd regions from the ground-truth
file and treats them as ignore regions). Either way an image whose annotations are all crowd
boxes is kept (it counts among the 117,266), with empty targets when they are excluded.

Boxes with non-positive width or height, and boxes with a NaN or infinite coordinate, are skipped
with one aggregated warning per kind naming the annotation ids; evaluation drops the same boxes
from the ground truth (`ssdbench.eval.coco_scoring`), so training and scoring see the same objects. An
unknown category id is an error (ValueError naming the annotation).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np

from ssdbench.data.decode import decode_image

_MAX_NAMED = 10  # offenders named in an aggregated warning


class BadSampleError(ValueError):
    """An image that cannot be loaded (missing, unreadable, corrupt, wrong size).

    Loaders catch it, skip the sample and warn with ``str(exc)``, which names the image id and
    path. ``args`` is (image_id, path, reason) so that it pickles across worker processes.
    """

    def __init__(self, image_id: int, path: str | Path, reason: str):
        super().__init__(image_id, str(path), reason)
        self.image_id, self.path, self.reason = image_id, str(path), reason

    def __str__(self) -> str:
        return f"bad sample: image {self.image_id} ({self.path}): {self.reason}"


def name_ids(ids: list) -> str:
    """The first `_MAX_NAMED` ids, comma-separated, and how many more: "3, 7 and 12 more"."""
    more = f" and {len(ids) - _MAX_NAMED} more" if len(ids) > _MAX_NAMED else ""
    return ", ".join(map(str, ids[:_MAX_NAMED])) + more


def finite_bbox(ann) -> bool:
    """False when the annotation's ``bbox`` holds a NaN or infinite number (JSON allows both);
    True otherwise, also for a malformed bbox (reported by the reader and by `data check`)."""
    try:
        return all(math.isfinite(float(v)) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        return True


def annotation_path(root: str | Path, split: str) -> Path:
    """``root/annotations/instances_{split}2017.json``."""
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def read_annotations(path: str | Path) -> dict:
    """The dict of a COCO annotation file, with lists images, annotations and categories: the one
    reader of these files (dataset, COCO scoring, `data check`). FileNotFoundError / ValueError
    (malformed) naming the file, one line each."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"annotation file {path} not found; expected the COCO 2017 layout "
            "ROOT/annotations/instances_{train,val}2017.json with images in ROOT/{train,val}2017/"
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed JSON in {path}: {exc}") from None
    kind = type(data).__name__  # a ValueError, the CLI's one-line error, also for a JSON list
    if kind != "dict":
        raise ValueError(f"{path} is not a COCO detection file: a JSON {kind}, not an object "
                         "with lists images, annotations, categories")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{path} is not a COCO detection file: missing list(s) {missing}")
    return data


def normalized_targets(boxes: np.ndarray, labels: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """ltrb pixel boxes (n, 4) of an h x w image -> ltrb normalised to [0, 1] and clipped; boxes
    wholly outside the image (empty after clipping) are dropped with their labels (n,)."""
    boxes = np.clip(boxes / np.array([w, h, w, h], np.float32), 0.0, 1.0)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], labels[keep]


def _outside(x: float, y: float, w: float, h: float, image: dict) -> bool:
    """True when the box has no pixel inside the image's annotated width and height."""
    try:
        width, height = float(image["width"]), float(image["height"])
    except (KeyError, TypeError, ValueError):
        return False  # no size to compare with (a malformed image entry is `data check`'s)
    return x >= width or y >= height or x + w <= 0 or y + h <= 0


def warn_shared_files(images: list[dict], source: str) -> list[str]:
    """Warn (and return them) about file names listed under more than one image id: the same
    picture would be trained on, or scored, twice."""
    seen: dict[str, list] = {}
    for img in images:
        seen.setdefault(str(img.get("file_name")), []).append(img.get("id"))
    shared = [f"{name} (ids {', '.join(map(str, ids))})" for name, ids in seen.items() if len(ids) > 1]
    if shared:
        warnings.warn(f"{source}: {len(shared)} image file(s) listed under several image ids: "
                      f"{name_ids(shared)}", stacklevel=3)
    return shared


class CocoDetection:
    """COCO detection split: per image, ltrb boxes and contiguous labels 1..K.

    Attributes: ``cat_ids`` (file's categories order), ``cat_names``, ``num_classes`` (K + 1,
    background included), ``label_to_cat_id`` {1..K: id}, ``cat_id_to_label``, ``ids`` (sorted
    ids of the images kept; with ``all_images``, every image id in file order), ``ann_file``,
    ``image_dir``. ``exclude_crowd``: leave crowd boxes out of the targets (module docstring).
    """

    def __init__(self, root: str | Path, split: str = "train", decoder: str = "auto", all_images: bool = False,
                 exclude_crowd: bool = False):
        self.root, self.split, self.decoder = Path(root), split, decoder
        self.exclude_crowd = bool(exclude_crowd)
        self.ann_file = annotation_path(root, split)
        self.image_dir = self.root / f"{split}2017"
        data = read_annotations(self.ann_file)
        self._init_categories(data["categories"])
        self._images = self._index_images(data["images"])
        self._boxes, self._labels = self._index_annotations(data["annotations"])
        self.ids = [img["id"] for img in data["images"]] if all_images else sorted(self._boxes)

    def _init_categories(self, categories: list[dict]) -> None:
        self.cat_ids = [int(c["id"]) for c in categories]
        if len(set(self.cat_ids)) != len(self.cat_ids):
            raise ValueError(f"{self.ann_file}: duplicate category ids in {self.cat_ids}")
        self.cat_names = [str(c.get("name", c["id"])) for c in categories]
        self.num_classes = len(self.cat_ids) + 1
        self.label_to_cat_id = {i + 1: cid for i, cid in enumerate(self.cat_ids)}
        self.cat_id_to_label = {cid: label for label, cid in self.label_to_cat_id.items()}

    def _index_images(self, images: list[dict]) -> dict[int, dict]:
        index: dict[int, dict] = {}
        for img in images:
            if img["id"] in index:
                raise ValueError(f"{self.ann_file}: duplicate image id {img['id']}")
            index[img["id"]] = img
        warn_shared_files(images, self.ann_file.name)
        return index

    def _index_annotations(self, anns: list[dict]) -> tuple[dict, dict]:
        """Per image id: boxes float32 (n, 4) ltrb pixels and labels int64 (n,) (crowd as asked)."""
        boxes: dict[int, list] = {}
        labels: dict[int, list] = {}
        degenerate, non_finite, outside = [], [], []
        for ann in anns:
            image_id = self._check_annotation(ann)
            boxes.setdefault(image_id, [])  # any annotation keeps the image (reference rule)
            labels.setdefault(image_id, [])
            x, y, w, h = self._bbox(ann)
            if not all(map(math.isfinite, (x, y, w, h))):  # before `w <= 0`, which NaN passes
                non_finite.append(ann.get("id"))
                continue
            if w <= 0 or h <= 0:
                degenerate.append(ann["id"])
                continue
            if _outside(x, y, w, h, self._images[image_id]):
                outside.append(ann.get("id"))  # kept here; `normalized_targets` drops it at load
            if self.exclude_crowd and ann.get("iscrowd", 0):
                continue  # ignore regions for COCO eval; targets only in the reference's rule (module doc)
            boxes[image_id].append((x, y, x + w, y + h))
            labels[image_id].append(self.cat_id_to_label[ann["category_id"]])
        for skipped, why in ((non_finite, "a NaN or infinite coordinate"), (degenerate, "non-positive width/height"),
                             (outside, "no pixel inside its image (wholly outside)")):  # fmt: skip
            if skipped:
                warnings.warn(f"{self.ann_file.name}: skipped {len(skipped)} box(es) with {why}: "
                              f"annotation ids {name_ids(skipped)}", stacklevel=3)
        as_boxes = {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in boxes.items()}
        as_labels = {k: np.asarray(v, np.int64).reshape(-1) for k, v in labels.items()}
        return as_boxes, as_labels

    def _bbox(self, ann: dict) -> tuple[float, float, float, float]:
        """COCO ``[x, y, w, h]`` in pixels; ValueError naming the annotation when malformed."""
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{self.ann_file.name}: annotation {ann.get('id')} has a malformed "
                             f"bbox {ann.get('bbox')!r} (run `ssdbench data check`)") from None
        return x, y, w, h

    def _check_annotation(self, ann: dict) -> int:
        """Validate ids of one annotation; return its image id."""
        if not isinstance(ann, dict) or "category_id" not in ann or "image_id" not in ann:
            raise ValueError(f"{self.ann_file.name}: malformed annotation {str(ann)[:80]}")
        if ann["category_id"] not in self.cat_id_to_label:
            raise ValueError(
                f"{self.ann_file.name}: annotation {ann.get('id')} has unknown category id "
                f"{ann['category_id']} (known: {self.cat_ids})"
            )
        if ann["image_id"] not in self._images:
            raise ValueError(
                f"{self.ann_file.name}: annotation {ann.get('id')} refers to unknown image id "
                f"{ann['image_id']}"
            )
        return ann["image_id"]

    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, i: int) -> dict:
        """The COCO image dict (id, file_name, width, height, ...) of sample ``i``."""
        return self._images[self.ids[i]]

    def image_path(self, i: int) -> Path:
        """Path of the image file of sample ``i``."""
        return self.image_dir / self.image_info(i)["file_name"]

    def annotations(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes float32 (n, 4) ltrb in pixels, unclipped; labels int64 (n,) in 1..K)."""
        image_id = self.ids[i]
        if image_id not in self._boxes:  # an image without annotations (``all_images``)
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        return self._boxes[image_id].copy(), self._labels[image_id].copy()

    def read_image(self, i: int) -> np.ndarray:
        """Decoded uint8 (H, W, 3) RGB image of sample ``i``; BadSampleError when it fails."""
        info, path = self.image_info(i), self.image_path(i)
        try:
            image = decode_image(path.read_bytes(), self.decoder)
        except FileNotFoundError:
            raise BadSampleError(info["id"], path, "file not found") from None
        except (OSError, ValueError) as exc:
            raise BadSampleError(info["id"], path, str(exc)) from None
        expected = (int(info["height"]), int(info["width"]))
        if image.shape[:2] != expected:
            # Boxes are in the annotated size: a different decoded size would misplace them.
            raise BadSampleError(
                info["id"], path, f"image is {image.shape[0]}x{image.shape[1]}, "
                f"annotation says {expected[0]}x{expected[1]} (HxW)"
            )
        return image

    def load(self, i: int) -> tuple[np.ndarray, dict]:
        """Image uint8 (H, W, 3) RGB and target dict.

        target: ``boxes`` float32 (n, 4) ltrb normalised to [0, 1] and clipped (boxes that lie
        wholly outside the image are dropped), ``labels`` int64 (n,), ``image_id`` int,
        ``orig_size`` (h, w). Raises BadSampleError for a missing or corrupt image.
        """
        image = self.read_image(i)
        h, w = image.shape[:2]
        boxes, labels = normalized_targets(*self.annotations(i), h, w)
        return image, {"boxes": boxes, "labels": labels, "image_id": int(self.ids[i]), "orig_size": (h, w)}

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict]:
        return self.load(i)

    def __repr__(self) -> str:
        return (f"CocoDetection({str(self.root)!r}, split={self.split!r}: {len(self)} images, "
                f"{self.num_classes - 1} classes)")
