"""Download COCO 2017, the torchvision ResNet34 backbone and the official SSD-Large files,
resumably, with integrity checks.

Sources (official addresses; ``base_url`` replaces the host for mirrors and tests):
- http://images.cocodataset.org/annotations/annotations_trainval2017.zip (≈241 MB)
- http://images.cocodataset.org/zips/val2017.zip (≈778 MB), .../zips/train2017.zip (≈18 GB)
- https://download.pytorch.org/models/resnet34-333f7ec4.pth (≈83 MB)
- ``--only ssd1200``: the MLPerf inference reference's SSD-Large files (benchmark.md §7; inference
  r2.0 ``vision/classification_and_detection/README.md``): zenodo record 3236545
  ``resnet34-ssd1200.pytorch`` (a pickled whole module) and record 3228411
  ``resnet34-ssd1200.onnx`` (80,363,696 bytes, sha256 ``b417a818...29ef0d`` as listed by
  OpenVINO's Open Model Zoo ``models/public/ssd-resnet34-1200-onnx/model.yml``). No checksum of
  the ``.pytorch`` file is published with it: it is checked against the size the server announces
  only (``--sha256 resnet34-ssd1200.pytorch=HEX`` adds one).
- ``--only ssd1200-tf``: MLPerf's TensorFlow SSD-ResNet34, zenodo record 3345892
  ``tf_ssd_resnet34_22.1.zip`` (extracted: ``tf_ssd_resnet34_22.1/resnet34_tf.22.1.pb``), and its
  tf2onnx conversion, record 4735664 ``ssd_resnet34_mAP_20.2.onnx``; checked against the announced
  size and the zip's CRCs (no checksum is published: ``--sha256 NAME=HEX`` adds one).

Each file is fetched into ``NAME.part``; an interrupted transfer resumes with an HTTP Range
request (retried automatically, and on the next run); a server that ignores Range restarts it
from zero. Integrity: the size announced by Content-Length; a known sha256 (the official ONNX file's, or
``--sha256 NAME=HEX`` for any item, archives included: checked before extracting); for archives
every member's CRC while extracting (zipfile); for ``.pth`` files the sha256 prefix in the file
name (torchvision's convention: ``resnet34-333f7ec4.pth`` has a sha256 starting with
``333f7ec4``). A corrupt file is deleted with an error that names it and both digests. A step
already done is checked again whenever a sha256 is known: the file is re-hashed, or, for an
archive, its digest recorded in the ``.done`` marker is compared. Archives extract into the standard layout (``annotations/``,
``train2017/``, ``val2017/``) through a temporary folder; finished steps are recorded in
``DEST/.ssdbench-download/`` so a second run skips them.

Tested against a local HTTP server (tests/test_data_download.py); the development and CI
machines cannot reach the official hosts, so a real COCO download has not been run there.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ssdbench.io import atomic_write_text
from ssdbench.progress import Progress

COCO_HOST = "http://images.cocodataset.org"
TORCH_HOST = "https://download.pytorch.org"
ZENODO_HOST = "https://zenodo.org"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Artifact:
    host: str
    path: str  # URL path below the host; its last part is the file name
    extract: bool  # a zip archive to unpack into the destination
    sha256: str | None = None  # the file's full sha256, checked after the download when known
    size: int | None = None  # its size in bytes, when known

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


ARTIFACTS = {
    "annotations": Artifact(COCO_HOST, "annotations/annotations_trainval2017.zip", True),
    "val": Artifact(COCO_HOST, "zips/val2017.zip", True),
    "train": Artifact(COCO_HOST, "zips/train2017.zip", True),
    "backbone": Artifact(TORCH_HOST, "models/resnet34-333f7ec4.pth", False),
    "ssd1200_pytorch": Artifact(ZENODO_HOST, "record/3236545/files/resnet34-ssd1200.pytorch", False),
    "ssd1200_onnx": Artifact(ZENODO_HOST, "record/3228411/files/resnet34-ssd1200.onnx", False,
                             sha256="b417a8186967f1e78670b0075aa72a10e5c7d1a6d5c08af9d13dc97f3d29ef0d",
                             size=80363696),
    # MLPerf's TensorFlow SSD-ResNet34 (the zip holds tf_ssd_resnet34_22.1/resnet34_tf.22.1.pb) and its
    # tf2onnx conversion; no checksum is published with either (docs/model_files.md)
    "ssd1200_tf": Artifact(ZENODO_HOST, "record/3345892/files/tf_ssd_resnet34_22.1.zip", True),
    "ssd1200_tf_onnx": Artifact(ZENODO_HOST, "record/4735664/files/ssd_resnet34_mAP_20.2.onnx", False),
}
GROUPS = {"ssd1200": ("ssd1200_pytorch", "ssd1200_onnx"), "ssd1200-tf": ("ssd1200_tf", "ssd1200_tf_onnx")}  # --only names that stand for several items
COCO_ITEMS = ("annotations", "val", "train", "backbone")  # the default of --only


class DownloadError(OSError):
    """A download that failed for good (HTTP error, retries exhausted)."""


def url_for(artifact: Artifact, base_url: str | None = None) -> str:
    return f"{(base_url or artifact.host).rstrip('/')}/{artifact.path}"


# --- one file -------------------------------------------------------------------------------
def _content_range_start(value: str | None) -> int | None:
    """Start offset of a ``Content-Range: bytes START-END/TOTAL`` header."""
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    return int(m.group(1)) if m else None


def _fetch_once(url: str, part: Path, progress: bool, timeout: float) -> int | None:
    """One GET into ``part``, resuming from its size; returns the expected total size or None."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # our partial file is no prefix the server knows: restart
            part.unlink()
            return _fetch_once(url, part, progress, timeout)
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    with resp:
        if not (start and resp.status == 206 and _content_range_start(resp.headers.get("Content-Range")) == start):
            start = 0  # server ignored the Range request (status 200): restart from zero
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "ab" if start else "wb") as f, Progress(
            total, part.name[:-5], unit="B", initial=start, enabled=progress, stream=sys.stderr,
            unit_scale=True,
        ) as bar:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(bar.done + len(chunk))
    return total


