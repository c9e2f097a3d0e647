"""Image parts: type by magic bytes and size from the JPEG/PNG header, read before anything is decoded."""

from dataclasses import dataclass

from occupancy.image_header import image_kind, image_size
from service.core.errors import ErrorKind, GatewayError


@dataclass(frozen=True)
class ImageHeader:
    kind: str  # "jpeg" or "png"
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def read_header(data: bytes | memoryview, part: str) -> ImageHeader:
    """Type and size of an image part; GatewayError UNSUPPORTED for a type other than JPEG/PNG,
    MALFORMED for an unreadable header."""
    kind = image_kind(data)
    if kind is None:
        raise GatewayError(ErrorKind.UNSUPPORTED,
                           f"{part}: not a JPEG or PNG image (by its first bytes {bytes(data[:8]).hex()})")
    size = image_size(data)
    if size is None:
        raise GatewayError(ErrorKind.MALFORMED, f"{part}: undecodable {kind} (no readable size)")
    return ImageHeader(kind, *size)
