"""Image decoding: encoded bytes -> uint8 (H, W, 3) RGB numpy array.

Two decoders: Pillow (any format) and simplejpeg (libjpeg-turbo, JPEG only, faster; measured in
`benchmarks/data.py`). ``decoder="auto"`` takes simplejpeg for JPEGs when it is importable and
Pillow for everything else. Every result is 3-channel RGB: grayscale, CMYK, palette and alpha
images are converted (alpha is dropped, as COCO's loaders do with ``.convert("RGB")``).
Corrupt or truncated data raises ``ValueError`` with the decoder's reason.

Before any decoder allocates, the size is read from the header (`image_size`) and checked against
`max_image_pixels` (``$SSDBENCH_MAX_IMAGE_PIXELS``, default Pillow's decompression-bomb limit): a
JPEG whose header claims 65000x65000 would otherwise make libjpeg-turbo ask for 11.8 GiB. Such an
image, and one whose decode runs out of memory, raises ValueError like any corrupt file (the
loaders skip it as a bad sample, naming it).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image

try:  # optional fast path (libjpeg-turbo)
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a declared dependency
    simplejpeg = None

DECODERS = ("auto", "pillow", "simplejpeg")
_JPEG_MAGIC = b"\xff\xd8\xff"
MAX_PIXELS_ENV = "SSDBENCH_MAX_IMAGE_PIXELS"


class ImageTooLargeError(ValueError):
    """The header claims more pixels than `max_image_pixels`: the image is not decoded."""


def max_image_pixels() -> int:
    """Largest width x height decoded: ``$SSDBENCH_MAX_IMAGE_PIXELS`` (a positive integer), else
    Pillow's `PIL.Image.MAX_IMAGE_PIXELS` (89,478,485: 256 MiB of RGB; COCO's largest is 640x640)."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return int(Image.MAX_IMAGE_PIXELS or 2**62)
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a positive integer, got {text!r}")
    return value


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from the header only: no pixel buffer is allocated. ValueError when
    the header is unreadable or claims more than twice Pillow's limit (Pillow refuses to open it)."""
    if simplejpeg is not None and is_jpeg(data):
        try:
            height, width = simplejpeg.decode_jpeg_header(data)[:2]
            return int(width), int(height)
        except ValueError:
            pass  # Pillow reads some headers libjpeg-turbo rejects; it decides below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from None
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode image: {exc}") from None


def check_image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the header; ImageTooLargeError (a ValueError) when width x height
    exceeds `max_image_pixels`, ValueError when the header is unreadable."""
    width, height = image_size(data)
    limit = max_image_pixels()
    if width * height > limit:
        raise ImageTooLargeError(f"image too large: the header says {width}x{height} = {width * height:,} pixels, "
                         f"over the limit of {limit:,} ({MAX_PIXELS_ENV}); not decoded")
    return width, height


def available_decoders() -> list[str]:
    """Names of the decoders usable here ("pillow" always, "simplejpeg" when importable)."""
    return ["pillow"] + (["simplejpeg"] if simplejpeg is not None else [])


def is_jpeg(data: bytes) -> bool:
    """True when ``data`` starts with the JPEG SOI marker."""
    return bytes(data[:3]) == _JPEG_MAGIC


def decode_pillow(data: bytes) -> np.ndarray:
    """Decode any Pillow-readable image to uint8 (H, W, 3) RGB; ValueError when corrupt."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Truncated files otherwise decode silently with grey padding; load() must fail.
            img.load()
            if img.mode != "RGB":
                img = _to_rgb(img)
            return np.asarray(img, dtype=np.uint8).copy()
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot decode image: {exc}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; palette images with transparency go through RGBA first."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def decode_simplejpeg(data: bytes) -> np.ndarray:
    """Decode a JPEG with libjpeg-turbo to uint8 (H, W, 3) RGB; ValueError when corrupt.

    CMYK/YCCK JPEGs go through Pillow: libjpeg-turbo has no CMYK -> RGB conversion (and Adobe
    files store inverted CMYK, which Pillow handles). Files on which libjpeg only warns (e.g.
    "extraneous bytes before marker", found in some real COCO images) also go through Pillow,
    which decodes them as every COCO loader does; truly truncated data fails there too.
    """
    if simplejpeg is None:
        raise ValueError("decoder 'simplejpeg' is not installed (pip install simplejpeg)")
    try:
        if simplejpeg.decode_jpeg_header(data)[2] in ("CMYK", "YCCK"):
            return decode_pillow(data)
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return decode_pillow(data)


def decode_image(data: bytes, decoder: str = "auto") -> np.ndarray:
    """Decode encoded image bytes to a uint8 (H, W, 3) RGB array.

    decoder: "auto" (simplejpeg for JPEGs when importable, else Pillow), "pillow" or
    "simplejpeg" (JPEG only). Raises ValueError for corrupt/truncated data or a bad name.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    if not data:
        raise ValueError("cannot decode image: empty data")
    check_image_size(data)  # before any decoder allocates (module doc)
    try:
        return _decode(data, decoder)
    except MemoryError:
        raise ValueError("cannot decode image: out of memory") from None


def _decode(data: bytes, decoder: str) -> np.ndarray:
    if decoder == "pillow":
        return decode_pillow(data)
    if decoder == "simplejpeg":
        if not is_jpeg(data):
            raise ValueError("decoder 'simplejpeg' reads JPEG only; data is not a JPEG")
        return decode_simplejpeg(data)
    if simplejpeg is not None and is_jpeg(data):
        return decode_simplejpeg(data)
    return decode_pillow(data)


def read_image(path, decoder: str = "auto") -> np.ndarray:
    """Read and decode an image file to uint8 (H, W, 3) RGB (OSError when unreadable)."""
    with open(path, "rb") as f:
        return decode_image(f.read(), decoder)
