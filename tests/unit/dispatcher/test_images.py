"""The dispatcher stores a worker's image only if the whole PNG is sound (dispatcher.images)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from devstack.png import solid_png
from dispatcher.domain import BadResult
from dispatcher.images import decode_image, verify_png


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of(width: int, height: int, idat: bytes, *, extra: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"") + extra


# 1024x576 declared, 200 MiB of image data once inflated: about 200 KB on the wire
BOMB = png_of(1024, 576, zlib.compress(b"\x00" * (200 * 1024 * 1024), 9))


def pillow_png(width: int, height: int, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_sound_pngs_pass() -> None:
    verify_png(solid_png(1024, 576), 1024, 576)
    verify_png(pillow_png(576, 1024), 576, 1024)
    verify_png(pillow_png(64, 64, optimize=True), 64, 64)


def test_a_palette_png_is_decoded_by_pillow_and_refused_when_its_data_is_short() -> None:
    buffer = io.BytesIO()
    Image.new("P", (64, 48), 3).save(buffer, format="PNG")
    verify_png(buffer.getvalue(), 64, 48)
    header = struct.pack(">IIBBBBB", 64, 48, 8, 3, 0, 0, 0)
    palette = chunk(b"PLTE", bytes(range(48)))
    short = zlib.compress(b"\x00" * 65 * 10)  # 10 of 48 rows
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + palette + chunk(b"IDAT", short) + chunk(b"IEND", b"")
    )
    with pytest.raises(BadResult, match="does not decode"):
        verify_png(png, 64, 48)


def test_an_interlaced_png_passes() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buffer, format="PNG")
    # Pillow writes no interlaced PNGs: write one whose Adam7 passes are all filter bytes and zeros
    raw = b"".join(b"\x00" + b"\x00" * 3 * w for w, h in _adam7(64, 48) for _ in range(h))
    header = struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 1)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    verify_png(png, 64, 48)


def _adam7(width: int, height: int) -> list[tuple[int, int]]:
    passes = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ]
    sizes = [((width - x + dx - 1) // dx, (height - y + dy - 1) // dy) for x, y, dx, dy in passes]
    return [(w, h) for w, h in sizes if w and h]


@pytest.mark.parametrize(
    ("png", "message"),
    [
        # the 33-byte "PNG": a signature and a header, no image data
        (
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1024, 576, 8, 2, 0, 0, 0)),
            "truncated",
        ),
        (solid_png(1024, 576) + b"<html><script>alert(1)</script></html>", "bytes after IEND"),
        (solid_png(1024, 576)[:-20] + solid_png(1024, 576)[-8:], "CRC|truncated|runs past"),
        (BOMB, "inflates past"),
        (png_of(1024, 576, zlib.compress(b"\x00" * 100)), "does not decode"),
        (png_of(1024, 576, b"not zlib at all"), "does not inflate"),
        (png_of(1024, 576, zlib.compress((b"\x07" + b"\x00" * 3072) * 576)), "unknown filter type"),
        (png_of(1024, 576, zlib.compress((b"\x00" + b"\x00" * 3072) * 576)[:-30]), "cut short"),
        (solid_png(576, 1024), "576x1024, 1024x576 was asked for"),
        (pillow_png(1024, 576)[:30] + b"\xff" + pillow_png(1024, 576)[31:], "CRC"),
        (b"GIF89a" + b"\x00" * 64, "no PNG signature"),
    ],
    ids=[
        "header-only",
        "html-trailer",
        "cut-short",
        "bomb",
        "short-data",
        "bad-zlib",
        "bad-filter",
        "zlib-cut-short",
        "wrong-size",
        "crc",
        "gif",
    ],
)
def test_unsound_pngs_are_refused(png: bytes, message: str) -> None:
    with pytest.raises(BadResult, match=message):
        verify_png(png, 1024, 576)


def test_the_bomb_is_refused_without_inflating_it() -> None:
    assert len(BOMB) < 300_000  # small on the wire: it is the inflated size that is refused
    with pytest.raises(BadResult, match="inflates past"):
        decode_image({"image_base64": base64.b64encode(BOMB).decode()}, "png", 1024, 576)


@pytest.mark.parametrize("output", [None, [], {}, {"image_base64": 5}, {"image_base64": "@@not base64@@"}])
def test_outputs_without_a_png_are_refused(output: object) -> None:
    with pytest.raises(BadResult):
        decode_image(output, "png", 1024, 576)
