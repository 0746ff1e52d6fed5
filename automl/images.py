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

Memory is bounded, because a few megabytes of PNG can claim gigabytes once decoded:

- An image that would be decoded at more than ``MAX_PIXELS`` is refused with its size and the fix
  (``probe`` already refuses it from the header, so loading a dataset names it before any decoding).
  A JPEG counts at the scale it is decoded at: one that ``draft`` reduces below the limit is fine.
- Decodes in flight, in every thread together, hold at most ``DECODE_MEMORY`` bytes
  (``DECODE_BUDGET``); a decode waits for its share, one larger than the whole budget runs alone.
- Few full-size copies, and the same pixels as the plain order of the rules: a resize runs on the
  Pillow image (no NumPy round trip), grey images are resized before they become RGB, alpha is
  composited by Pillow's premultiplication (the rounding of ``_over_black``), high-bit images are
  stretched in strips, and a full-size result is copied out in strips.
"""

from __future__ import annotations

import io
import os
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

DECODE_VERSION = 1

# Lower-case suffixes of the files a dataset folder may hold (a GIF or WebP animation: its first frame).
# Files with other suffixes are listed as ignored by `automl inspect` and warned about by fit.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pbm", ".pgm",
                  ".ppm", ".pnm")

# The most pixels an image may have at the scale it is decoded at: Pillow's own default
# (``Image.MAX_IMAGE_PIXELS``, 1 GiB at 12 bytes a pixel; about 9,459 x 9,459). Pillow's global is
# left as it is; this limit is applied here, with the file's size and the fix in the message.
MAX_PIXELS = 89_478_485
# Bytes that decodes in flight may hold at once, all threads together: about one image at the limit.
DECODE_MEMORY = 1 << 30
# JPEG's ``draft`` decodes at 1/2, 1/4 or 1/8 scale; the most a JPEG can be reduced by.
_JPEG_MAX_REDUCTION = 8
# Elements per strip when stretching high-bit images (float64 temporaries of 8 MiB).
_STRIP_ELEMENTS = 1 << 20
# Pillow allocates image memory in blocks (16 MiB by default); glibc serves blocks that size from
# per-thread heaps it keeps after they are freed, so RSS grew by one image per decode thread even when
# the budget let one decode run at a time. Blocks above glibc's largest mmap threshold (32 MiB) are
# mapped and returned on free. A PILLOW_BLOCK_SIZE set in the environment wins.
_PILLOW_BLOCK_SIZE = 64 << 20
if "PILLOW_BLOCK_SIZE" not in os.environ:
    Image.core.set_block_size(_PILLOW_BLOCK_SIZE)
_HIGH_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
# Peak bytes per full-size pixel while one image is decoded, by mode when opened (the growth of peak
# RSS decoding 6000 x 6000 images, at 299 px and at native size, the larger rounded up); 13 for others.
_BYTES_PER_PIXEL = {"1": 6, "L": 5, "P": 10, "RGB": 8, "RGBA": 12, "CMYK": 12,
                    "I;16": 7, "I;16B": 7, "I;16L": 7, "I;16N": 7}


class DecodeError(Exception):
    """The bytes are not a decodable image (the caller adds the path)."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str | None


