"""Image preprocessing: the BEVDet/FlashOcc resize-crop-flip-rotate transform and its post_rot/post_tran,
and the images the networks take (channels as decoded, resampled the fast or the reference way).

Image coordinates (u, v) = (column, row) are continuous, in the pixel-area convention: pixel
[row i, column j] covers [j, j + 1) x [i, i + 1). PIL and cv2.resize scale images in this
convention, so a resize by s maps u to s * u exactly, which is how the reference pipeline
(BEVDet `PrepareImageInputs.img_transform`) builds post_rot/post_tran; intrinsics are used with
the same numbers. `apply_transform` warps an image exactly by a transform's affine map, so the
pixels and the geometry the model receives agree.

Channels: the networks take B, G, R (occupancy/network_input.py says why), which is what OpenCV
decodes, so `model_input_image` returns the decoded channels as they are.

Resampling: `model_input_image` makes the model input the fast way (JPEG decoded at 1/2, 1/4 or 1/8
in its DCT, area-averaged, one bilinear warp; `FAST`) or as the reference does (a full decode and
PIL's resize with its default bicubic filter, crop, flip and rotate; `REFERENCE`, needs Pillow).
docs/preprocessing.md has the measured difference.
"""

import io
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from occupancy.errors import InputError
from occupancy.network_input import FAST, REFERENCE, Resampling

# cv2.imdecode flags per decoded scale: JPEG decodes at 1/2, 1/4, 1/8 in its DCT, nearly for free.
# Calibration is for the sensor's raw pixels, so an EXIF Orientation tag must not rotate them.
DECODE_FLAGS: dict[float, int] = {
    scale: flag | cv2.IMREAD_IGNORE_ORIENTATION for scale, flag in {
        1.0: cv2.IMREAD_COLOR,
        0.5: cv2.IMREAD_REDUCED_COLOR_2,
        0.25: cv2.IMREAD_REDUCED_COLOR_4,
        0.125: cv2.IMREAD_REDUCED_COLOR_8,
    }.items()
}

Size = tuple[int, int]  # (height, width) in pixels
_IDENTITY = ((1.0, 0.0), (0.0, 1.0))


@dataclass(frozen=True)
class ImageTransform:
    """An affine map of image coordinates from a source image onto a transformed image of `size`.

    (u', v') = linear @ (u, v) + offset. The model receives it as post_rot (3x3, `linear` in the
    top-left block) and post_tran (3,), which map source pixels to model-input pixels. Build one
    with `identity(source_size)` and chain `resize`, `crop`, `flip`, `rotate` in the order the image
    undergoes them (each returns a new transform), or compose two with `then`.
    """

    source_size: Size
    size: Size
    linear: tuple[tuple[float, float], tuple[float, float]] = _IDENTITY
    offset: tuple[float, float] = (0.0, 0.0)
    # The operations in order, ("resize", (W, H)), ("crop", (left, top, right, bottom)), ("flip", ()),
    # ("rotate", (degrees,)): what the reference replays on a PIL image.
    steps: tuple[tuple[str, tuple], ...] = ()

    @classmethod
    def identity(cls, size: Size) -> "ImageTransform":
        return cls(source_size=tuple(size), size=tuple(size))

    @property
    def post_rot(self) -> np.ndarray:
        """float32 (3, 3): the linear part, acting on (u, v, depth) with depth unchanged."""
        post_rot = np.eye(3, dtype=np.float32)
        post_rot[:2, :2] = self.linear
        return post_rot

    @property
    def post_tran(self) -> np.ndarray:
        """float32 (3,): the translation in pixels, 0 for depth."""
        return np.array([*self.offset, 0.0], dtype=np.float32)

    def apply_to_points(self, points: np.ndarray) -> np.ndarray:
        """Map source image coordinates (..., 2) as (u, v) to transformed ones (..., 2), float64."""
        points = np.asarray(points, dtype=np.float64)
        return points @ np.asarray(self.linear).T + np.asarray(self.offset)

    def then(self, other: "ImageTransform") -> "ImageTransform":
        """This transform followed by `other`, whose source must be this transform's output."""
        if tuple(other.source_size) != tuple(self.size):
            raise ValueError(f"cannot compose: {other.source_size} follows an image of size {self.size}")
        linear = np.asarray(other.linear) @ np.asarray(self.linear)
        offset = np.asarray(other.linear) @ np.asarray(self.offset) + np.asarray(other.offset)
        return ImageTransform(self.source_size, other.size, _pair_of_pairs(linear), _pair(offset),
                              self.steps + other.steps)

    def resize(self, scale: float) -> "ImageTransform":
        """Scale by `scale`; like the reference, the image becomes int(H * scale) x int(W * scale)."""
        height, width = self.size
        size = (int(height * scale), int(width * scale))
        step = ImageTransform(self.size, size, ((scale, 0.0), (0.0, scale)), (0.0, 0.0),
                              (("resize", (size[1], size[0])),))
        return self.then(step)

    def crop(self, top: int, left: int, size: Size) -> "ImageTransform":
        """Keep the `size` (H, W) window whose top-left pixel is (top, left); outside the image is black."""
        box = (left, top, left + size[1], top + size[0])
        return self.then(ImageTransform(self.size, tuple(size), _IDENTITY, (-float(left), -float(top)),
                                        (("crop", box),)))

    def flip(self) -> "ImageTransform":
        """Mirror left-right: u -> W - u."""
        width = self.size[1]
        return self.then(ImageTransform(self.size, self.size, ((-1.0, 0.0), (0.0, 1.0)), (float(width), 0.0),
                                        (("flip", ()),)))

    def rotate(self, degrees: float) -> "ImageTransform":
        """Rotate about the image centre, counter-clockwise as displayed, keeping the size (PIL `rotate`)."""
        angle = math.radians(degrees)
        rotation = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
        centre = np.array([self.size[1], self.size[0]], dtype=np.float64) / 2
        offset = centre - rotation @ centre
        return self.then(ImageTransform(self.size, self.size, _pair_of_pairs(rotation), _pair(offset),
                                        (("rotate", (float(degrees),)),)))


