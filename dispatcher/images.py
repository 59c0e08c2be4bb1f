"""Checking a worker's image before it is stored: the whole PNG, not just its header.

A PNG is accepted only if its chunks are well formed from the signature to IEND
with nothing after it, its image data inflates to no more than the declared size
needs (a small file cannot stand for a decompression bomb), and Pillow decodes
every pixel of it at the requested width and height.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import zlib
from typing import Any

from PIL import Image

from dispatcher.domain import BadResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 2048 * 2048  # the worker's largest size
# Bits per pixel by IHDR colour type (times the bit depth's share, see _raw_size).
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header; ValueError if it is not a PNG."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def decode_png(output: Any, width: int, height: int) -> bytes:
    """The PNG in a worker's output, checked whole and to be of the requested size."""
    if not isinstance(output, dict) or not isinstance(output.get("image_base64"), str):
        raise BadResult("the worker's output has no image_base64")
    try:
        png = base64.b64decode(output["image_base64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadResult(f"the worker's image is not valid base64: {exc}") from exc
    verify_png(png, width, height)
    return png


def verify_png(png: bytes, width: int, height: int) -> None:
    """BadResult unless ``png`` is one complete, decodable PNG of width x height."""
    try:
        size, idat, raw_limit = _walk_chunks(png)
    except ValueError as exc:
        raise BadResult(f"the worker's image is not a valid PNG: {exc}") from exc
    if size != (width, height):
        raise BadResult(f"the worker's image is {size[0]}x{size[1]}, {width}x{height} was asked for")
    _check_inflated_size(idat, raw_limit)
    try:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadResult(f"the worker's image does not decode: {exc}") from exc


def _walk_chunks(png: bytes) -> tuple[tuple[int, int], bytes, int]:
    """(size, the concatenated IDAT data, the most bytes it may inflate to); ValueError on any
    malformed chunk, a missing IHDR, IDAT or IEND, or bytes after IEND."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("no PNG signature")
    offset, idat, header = len(PNG_SIGNATURE), bytearray(), None
    while True:
        if offset + 12 > len(png):
            raise ValueError("truncated before IEND")
        length, kind = struct.unpack(">I4s", png[offset : offset + 8])
        end = offset + 12 + length
        if end > len(png):
            raise ValueError(f"chunk {kind!r} runs past the end of the file")
        data = png[offset + 8 : end - 4]
        if zlib.crc32(kind + data) != struct.unpack(">I", png[end - 4 : end])[0]:
            raise ValueError(f"chunk {kind!r} fails its CRC")
        if header is None and kind != b"IHDR":
            raise ValueError("the first chunk is not IHDR")
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
        elif kind == b"IEND":
            break
        offset = end
    if end != len(png):
        raise ValueError(f"{len(png) - end} bytes after IEND")
    if header is None or len(header) != 13 or not idat:
        raise ValueError("no image data")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if colour not in _CHANNELS or width * height > MAX_PIXELS or width == 0 or height == 0:
        raise ValueError(f"unsupported header: {width}x{height}, colour type {colour}")
    return (width, height), bytes(idat), _raw_size(width, height, depth * _CHANNELS[colour], interlace)


def _raw_size(width: int, height: int, bits_per_pixel: int, interlace: int) -> int:
    """What the image data inflates to: a filter byte and the pixels per row; with Adam7
    interlacing, at most seven passes' extra filter bytes and partial bytes on top."""
    row = 1 + (width * bits_per_pixel + 7) // 8
    return height * row + (7 * (height + 1) * 2 if interlace else 0)


def _check_inflated_size(idat: bytes, limit: int) -> None:
    inflater = zlib.decompressobj()
    try:
        inflated = len(inflater.decompress(idat, limit + 1))
    except zlib.error as exc:
        raise BadResult(f"the worker's image data does not inflate: {exc}") from exc
    if inflated > limit or inflater.unconsumed_tail or inflater.unused_data:
        raise BadResult(f"the worker's image data inflates past the {limit} bytes its size needs")
