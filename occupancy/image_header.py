"""JPEG / PNG type and size from the first bytes of a file, read before anything is decoded.

The gateway rejects oversized images by their header (a pixel bomb never reaches the decoder);
the data pipeline picks a reduced JPEG decode scale from the size.
"""

import struct

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, ...); C4, C8 and CC are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field: TEM, RST0..7, SOI.
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])
_START_OF_SCAN = 0xDA


def image_kind(data: bytes) -> str | None:
    """"jpeg" or "png" by the magic bytes, None for anything else."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG or PNG header; None for another type or an unreadable header."""
    kind = image_kind(data)
    size = _jpeg_size(data) if kind == "jpeg" else _png_size(data) if kind == "png" else None
    return size if size is not None and min(size) > 0 else None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk comes first: length (4), "IHDR", width (4), height (4), big-endian.
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Walk the marker segments after SOI up to the first start-of-frame, which holds height and width.
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        if marker == _START_OF_SCAN:
            return None
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        if marker in _SOF_MARKERS:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return height, width
        position += 2 + length
    return None
