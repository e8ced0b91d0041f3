"""Validate a COCO-format dataset: annotation files, ids, boxes and every image file.

``check_dataset(root)`` returns a ``CheckReport``: per split the counts, and per kind of problem
its count and the first offenders by id. Errors are problems that would break training or
evaluation or silently lose data (missing/corrupt files, unknown or duplicate ids, malformed
JSON); warnings are handled by the reader (degenerate boxes skipped, boxes clipped, grayscale /
CMYK / alpha images converted to RGB, JPEGs that libjpeg decodes with a warning).
"""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ssdbench.data.coco import annotation_path, read_annotations
from ssdbench.data.decode import ImageTooLargeError, check_image_size
from ssdbench.data.pool import pool_map, process_pool
from ssdbench.progress import Progress

FIRST_OFFENDERS = 5
BOX_TOLERANCE_PX = 1.0  # boxes may exceed the image by this much (rounding in real COCO files)
ERRORS = {"malformed_json", "missing_file", "unreadable_file", "corrupt_image", "image_too_large",
          "non_finite_box", "size_mismatch",
          "unknown_category", "unknown_image", "duplicate_image_id", "duplicate_annotation_id",
          "duplicate_category_id", "malformed_annotation", "duplicate_file_name"}
# everything else (degenerate_box, box_outside_image, grayscale, cmyk, alpha, palette, not_jpeg,
# jpeg_warning) is a warning


@dataclass
class Finding:
    split: str
    kind: str
    count: int = 0
    offenders: list[str] = field(default_factory=list)

    @property
    def is_error(self) -> bool:
        return self.kind in ERRORS


@dataclass
class CheckReport:
    root: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> name -> n
    findings: dict[tuple[str, str], Finding] = field(default_factory=dict)

    def add(self, split: str, kind: str, offender: str) -> None:
        finding = self.findings.setdefault((split, kind), Finding(split, kind))
        finding.count += 1
        if len(finding.offenders) < FIRST_OFFENDERS:
            finding.offenders.append(offender)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings.values() if f.is_error]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings.values() if not f.is_error]

    @property
    def ok(self) -> bool:
        return not self.errors

    def kinds(self, split: str | None = None) -> dict[str, int]:
        """{kind: count} of all findings (of one split when given)."""
        return {f.kind: f.count for f in self.findings.values() if split in (None, f.split)}

    def summary(self) -> str:
        """Readable multi-line summary."""
        lines = [f"dataset {self.root}"]
        for split, c in self.counts.items():
            lines.append(f"  {split}: " + ", ".join(f"{v} {k}" for k, v in c.items()))
        for title, group in (("errors", self.errors), ("warnings", self.warnings)):
            for f in group:
                more = ", ..." if f.count > len(f.offenders) else ""
                lines.append(f"  {title[:-1]} [{f.split}] {f.kind}: {f.count} "
                             f"(first: {'; '.join(f.offenders)}{more})")
        n_err, n_warn = sum(f.count for f in self.errors), sum(f.count for f in self.warnings)
        lines.append(f"{'FAILED' if n_err else 'OK'}: {n_err} error(s), {n_warn} warning(s)")
        return "\n".join(lines)


def inspect_image(path: str) -> list[tuple[str, str]]:
    """Problems of one image file as (kind, detail); also ("size", "WxH") when it decodes."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [("missing_file", "not found")]
    except OSError as exc:
        return [("unreadable_file", exc.strerror or str(exc))]
    try:
        check_image_size(data)  # from the header, before Pillow allocates the pixels
    except ImageTooLargeError as exc:
        return [("image_too_large", str(exc))]
    except ValueError as exc:
        return [("corrupt_image", str(exc))]
    try:
        with Image.open(io.BytesIO(data)) as img:
            mode, fmt = img.mode, img.format
            img.load()  # full decode: truncation raises here
            found = [("size", f"{img.width}x{img.height}")]
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt data
        return [("corrupt_image", str(exc) or type(exc).__name__)]
    found += _mode_findings(mode, fmt)
    if fmt == "JPEG":
        found += _libjpeg_warning(data)
    return found


def _mode_findings(mode: str, fmt: str | None) -> list[tuple[str, str]]:
    kinds = {"L": "grayscale", "1": "grayscale", "I;16": "grayscale", "LA": "alpha",
             "RGBA": "alpha", "CMYK": "cmyk", "P": "palette", "PA": "alpha"}
    found = [(kinds.get(mode, "unusual_mode"), f"mode {mode}")] if mode != "RGB" else []
    if fmt != "JPEG":
        found.append(("not_jpeg", f"format {fmt}"))
    return found


def _libjpeg_warning(data: bytes) -> list[tuple[str, str]]:
    """libjpeg's recoverable warnings (Pillow ignores them; the image still decodes)."""
    try:
        import simplejpeg
    except ImportError:
        return []
    try:
        if simplejpeg.decode_jpeg_header(data)[2] not in ("CMYK", "YCCK"):
            simplejpeg.decode_jpeg(data, strict=True)
    except ValueError as exc:
        return [("jpeg_warning", str(exc))]
    return []