def test_time_transform(source_size: Size, input_size: Size, bottom_crop: float = 0.0) -> ImageTransform:
    """The reference test-time transform: scale to the input width, keep the bottom rows, centre horizontally.

    `bottom_crop` is the fraction of the resized rows dropped at the bottom (the mean of the
    reference's `crop_h` range, 0 in every seed config). 900 x 1600 -> 256 x 704: scale 0.44 to
    396 x 704, then rows 140..395, so post_rot = diag(0.44, 0.44, 1), post_tran = (0, -140, 0).
    """
    input_height, input_width = input_size
    resized = ImageTransform.identity(source_size).resize(input_width / source_size[1])
    new_height, new_width = resized.size
    top = int(new_height * (1.0 - bottom_crop)) - input_height
    left = int(max(0, new_width - input_width) / 2)
    return resized.crop(top, left, input_size)


test_time_transform.__test__ = False  # named like a test: keep pytest from collecting it where imported


def decode_scale(transform: ImageTransform) -> float:
    """The smallest JPEG decode scale (1, 1/2, 1/4, 1/8) that still holds every pixel the transform keeps.

    256 x 704 from 1600 x 900 (scale 0.44) decodes at 1/2, which costs about a third of a full decode.
    """
    largest_stretch = np.linalg.svd(np.asarray(transform.linear), compute_uv=False)[0]
    return min(scale for scale in DECODE_FLAGS if scale >= min(largest_stretch, 1.0))