def download_file(url: str, dest: Path, retries: int = 5, retry_wait: float = 2.0,
                  progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming after interruptions."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            total = _fetch_once(url, part, progress, timeout)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
        else:
            size = part.stat().st_size
            if total is None or size == total:
                part.replace(dest)
                return dest
            if size > total:
                part.unlink()
                raise DownloadError(f"{url}: got {size} bytes, server announced {total}; deleted")
            reason = f"connection closed at {size} of {total} bytes"
        if attempt < retries:
            print(f"download {dest.name}: {reason}; resuming (attempt {attempt + 2}/{retries + 1})")
            time.sleep(retry_wait * (attempt + 1))
    raise DownloadError(f"{url}: incomplete after {retries + 1} attempts ({reason}); "
                        f"run again to resume from {part}")


# --- integrity and extraction ----------------------------------------------------------------
def sha256_prefix_of_name(name: str) -> str | None:
    """The hash prefix torchvision puts in file names (``resnet34-333f7ec4.pth`` -> 333f7ec4)."""
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$", name)
    return m.group(1) if m else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, sha256: str | None, size: int | None) -> str | None:
    """ValueError (after deleting the file) when its size or sha256 differs from the known ones;
    returns the file's sha256 when one was known (and so computed), else None."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        path.unlink()
        raise ValueError(f"{path} is corrupt: {actual} bytes, expected {size}; deleted it, run again "
                         "to download it anew")
    if sha256 is None:
        return None
    if (digest := file_sha256(path)) != sha256.lower():
        path.unlink()
        raise ValueError(f"{path} is corrupt: sha256 {digest} is not the expected {sha256.lower()}; "
                         "deleted it, run again to download it anew")
    return digest


def verify_sha256_prefix(path: Path) -> None:
    """ValueError (after deleting the file) when its sha256 does not start with the name's prefix."""
    prefix = sha256_prefix_of_name(path.name)
    if prefix is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if not digest.hexdigest().startswith(prefix):
        path.unlink()
        raise ValueError(f"{path} is corrupt: sha256 {digest.hexdigest()[:16]}... does not start "
                         f"with {prefix}; deleted it, run again to download it anew")


