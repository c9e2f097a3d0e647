"""JPEG / PNG type and size from the first bytes of a file, read before anything is decoded.

The gateway rejects oversized images by their header (a pixel bomb never reaches the decoder);
the data pipeline picks a reduced JPEG decode scale from the size. The size must be the one the
decoder will use, so the JPEG walk follows libjpeg's marker reader (jdmarker.c `next_marker`):
after each segment it scans forward for 0xFF, swallows 0xFF fill bytes, and skips a stuffed
0xFF 0x00 pair and any stray byte as data. A reader that took the bytes after 0xFF 0x00 for a marker
could be shown a small fake frame while libjpeg decodes a large one behind it.

Every function takes bytes or any contiguous byte buffer (a memoryview of a request body).
"""

import re
import struct

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, ...); C4, C8 and CC are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field: TEM, RST0..7 (libjpeg passes over them here).
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
_START_OF_SCAN, _END_OF_IMAGE = 0xDA, 0xD9
# The next marker: one or more 0xFF, then a byte that is neither 0x00 (stuffing) nor 0xFF (fill).
_NEXT_MARKER = re.compile(rb"\xff+([^\x00\xff])", re.DOTALL)


def image_kind(data: bytes | memoryview) -> str | None:
    """"jpeg" or "png" by the magic bytes, None for anything else."""
    if bytes(data[:len(JPEG_MAGIC)]) == JPEG_MAGIC:
        return "jpeg"
    if bytes(data[:len(PNG_MAGIC)]) == PNG_MAGIC:
        return "png"
    return None


def image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(height, width) from a JPEG or PNG header; None for another type or an unreadable header."""
    kind = image_kind(data)
    size = _jpeg_size(data) if kind == "jpeg" else _png_size(data) if kind == "png" else None
    return size if size is not None and min(size) > 0 else None


def _png_size(data: bytes | memoryview) -> tuple[int, int] | None:
    # The IHDR chunk comes first (libpng refuses anything else): length (4), "IHDR", width, height (4 each).
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return height, width


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    # Marker by marker after SOI, as libjpeg reads them, up to the first start-of-frame (height, width).
    position = 2
    while (found := _NEXT_MARKER.search(data, position)) is not None:
        marker, position = found.group(1)[0], found.end()
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (_START_OF_SCAN, _END_OF_IMAGE) or position + 2 > len(data):
            return None  # a scan or the end before any frame: libjpeg has no size either
        (length,) = struct.unpack_from(">H", data, position)
        if marker in _SOF_MARKERS:
            if position + 7 > len(data):
                return None
            height, width = struct.unpack_from(">HH", data, position + 3)
            return height, width
        position += max(length, 2)  # libjpeg skips length - 2 bytes after the length field, never back
    return None
