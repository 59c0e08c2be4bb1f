"""Checking a worker's image before it is stored."""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

from dispatcher.domain import BadResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header; ValueError if it is not a PNG."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def decode_png(output: Any, width: int, height: int) -> bytes:
    """The PNG in a worker's output, checked to be of the requested size."""
    if not isinstance(output, dict) or not isinstance(output.get("image_base64"), str):
        raise BadResult("the worker's output has no image_base64")
    try:
        png = base64.b64decode(output["image_base64"], validate=True)
        size = png_size(png)
    except (binascii.Error, ValueError) as exc:
        raise BadResult(f"the worker's image is not a valid PNG: {exc}") from exc
    if size != (width, height):
        raise BadResult(f"the worker's image is {size[0]}x{size[1]}, {width}x{height} was asked for")
    return png
