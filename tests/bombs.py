"""Decompression bombs for the memory tests and bench/bench_decode_memory.py: valid PNGs of one colour
whose few hundred kilobytes decode to gigabytes, built in a fraction of a second."""

from __future__ import annotations

import functools
import struct
import zlib

_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)


def png_bomb(width: int, height: int, *, channels: int = 1, tag: str = "", rows_per_block: int = 500) -> bytes:
    """A black ``width x height`` PNG (8 bits, 1, 3 or 4 channels); ``tag`` goes into a tEXt chunk
    so that bombs of one size differ in content (and fingerprint).

    Not compressed as a whole (that would take seconds per bomb): one deflate block of
    ``rows_per_block`` rows, fully flushed (byte-aligned, nothing refers back across it), is
    repeated, then closed by an empty final block and the Adler-32 of all the rows. Bombs of one
    size share that stream (built once per process).
    """
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    text = _chunk(b"tEXt", b"tag\x00" + tag.encode()) if tag else b""
    idat = _chunk(b"IDAT", _black_rows(width, height, channels, rows_per_block))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + text + idat + _chunk(b"IEND", b"")


@functools.lru_cache(maxsize=8)
def _black_rows(width: int, height: int, channels: int, rows_per_block: int) -> bytes:
    row = 1 + width * channels  # a filter byte, then the pixels

    def block(rows: int) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(bytes(row * rows)) + c.flush(zlib.Z_FULL_FLUSH)

    full, rest = divmod(height, rows_per_block)
    adler, zeros = 1, bytes(row * rows_per_block)
    for _ in range(full):
        adler = zlib.adler32(zeros, adler)
    adler = zlib.adler32(bytes(row * rest), adler)
    return (b"\x78\xda" + block(rows_per_block) * full + (block(rest) if rest else b"")
            + zlib.compressobj(9, zlib.DEFLATED, -15).flush() + struct.pack(">I", adler))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