class MemoryBudget:
    """Bytes that work in flight may hold, shared by threads: ``hold(n)`` waits until ``n`` more
    fit. Waiters are served in arrival order (a large image is not starved by small ones), and one
    larger than the whole budget runs when nothing else holds any."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most held at once, for tests and benchmarks
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or (self.used and self.used + nbytes > self.limit):
                    self._cond.wait()
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self.used += nbytes
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


DECODE_BUDGET = MemoryBudget(DECODE_MEMORY)


def decode_cost(width: int, height: int, mode: str) -> int:
    """Peak bytes of decoding a ``width x height`` image of ``mode`` (an upper estimate)."""
    return width * height * _BYTES_PER_PIXEL.get(mode, 13)


def probe(data: bytes | BinaryIO) -> ImageInfo:
    """Read the header only: format, size, mode. Cheap; full decoding errors surface in ``decode``.

    Refuses an image above ``MAX_PIXELS`` even at the smallest scale it can be decoded at.
    """
    try:
        with _open(data) as im:
            info = ImageInfo(im.width, im.height, im.mode, im.format)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DecodeError(_reason(exc)) from exc
    reduction = _JPEG_MAX_REDUCTION if info.format == "JPEG" else 1
    _check_pixels(info, -(-info.width // reduction) * -(-info.height // reduction))
    return info


def decode(data: bytes | BinaryIO, size: int | None = None) -> np.ndarray:
    """Decode file bytes (or an open binary file) to a ``(size, size, 3)`` uint8 array (native size
    when ``size`` is None)."""
    try:
        with _open(data) as im:
            if size is not None and im.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target: several times
                # faster on large photos, and the resize below does the rest.
                im.draft("RGB", (size, size))
            _check_pixels(ImageInfo(im.width, im.height, im.mode, im.format), im.width * im.height)
            with DECODE_BUDGET.hold(decode_cost(im.width, im.height, im.mode)):
                im.load()
                ImageOps.exif_transpose(im, in_place=True)
                return _rgb(im, size)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DecodeError(_reason(exc)) from exc


def decode_array(pixels: np.ndarray, size: int | None = None) -> np.ndarray:
    """An image stored as an array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> uint8 RGB, resized."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.dtype != np.uint8:
        pixels = _stretch(pixels)
    if pixels.ndim == 2:
        return _grey(Image.fromarray(np.ascontiguousarray(pixels)), size)
    if pixels.shape[2] == 3:
        rgb = pixels
    elif pixels.shape[2] == 4:
        rgb = _over_black(pixels[:, :, :3], pixels[:, :, 3])
    else:
        raise DecodeError(f"expected 1, 3 or 4 channels, got an array of shape {pixels.shape}")
    return resize(np.ascontiguousarray(rgb), size)


def resize(rgb: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or rgb.shape[:2] == (size, size):
        return rgb
    return _resized(Image.fromarray(rgb), size)


# --- one image, each rule applied once -------------------------------------------------------------


def _rgb(im: Image.Image, size: int | None) -> np.ndarray:
    # Every branch gives the pixels the straightforward order gives (convert to RGB, composite,
    # then resize; tests/test_decode_limits.py holds their digests), with fewer full-size copies.
    if im.mode in _HIGH_BIT:
        return decode_array(np.asarray(im), size)
    if im.mode == "1":
        im = im.convert("L")  # Pillow resizes mode "1" by nearest neighbour; grey keeps the filter
    if im.mode == "L":
        return _grey(im, size)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA:
        # Premultiplied RGB is the colour composited over black, rounded as _over_black rounds.
        im = (im if im.mode == "RGBA" else im.convert("RGBA")).convert("RGBa")
        if size is None or im.size == (size, size):
            return _array(im, 3)
        return np.ascontiguousarray(_resized(im, size)[:, :, :3])
    if im.mode != "RGB":
        im = im.convert("RGB")
    if size is None or im.size == (size, size):
        return _array(im, 3)
    return _resized(im, size)


def _grey(im: Image.Image, size: int | None) -> np.ndarray:
    """A mode "L" image as RGB: resized while it is one channel, then the channel repeated (the
    filter works per channel, so this equals repeating first)."""
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return _array(im, 3)


def _array(im: Image.Image, channels: int) -> np.ndarray:
    """The first ``channels`` bands of an 8-bit image as a new (H, W, channels) array (one band is
    repeated), copied in strips of rows: ``np.asarray(im)`` would hold two more full-size copies
    (Pillow's ``tobytes`` joins a list of chunks)."""
    w, h = im.size
    out = np.empty((h, w, channels), np.uint8)
    rows = max(1, (1 << 22) // max(1, 4 * w))
    for y in range(0, h, rows):
        strip = np.asarray(im.crop((0, y, w, min(h, y + rows))) if rows < h else im)
        out[y:y + rows] = strip[:, :, None] if strip.ndim == 2 else strip[:, :, :channels]
    return out


def _resized(im: Image.Image, size: int) -> np.ndarray:
    # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases.
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))


