"""From a validated frame to the model's input tensors: decode, then the occupancy test-time transform.

Runs in a worker thread (it is CPU work) and decodes the six images in parallel on an executor; raises
GatewayError for bad images.
"""

import time
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor, wait

import cv2
import numpy as np

from occupancy import model_contract as contract
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
from service.core.errors import ErrorKind, GatewayError
from service.images import ImageHeader, read_header
from service.request_body import Frame, ImageData


def check_headers(frame: Frame, max_pixels: int) -> dict[str, ImageHeader]:
    """Every image's header, read before any decoding; TOO_LARGE for an image over `max_pixels` (a bomb)."""
    headers = {name: read_header(frame.images[name], name) for name in CAMERA_NAMES}
    for name, header in headers.items():
        if header.pixels > max_pixels:
            raise GatewayError(
                ErrorKind.TOO_LARGE,
                f"{name}: {header.width} x {header.height} = {header.pixels} pixels, over the limit "
                f"of {max_pixels}",
            )
    return headers


def prepare_inputs(
    frame: Frame, headers: Mapping[str, ImageHeader], input_size: tuple[int, int],
    executor: Executor | None = None, resampling: Resampling = FAST,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Model inputs (batch of one, `occupancy.model_contract` names) and the decode/preprocess times in ms.

    Each camera keeps its own source size; with the fast resampling a JPEG much larger than the input is
    decoded at 1/2, 1/4 or 1/8 scale, and the transform (post_rot/post_tran) stays relative to the
    source pixels. Images keep OpenCV's B, G, R: the networks' channel order. The cameras are decoded
    and warped in parallel on `executor` (a pool of its own when None); a decoded image is checked
    against its header at once and kept only until it is warped. Decode time is until the last camera
    is decoded, preprocess time the rest (both wall time).
    """
    started = time.perf_counter()
    if executor is None:
        with ThreadPoolExecutor(len(CAMERA_NAMES)) as pool:
            return prepare_inputs(frame, headers, input_size, pool, resampling)
    futures = [executor.submit(_camera_input, frame.images[name], headers[name], input_size, resampling, name)
               for name in CAMERA_NAMES]
    wait(futures)  # every camera's work has ended, also when one fails
    cameras = [future.result() for future in futures]
    decoded_at = max(decoded for _, _, decoded in cameras)
    inputs = {
        contract.IMAGES: np.stack([image for image, _, _ in cameras])[None],
        contract.INTRINSICS: frame.calibration.intrinsics_array()[None],
        contract.SENSOR2EGO: frame.calibration.sensor2ego_array()[None],
        contract.POST_ROTS: np.stack([transform.post_rot for _, transform, _ in cameras])[None],
        contract.POST_TRANS: np.stack([transform.post_tran for _, transform, _ in cameras])[None],
    }
    finished = time.perf_counter()
    return inputs, {"decode": 1000 * (decoded_at - started), "preprocess": 1000 * (finished - decoded_at)}


def _camera_input(
    data: ImageData, header: ImageHeader, input_size: tuple[int, int], resampling: Resampling, name: str
) -> tuple[np.ndarray, ImageTransform, float]:
    """One camera's model-input image (3, H, W), its transform, and when its decode ended."""
    transform = test_time_transform((header.height, header.width), input_size)
    source = _decode(data, header.kind, transform, resampling, name)
    decoded_at = time.perf_counter()
    return _warp(source, transform, name).transpose(2, 0, 1), transform, decoded_at


def _decode(data: ImageData, kind: str, transform: ImageTransform, resampling: Resampling, name: str,
            ) -> SourceImage:
    try:
        return decode_source(data, kind, transform, resampling, field=name)
    except InputError as error:
        raise GatewayError(ErrorKind.MALFORMED, str(error)) from error
    except cv2.error as error:  # OpenCV's own size limits (`occ serve` sets its pixel limit to max_pixels)
        raise GatewayError(ErrorKind.TOO_LARGE, f"{name}: more pixels than the decoder allows") from error


def _warp(source: SourceImage, transform: ImageTransform, name: str) -> np.ndarray:
    """The (H, W, 3) B, G, R model-input image of one camera."""
    try:
        return model_input(source, transform, field=name)
    except InputError as error:  # decoded size disagrees with the header: a corrupt file
        raise GatewayError(ErrorKind.MALFORMED, str(error)) from error
