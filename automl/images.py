"""Turn any supported image (file bytes or an array) into the extractors' input: uint8 RGB, square.

The rules, in one place because the embedding cache depends on them (``DECODE_VERSION`` is part of
every cache key; bump it when a rule changes):

- EXIF orientation is applied, so a photo rotated by its camera tag is seen upright.
- Grayscale, palette, CMYK, ... become RGB by repeating / converting channels.
- Transparency is composited over black, so what was invisible stays dark instead of showing the
  arbitrary colour stored under alpha 0.
- More than 8 bits per channel (16-bit PNG/TIFF, 32-bit int, float) is stretched per image from its
  own min to max onto 0..255: medical images rarely use the dtype's full range (12-bit data in a
  16-bit file would otherwise look almost black).
- Resizing squashes to ``size x size`` (no crop, no padding) with an antialiased bilinear filter, so
  nothing near the border is lost; large JPEGs are decoded at reduced scale first (``draft``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DECODE_VERSION = 1

# Lower-case suffixes of the files a dataset folder may hold (a GIF or WebP animation: its first frame).
# Files with other suffixes are listed as ignored by `automl inspect` and warned about by fit.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pbm", ".pgm",
                  ".ppm", ".pnm")

# Decompression-bomb guard stays on, but at a size a whole-slide or large scan can still pass.
Image.MAX_IMAGE_PIXELS = 400_000_000


class DecodeError(Exception):
    """The bytes are not a decodable image (the caller adds the path)."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str | None


def probe(data: bytes) -> ImageInfo:
    """Read the header only: format, size, mode. Cheap; full decoding errors surface in ``decode``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return ImageInfo(im.width, im.height, im.mode, im.format)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DecodeError(_reason(exc)) from exc


def decode(data: bytes, size: int | None = None) -> np.ndarray:
    """Decode file bytes to a ``(size, size, 3)`` uint8 array (native size when ``size`` is None)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if size is not None and im.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target: several times
                # faster on large photos, and the resize below does the rest.
                im.draft("RGB", (size, size))
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = to_rgb(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DecodeError(_reason(exc)) from exc
    return resize(rgb, size)


def decode_array(pixels: np.ndarray, size: int | None = None) -> np.ndarray:
    """An image stored as an array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> uint8 RGB, resized."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.dtype != np.uint8:
        pixels = _stretch(pixels)
    if pixels.ndim == 2:
        rgb = np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.shape[2] == 3:
        rgb = pixels
    elif pixels.shape[2] == 4:
        rgb = _over_black(pixels[:, :, :3], pixels[:, :, 3])
    else:
        raise DecodeError(f"expected 1, 3 or 4 channels, got an array of shape {pixels.shape}")
    return resize(np.ascontiguousarray(rgb), size)


def to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return decode_array(np.asarray(im))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"))
        return _over_black(rgba[:, :, :3], rgba[:, :, 3])
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def resize(rgb: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or rgb.shape[:2] == (size, size):
        return rgb
    # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases.
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def _stretch(pixels: np.ndarray) -> np.ndarray:
    values = pixels.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(pixels.shape, np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(pixels.shape, np.uint8)
    scaled = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.uint16)[:, :, None]
    return ((rgb.astype(np.uint16) * a + 127) // 255).astype(np.uint8)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):  # its text names our in-memory buffer, not the file
        return "not an image format Pillow can identify (unknown format, or a damaged or truncated header)"
    return str(exc) or type(exc).__name__