def decode_image(data: bytes, decoded_scale: float = 1.0, field: str = "image") -> np.ndarray:
    """Decode JPEG or PNG bytes into a BGR uint8 (H, W, 3) image at `decoded_scale` (a DECODE_FLAGS key).

    Raises InputError naming `field` when the bytes are not a decodable image.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, DECODE_FLAGS[decoded_scale]) if buffer.size else None
    if image is None:
        raise InputError(f"{field}: not a decodable JPEG or PNG image ({len(data)} bytes)")
    return image


def apply_transform(image: np.ndarray, transform: ImageTransform, decoded_scale: float = 1.0) -> np.ndarray:
    """Warp an (H, W, C) or (H, W) uint8 image onto the transform's output size.

    The image may have been decoded at `decoded_scale` of the transform's source size (JPEG reduced
    decoding): the transform keeps its geometry in source pixels, so post_rot/post_tran stay exact,
    and the warp scales by the remaining factor. Downscaling is area-averaged first (no aliasing),
    then one bilinear affine warp places every pixel exactly where the transform says.
    """
    _check_decoded_size(image, transform.source_size, decoded_scale)
    linear = np.asarray(transform.linear) / decoded_scale
    shrink = math.sqrt(abs(np.linalg.det(linear)))
    if shrink < 1.0:
        height, width = image.shape[:2]
        new_size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        image = cv2.resize(image, new_size, interpolation=cv2.INTER_AREA)
        linear = linear @ np.diag([width / new_size[0], height / new_size[1]])
    # OpenCV puts pixel centres at integers: shift the pixel-area affine map by half a pixel each side.
    offset = np.asarray(transform.offset) + 0.5 * linear.sum(axis=1) - 0.5
    matrix = np.concatenate([linear, offset[:, None]], axis=1)
    output_height, output_width = transform.size
    return cv2.warpAffine(image, matrix, (output_width, output_height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@dataclass(frozen=True)
class SourceImage:
    """A decoded camera image on its way to the model input: a B, G, R array decoded at `decoded_scale`
    of its source size (fast), or a PIL image at full size (reference)."""

    pixels: Any
    decoded_scale: float
    resampling: Resampling


def decode_source(data: bytes, kind: str, transform: ImageTransform, resampling: Resampling = FAST,
                  field: str = "image") -> SourceImage:
    """Decode one JPEG or PNG (`kind` "jpeg" or "png") as far as `transform` needs it; InputError naming
    `field` when it is not decodable."""
    if resampling == REFERENCE:
        return SourceImage(_pil_decode(data, transform, field), 1.0, REFERENCE)
    scale = decode_scale(transform) if kind == "jpeg" else 1.0
    return SourceImage(decode_image(data, scale, field), scale, FAST)


def model_input(source: SourceImage, transform: ImageTransform, field: str = "image") -> np.ndarray:
    """The model's (H, W, 3) uint8 input under `transform`, channels in CHANNEL_ORDER."""
    if source.resampling == REFERENCE:
        return _pil_transform(source.pixels, transform)
    try:
        return apply_transform(source.pixels, transform, source.decoded_scale)
    except InputError as error:  # decoded size disagrees with the header: a corrupt file
        raise InputError(f"{field}: {error}") from None


def model_input_image(data: bytes, kind: str, transform: ImageTransform, resampling: Resampling = FAST,
                      field: str = "image") -> np.ndarray:
    """`decode_source` then `model_input`: one encoded image to its model input."""
    return model_input(decode_source(data, kind, transform, resampling, field), transform, field)


def _pil_decode(data: bytes, transform: ImageTransform, field: str):
    """The whole image as an RGB PIL image, as the reference opens it (Pillow is optional: only the
    reference resampling needs it)."""
    try:
        from PIL import Image
    except ImportError:
        raise InputError("resampling 'reference' needs Pillow (pip install pillow)") from None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"{field}: not a decodable JPEG or PNG image ({error})") from None
    if (image.height, image.width) != tuple(transform.source_size):
        raise InputError(f"{field}: decoded {image.height} x {image.width} pixels, expected "
                         f"{transform.source_size[0]} x {transform.source_size[1]}")
    return image


def _pil_transform(image, transform: ImageTransform) -> np.ndarray:
    """The reference's `img_transform_core` replayed from the transform's steps (`Image.resize` with its
    default filter, bicubic since Pillow 7; crop; flip; `rotate`, nearest), and the R, G, B result
    reversed to B, G, R, which is what mmcv's to_rgb swap makes of it."""
    from PIL import Image

    for name, arguments in transform.steps:
        if name == "resize":
            image = image.resize(arguments)
        elif name == "crop":
            image = image.crop(arguments)
        elif name == "flip":
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image = image.rotate(*arguments)
    return np.ascontiguousarray(np.asarray(image)[..., ::-1])


def _check_decoded_size(image: np.ndarray, source_size: Size, decoded_scale: float) -> None:
    # A reduced JPEG decode rounds sizes up (libjpeg), so allow one pixel.
    expected = [math.ceil(side * decoded_scale) for side in source_size]
    if image.ndim not in (2, 3) or any(abs(got - want) > 1 for got, want in zip(image.shape[:2], expected,
                                                                                strict=True)):
        raise InputError(f"image: expected {expected[0]} x {expected[1]} pixels (source {source_size[0]} x "
                         f"{source_size[1]} decoded at scale {decoded_scale}), got shape {image.shape}")


def _pair(vector: np.ndarray) -> tuple[float, float]:
    return float(vector[0]), float(vector[1])


def _pair_of_pairs(matrix: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    return _pair(matrix[0]), _pair(matrix[1])
