"""Image parts: type by magic bytes and size from the JPEG/PNG header, read before anything is decoded."""

from dataclasses import dataclass

from fastapi import HTTPException, status

from occupancy.image_header import image_kind, image_size


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
    kind = image_kind(data)
    if kind is None:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f"{part}: not a JPEG or PNG image (by its first bytes {data[:8].hex()})")
    size = image_size(data)
    if size is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"{part}: undecodable {kind} (no readable size)")
    return ImageHeader(kind, *size)
