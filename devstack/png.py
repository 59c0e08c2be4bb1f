"""Minimal PNG encoders for the synthetic workers, no Pillow: one flat colour (a few hundred
bytes), or a payload of about a given size (as heavy as a real model's image)."""

from __future__ import annotations

import functools
import random
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=256)
def solid_png(width: int, height: int, rgb: tuple[int, int, int] = (96, 72, 48)) -> bytes:
    """A valid 8-bit RGB PNG; cached, since a load generator asks for the same few sizes."""
    row = b"\x00" + bytes(rgb) * width  # filter type 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(row * height, 9))
        + _chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=16)
def payload_png(width: int, height: int, target_bytes: int) -> bytes:
    """A valid PNG of width x height of about ``target_bytes`` (never less than the flat one):
    incompressible noise in as many rows as make up the size, flat colour below. A generated
    photograph of 1024x576 is 1-2 MB as PNG; this stands for one in what the dispatcher reads."""
    row_bytes = 1 + 3 * width
    noisy_rows = min(height, max(0, target_bytes // row_bytes))
    noise = random.Random(target_bytes).randbytes(noisy_rows * 3 * width)
    rows = b"".join(b"\x00" + noise[i * 3 * width : (i + 1) * 3 * width] for i in range(noisy_rows)) + (
        b"\x00" + bytes((96, 72, 48)) * width
    ) * (height - noisy_rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(rows, 1)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header; ValueError if it is not a PNG."""
    if not data.startswith(SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
