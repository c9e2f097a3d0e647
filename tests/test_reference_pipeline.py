"""The networks see what the reference pipelines feed theirs: B, G, R channels normalised as mmcv does it.

The reference (BEVDet/FlashOCC `PrepareImageInputs` at test time) is re-implemented literally, with
Pillow and numpy (service_fixtures.reference_camera_input, and `mmcv_imnormalize` here): PIL opens the
image (R, G, B), resizes it to the input width with PIL's default filter, crops the bottom rows, and
mmcv's `imnormalize(img, mean, std, to_rgb=True)` swaps the channels once more before subtracting the
mean and multiplying by 1 / std.
"""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from service_fixtures import (
    build_test_model,
    calibration,
    camera_image,
    encode,
    frame_images,
    multipart_files,
    reference_camera_input,
    reference_pipeline_inputs,
    run_model,
    write_model,
)
from tiny_dataset import write_tiny_dataset

from occupancy import model_contract as contract
from occupancy.calibration import parse_calibration
from occupancy.cameras import CAMERA_NAMES
from occupancy.encoding import decode_dense
from occupancy.errors import InputError
from occupancy.network_input import FAST, REFERENCE
from service.core.config import Settings
from service.main import create_app
from service.pipeline import Frame, check_headers, prepare_inputs
from training.data.dataset import OccupancyDataset, normalize_images

INPUT_SIZE = (256, 704)
MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def reference_pixels(data: bytes, input_size: tuple[int, int]) -> np.ndarray:
    """PIL's H x W x 3 R, G, B image after the reference test-time resize and crop (crop_h = (0, 0))."""
    return reference_camera_input(data, input_size)[0]


def mmcv_imnormalize(image: np.ndarray) -> np.ndarray:
    """mmcv's imnormalize(img, mean, std, to_rgb=True): swap channels 0 and 2, subtract, multiply by 1/std."""
    image = image.astype(np.float32)[..., ::-1]
    stdinv = 1 / np.float64(STD.reshape(1, -1))
    return ((image - MEAN) * stdinv.astype(np.float32)).transpose(2, 0, 1)


def gateway_network_input(images: dict[str, bytes], resampling, input_size=INPUT_SIZE) -> np.ndarray:
    """6 x 3 x H x W: what the gateway sends (its preprocessing) normalised as the exported graph does."""
    frame = Frame(images, parse_calibration(calibration(reference_size(images))))
    inputs, _ = prepare_inputs(frame, check_headers(frame, 2**30), input_size, resampling=resampling)
    return normalize_images(torch.from_numpy(inputs[contract.IMAGES][0])).numpy()


def reference_size(images: dict[str, bytes]) -> tuple[int, int]:
    width, height = Image.open(io.BytesIO(images["CAM_FRONT"])).size
    return height, width


@pytest.fixture(scope="module")
def jpeg_frame() -> dict[str, bytes]:
    return frame_images((900, 1600))


def test_reference_resampling_gives_the_reference_network_input(jpeg_frame):
    ours = gateway_network_input(jpeg_frame, REFERENCE)
    for index, name in enumerate(CAMERA_NAMES):
        theirs = mmcv_imnormalize(reference_pixels(jpeg_frame[name], INPUT_SIZE))
        np.testing.assert_allclose(ours[index], theirs, rtol=0, atol=1e-5, err_msg=name)


def test_lossless_frames_at_the_input_size_give_the_reference_input_on_the_fast_path():
    """PNGs of the model's input size, as the issue's check sends: no resampling at all, so even the
    fast path must equal the reference to the last bit of its normalisation."""
    images = {name: encode(camera_image(INPUT_SIZE, seed), ".png") for seed, name in enumerate(CAMERA_NAMES)}
    ours = gateway_network_input(images, FAST)
    for index, name in enumerate(CAMERA_NAMES):
        theirs = mmcv_imnormalize(reference_pixels(images[name], INPUT_SIZE))
        np.testing.assert_allclose(ours[index], theirs, rtol=0, atol=1e-5, err_msg=name)
        swapped = mmcv_imnormalize(reference_pixels(images[name], INPUT_SIZE)[..., ::-1])
        assert np.abs(ours[index] - swapped).mean() > 0.1  # the channel order matters to the test


