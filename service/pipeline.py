"""From a validated frame to the model's input tensors: decode, then the occupancy test-time transform.

Runs in a worker thread (it is CPU work); raises HTTPException for bad images.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException, status

from occupancy import model_contract as contract
from occupancy.calibration import FrameCalibration
from occupancy.cameras import CAMERA_NAMES
from occupancy.errors import InputError
from occupancy.preprocess import (
    FAST,
    ImageTransform,
    Resampling,
    SourceImage,
    decode_source,
    model_input,
    test_time_transform,
)
from service.images import ImageHeader, read_header


@dataclass(frozen=True)
class Frame:
    """One request's frame: the encoded image of every camera (CAMERA_NAMES keys) and its calibration."""

    images: Mapping[str, bytes]
    calibration: FrameCalibration


def check_headers(frame: Frame, max_pixels: int) -> dict[str, ImageHeader]:
    """Every image's header, read before any decoding; 413 for an image over `max_pixels` (a bomb)."""
    headers = {name: read_header(frame.images[name], name) for name in CAMERA_NAMES}
    for name, header in headers.items():
        if header.pixels > max_pixels:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"{name}: {header.width} x {header.height} = {header.pixels} pixels, over the limit "
                f"of {max_pixels}",
            )
    return headers


def prepare_inputs(
    frame: Frame, headers: Mapping[str, ImageHeader], input_size: tuple[int, int],
    resampling: Resampling = FAST,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Model inputs (batch of one, `occupancy.model_contract` names) and the decode/preprocess times in ms.

    Each camera keeps its own source size; with the fast resampling a JPEG much larger than the input is
    decoded at 1/2, 1/4 or 1/8 scale, and the transform (post_rot/post_tran) stays relative to the
    source pixels. Images keep OpenCV's B, G, R: the networks' channel order.
    """
    started = time.perf_counter()
    transforms = {name: test_time_transform((h.height, h.width), input_size) for name, h in headers.items()}
    decoded = {name: _decode(frame.images[name], headers[name].kind, transforms[name], resampling, name)
               for name in CAMERA_NAMES}
    decoded_at = time.perf_counter()
    images = np.stack([_warp(decoded[name], transforms[name], name).transpose(2, 0, 1)
                       for name in CAMERA_NAMES])
    inputs = {
        contract.IMAGES: images[None],
        contract.INTRINSICS: frame.calibration.intrinsics_array()[None],
        contract.SENSOR2EGO: frame.calibration.sensor2ego_array()[None],
        contract.POST_ROTS: np.stack([transforms[name].post_rot for name in CAMERA_NAMES])[None],
        contract.POST_TRANS: np.stack([transforms[name].post_tran for name in CAMERA_NAMES])[None],
    }
    finished = time.perf_counter()
    return inputs, {"decode": 1000 * (decoded_at - started), "preprocess": 1000 * (finished - decoded_at)}


def _decode(data: bytes, kind: str, transform: ImageTransform, resampling: Resampling, name: str,
            ) -> SourceImage:
    try:
        return decode_source(data, kind, transform, resampling, field=name)
    except InputError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from error


def _warp(source: SourceImage, transform: ImageTransform, name: str) -> np.ndarray:
    """The (H, W, 3) B, G, R model-input image of one camera."""
    try:
        return model_input(source, transform, field=name)
    except InputError as error:  # decoded size disagrees with the header: a corrupt file
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(error)) from error