def _check_ids(report: CheckReport, split: str, data: dict) -> dict[int, dict]:
    """Duplicate ids and dangling references; returns {image id: image dict}."""
    images: dict[int, dict] = {}
    for img in data["images"]:
        if img.get("id") in images:
            report.add(split, "duplicate_image_id", f"image {img.get('id')}")
        images[img.get("id")] = img
    by_file: dict = {}
    for img in data["images"]:  # one picture under two ids is trained on, or scored, twice
        by_file.setdefault(img.get("file_name"), []).append(img.get("id"))
    for name, ids in by_file.items():
        if len(ids) > 1:
            report.add(split, "duplicate_file_name", f"{name} (images {', '.join(map(str, ids))})")
    cats = [c.get("id") for c in data["categories"]]
    for cid in {c for c in cats if cats.count(c) > 1}:
        report.add(split, "duplicate_category_id", f"category {cid}")
    seen: set = set()
    for ann in data["annotations"]:
        aid = ann.get("id")
        if aid in seen:
            report.add(split, "duplicate_annotation_id", f"annotation {aid}")
        seen.add(aid)
        if ann.get("category_id") not in cats:
            report.add(split, "unknown_category", f"annotation {aid} (category {ann.get('category_id')})")
        if ann.get("image_id") not in images:
            report.add(split, "unknown_image", f"annotation {aid} (image {ann.get('image_id')})")
    return images


def _check_boxes(report: CheckReport, split: str, data: dict, images: dict[int, dict]) -> None:
    for ann in data["annotations"]:
        aid, box = ann.get("id"), ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            report.add(split, "malformed_annotation", f"annotation {aid} (bbox {box!r})")
            continue
        x, y, w, h = box
        if not all(math.isfinite(v) for v in box):  # NaN passes every `<=` test below
            report.add(split, "non_finite_box", f"annotation {aid} (bbox {box!r})")
            continue
        if w <= 0 or h <= 0:
            report.add(split, "degenerate_box", f"annotation {aid} (w={w}, h={h})")
            continue
        img = images.get(ann.get("image_id"))
        if img and (x < -BOX_TOLERANCE_PX or y < -BOX_TOLERANCE_PX
                    or x + w > img.get("width", 0) + BOX_TOLERANCE_PX
                    or y + h > img.get("height", 0) + BOX_TOLERANCE_PX):
            report.add(split, "box_outside_image",
                       f"annotation {aid} (bbox {box} in {img.get('width')}x{img.get('height')})")


def _check_files(report, split, root, images, workers, progress, decode) -> None:
    folder = Path(root) / f"{split}2017"
    ids = sorted(i for i in images if isinstance(i, int))
    paths = [str(folder / str(images[i].get("file_name", ""))) for i in ids]
    inspect = inspect_image if decode else _exists
    bar = Progress(len(ids), f"check {split}", unit="img", enabled=progress, stream=sys.stderr)
    with process_pool(workers if len(paths) > 64 else 1) as pool, bar:
        results = pool_map(pool, inspect, paths, chunksize=16)
        for image_id, path, found in bar.iterate(zip(ids, paths, results)):
            for kind, detail in found:
                _record_file(report, split, images[image_id], Path(path).name, kind, detail)


def _exists(path: str) -> list[tuple[str, str]]:
    return [] if Path(path).is_file() else [("missing_file", "not found")]


def _record_file(report, split, img, name, kind, detail) -> None:
    if kind == "size":
        if detail != f"{img.get('width')}x{img.get('height')}":
            kind, detail = "size_mismatch", f"file {detail}, annotation {img.get('width')}x{img.get('height')}"
        else:
            return
    report.add(split, kind, f"image {img.get('id')} ({name}: {detail})")


def check_split(report: CheckReport, root, split: str, workers: int = 1, progress: bool = True,
                decode: bool = True) -> None:
    """Add the findings and counts of one split to ``report``."""
    path = annotation_path(root, split)
    try:
        data = read_annotations(path)
    except FileNotFoundError:
        report.add(split, "missing_file", f"{path} (annotation file)")
        return
    except ValueError as exc:  # names the file
        report.add(split, "malformed_json", str(exc))
        return
    images = _check_ids(report, split, data)
    _check_boxes(report, split, data, images)
    annotated = {a.get("image_id") for a in data["annotations"]}
    report.counts[split] = {"images": len(data["images"]), "annotations": len(data["annotations"]),
                            "categories": len(data["categories"]),
                            "images with annotations": len(annotated & set(images))}
    _check_files(report, split, root, images, workers, progress, decode)


def check_dataset(root, splits=("train", "val"), workers: int = 1, progress: bool = True,
                  decode: bool = True) -> CheckReport:
    """Validate ``root`` (COCO 2017 layout) for ``splits``; ``decode=False`` only checks existence."""
    report = CheckReport(str(root))
    for split in splits:
        check_split(report, root, split, workers, progress, decode)
    return report