def _stretch(pixels: np.ndarray) -> np.ndarray:
    """Min..max of the finite values onto 0..255, in strips of rows so that the float64 temporaries
    stay small (elementwise, so the result equals the whole-array computation)."""
    rows = max(1, _STRIP_ELEMENTS // max(1, pixels[0].size if len(pixels) else 1))
    strips = [pixels[i:i + rows] for i in range(0, len(pixels), rows)]
    if pixels.dtype.kind in "biu":  # no NaN or infinity
        lo, hi = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    else:
        lo, hi = np.inf, -np.inf
        for strip in strips:
            values = strip.astype(np.float64)
            finite = values[np.isfinite(values)]
            if finite.size:
                lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    out = np.zeros(pixels.shape, np.uint8)
    if not hi > lo:  # nothing finite, or a single value
        return out
    scale = 255.0 / (hi - lo)
    for i, strip in zip(range(0, len(pixels), rows), strips):
        scaled = (np.nan_to_num(strip.astype(np.float64), nan=lo, posinf=hi, neginf=lo) - lo) * scale
        out[i:i + rows] = np.clip(np.rint(scaled), 0, 255)
    return out


def _over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.uint16)[:, :, None]
    return ((rgb.astype(np.uint16) * a + 127) // 255).astype(np.uint8)


# --- opening and the pixel limit -------------------------------------------------------------------


def _open(data: bytes | BinaryIO) -> Image.Image:
    """Open (header only). Pillow's own size check would warn, or refuse, before ours could name the
    file's size and the fix, so ours comes first: a JPEG is judged later, at the scale ``draft``
    decodes it at; any other image here, from what its header says."""
    fp = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    start = fp.tell()
    if fp.read(3) == b"\xff\xd8\xff":
        fp.seek(start)
        return JpegImagePlugin.jpeg_factory(fp)  # what Image.open calls for a JPEG, less the size check
    fp.seek(start)
    header = _header(fp)
    if header is not None:
        _check_pixels(header, header.width * header.height)
    fp.seek(start)
    return Image.open(fp)


def _header(fp: BinaryIO) -> ImageInfo | None:
    """Size, mode and format as the first plugin that accepts the bytes reads them, without
    Pillow's size check; None when no plugin does (``Image.open`` then says why)."""
    start = fp.tell()
    prefix = fp.read(16)
    Image.preinit()  # the plugins in the order Image.open tries them
    Image.init()
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        try:
            if accept is None or accept(prefix) is True:
                fp.seek(start)
                im = factory(fp, "")
                return ImageInfo(im.width, im.height, im.mode, im.format)
        except Exception:  # noqa: BLE001 - not this plugin's format; try the next
            continue
    return None


def _check_pixels(info: ImageInfo, decoded_pixels: int) -> None:
    if decoded_pixels <= MAX_PIXELS:
        return
    w, h = info.width, info.height
    shrink = (MAX_PIXELS / (w * h)) ** 0.5
    fits = f"{max(1, int(w * shrink))}x{max(1, int(h * shrink))}"
    scale = "" if decoded_pixels == w * h else f", {decoded_pixels / 1e6:.1f} Mpx at the smallest scale it decodes at"
    raise DecodeError(
        f"{w}x{h} {info.format or 'image'} is {w * h / 1e6:.1f} Mpx{scale}, above the decode limit of "
        f"{MAX_PIXELS / 1e6:.1f} Mpx (automl.images.MAX_PIXELS, which bounds memory: decoding it would "
        f"take about {decode_cost(w, h, info.mode) / 2**30:.1f} GiB); downscale it to {fits} or smaller"
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DecodeError):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):  # its text names our in-memory buffer, not the file
        return "not an image format Pillow can identify (unknown format, or a damaged or truncated header)"
    return str(exc) or type(exc).__name__