def extract_zip(archive: Path, dest: Path, progress: bool = True) -> None:
    """Unpack ``archive`` into ``dest`` (CRC of every member checked); ValueError when corrupt."""
    tmp = dest / f".extract-{archive.stem}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            with Progress(len(members), f"extract {archive.name}", unit="file", enabled=progress,
                          stream=sys.stderr) as bar:
                for info in bar.iterate(members):
                    zf.extract(info, tmp)  # reading a member to its end checks its CRC-32
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink()
        raise ValueError(f"{archive} is corrupt ({exc}); deleted it, run again to download it anew") from None
    _merge_move(tmp, dest)
    shutil.rmtree(tmp, ignore_errors=True)


def _merge_move(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into ``dst``, merging folders (``annotations/`` may exist)."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            _merge_move(entry, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            entry.replace(target)


# --- the whole set ----------------------------------------------------------------------------
def _recorded_sha256(done: Path) -> str | None:
    """The sha256 a ``.done`` marker records (line ``sha256 HEX``), None for markers without one."""
    for line in done.read_text().splitlines():
        if line.startswith("sha256 "):
            return line.split()[1].lower()
    return None


def _check_finished(artifact: Artifact, done: Path, target: Path) -> None:
    """A finished step, again against a known sha256: a file still here is re-hashed (an archive
    whose marker records its digest is compared with that), a deleted archive by the marker's
    digest. On a mismatch the file and the marker are deleted (the next run downloads anew) and
    ValueError names the file and both digests."""
    expected = artifact.sha256.lower()
    recorded = _recorded_sha256(done)
    if target.is_file() and not (artifact.extract and recorded is not None):
        actual, where = file_sha256(target), "sha256"
    elif recorded is not None:
        actual, where = recorded, f"sha256 (recorded in {done})"
    else:
        raise ValueError(f"{target} was extracted and deleted before its sha256 was recorded: it cannot be "
                         f"checked against {expected}; delete {done} to download it anew")  # fmt: skip
    if actual != expected:
        target.unlink(missing_ok=True)
        done.unlink()
        raise ValueError(f"{target} is corrupt: {where} {actual} is not the expected {expected}; deleted "
                         "it, run again to download it anew")  # fmt: skip


def fetch_artifact(key: str, artifact: Artifact, dest: Path, base_url: str | None = None,
                   progress: bool = True, keep_archive: bool = True, **kwargs) -> str:
    """Download, verify and (for archives) extract one artifact; returns what was done.

    A step already done is checked again when a sha256 is known (`_check_finished`); an archive
    is checked before it is extracted. The ``.done`` marker records the URL and, when one was
    checked, the file's sha256.
    """
    done = dest / ".ssdbench-download" / f"{key}.done"
    target = dest / artifact.name
    if done.is_file():
        if artifact.sha256:
            _check_finished(artifact, done, target)
            return "already complete, sha256 verified"
        return "already complete"
    action = "verified (already downloaded)" if target.is_file() else "downloaded"
    if not target.is_file():
        download_file(url_for(artifact, base_url), target, progress=progress, **kwargs)
    digest = None
    if artifact.sha256 or artifact.size:
        digest = verify_checksum(target, artifact.sha256, artifact.size)  # before any extraction
    elif not artifact.extract:
        verify_sha256_prefix(target)
    if artifact.extract:
        extract_zip(target, dest, progress)
        action += ", extracted"
        if not keep_archive:
            target.unlink()
    atomic_write_text(done, url_for(artifact, base_url) + "\n" + (f"sha256 {digest}\n" if digest else ""))
    return action


def download_coco(dest, only=COCO_ITEMS, base_url: str | None = None,
                  progress: bool = True, keep_archives: bool = True, artifacts=None,
                  **kwargs) -> dict[str, str]:
    """Fetch the selected parts of COCO 2017 (+ backbone, + the official SSD-Large files with
    ``ssd1200``) into ``dest``; {key: what was done}."""
    artifacts = artifacts or ARTIFACTS
    only = [k for key in only for k in GROUPS.get(key, (key,))]
    unknown = [k for k in only if k not in artifacts]
    if unknown:
        raise ValueError(f"unknown download item(s) {unknown}; choose from {', '.join([*artifacts, *GROUPS])}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return {key: fetch_artifact(key, artifacts[key], dest, base_url, progress, keep_archives, **kwargs)
            for key in only}
