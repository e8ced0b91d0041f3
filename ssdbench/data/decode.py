"""Image decoding: encoded bytes -> uint8 (H, W, 3) RGB numpy array.

Two decoders: Pillow (any format) and simplejpeg (libjpeg-turbo, JPEG only, faster; measured in
`benchmarks/data.py`). ``decoder="auto"`` takes simplejpeg for JPEGs when it is importable and
Pillow for everything else. Every result is 3-channel RGB: grayscale, CMYK, palette and alpha
images are converted (alpha is dropped, as COCO's loaders do with ``.convert("RGB")``).
Corrupt or truncated data raises ``ValueError`` with the decoder's reason.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

try:  # optional fast path (libjpeg-turbo)
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a declared dependency
    simplejpeg = None

DECODERS = ("auto", "pillow", "simplejpeg")
_JPEG_MAGIC = b"\xff\xd8\xff"


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