def test_the_fast_path_stays_close_to_the_reference(jpeg_frame):
    """Reduced JPEG decoding and OpenCV's resampling against PIL's bicubic: a small difference per pixel
    (docs/preprocessing.md has its effect on the grids)."""
    fast, reference = gateway_network_input(jpeg_frame, FAST), gateway_network_input(jpeg_frame, REFERENCE)
    difference = np.abs(fast - reference)
    assert difference.mean() < 0.05 and np.percentile(difference, 99) < 0.3


def test_gateway_answers_the_grid_of_the_reference_input(tmp_path, jpeg_frame):
    """The same frame through the gateway and through the reference preprocessing into the same model (a
    stand-in that sees every channel, row and column) gives the same grid."""
    model = build_test_model(INPUT_SIZE)
    write_model(tmp_path, "pixels", (1,), model)
    app = create_app(Settings(model_repository=tmp_path, watch_interval_s=0, resampling=REFERENCE))
    frame = calibration((900, 1600))
    with _client(app) as client:
        response = client.post("/predict", files=multipart_files(jpeg_frame, frame))
    assert response.status_code == 200, response.text
    grid = decode_dense(response.json()["occupancy"]["data"])
    inputs = reference_pipeline_inputs(jpeg_frame, frame, INPUT_SIZE)
    np.testing.assert_allclose(inputs[contract.POST_TRANS][0, 0], [0.0, -140.0, 0.0])  # DESIGN.md's numbers
    expected = run_model(tmp_path / "pixels" / "1" / "model.onnx", inputs)
    np.testing.assert_array_equal(grid, expected)


@pytest.mark.parametrize("resampling", [FAST, REFERENCE])
def test_dataset_and_gateway_make_identical_network_inputs(tmp_path, resampling):
    root = write_tiny_dataset(tmp_path, scenes=2, frames=1, image_size=(90, 160))
    dataset = OccupancyDataset(root, "val", (32, 64), resampling=resampling)
    entry = dataset.samples[0]
    for name in CAMERA_NAMES:  # JPEGs, so the fast path decodes them reduced
        path = root / entry["cameras"][name]["image_path"]
        path.write_bytes(encode(camera_image((90, 160), CAMERA_NAMES.index(name)), ".jpg"))
    images = {name: (root / entry["cameras"][name]["image_path"]).read_bytes() for name in CAMERA_NAMES}
    frame = Frame(images, parse_calibration(calibration((90, 160))))
    inputs, _ = prepare_inputs(frame, check_headers(frame, 2**30), (32, 64), resampling=resampling)
    np.testing.assert_array_equal(dataset[0].images.numpy(), inputs[contract.IMAGES][0])


def test_a_model_exported_for_rgb_images_is_refused_with_the_reason(tmp_path):
    import onnx

    model = onnx.load_from_string(build_test_model((32, 64)))
    props = {p.key: p.value for p in model.metadata_props if p.key != contract.META_CHANNEL_ORDER}
    onnx.helper.set_model_props(model, props)  # what every export before the fix wrote
    write_model(tmp_path, "old", (1,), model.SerializeToString())
    app = create_app(Settings(model_repository=tmp_path, watch_interval_s=0))
    with pytest.raises(InputError, match=r"exported for images in R, G, B order.*re-export it"), _client(app):
        pass
    assert json.loads(contract.ModelMetadata.from_props(
        {p.key: p.value for p in onnx.load_from_string(build_test_model((32, 64))).metadata_props},
        "new").to_props()[contract.META_CHANNEL_ORDER]) == "bgr"


def _client(app):
    from fastapi.testclient import TestClient

    return TestClient(app)
