"""Image parts: type by magic bytes and size from the JPEG/PNG header, read before anything is decoded."""

import struct
from dataclasses import dataclass

from fastapi import HTTPException, status

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, ...); C4, C8 and CC are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field: TEM, RST0..7, SOI.
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])
_START_OF_SCAN = 0xDA


@dataclass(frozen=True)
class ImageHeader:
    kind: str  # "jpeg" or "png"
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def read_header(data: bytes, part: str) -> ImageHeader:
    """Type and size of an image part; 415 for a type other than JPEG/PNG, 400 for an unreadable header."""
    if data.startswith(JPEG_MAGIC):
        size = _jpeg_size(data)
        kind = "jpeg"
    elif data.startswith(PNG_MAGIC):
        size = _png_size(data)
        kind = "png"
    else:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f"{part}: not a JPEG or PNG image (by its first bytes {data[:8].hex()})")
    if size is None or min(size) <= 0:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{part}: undecodable {kind} (no readable size)")
    return ImageHeader(kind, *size)


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
