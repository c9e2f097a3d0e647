"""The gateway in process (httpx against the ASGI app): API.md's answers, errors, encodings, auth, metrics."""

import asyncio
import base64
import io
import json
import math
import struct
import threading
import zlib
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_fixtures import (
    TEST_STATE,
    GatedBackend,
    build_test_model,
    calibration,
    camera_image,
    changed,
    encode,
    exact_frame_images,
    expected_inputs,
    frame_images,
    multipart_files,
    post_frame,
    reference_pipeline_inputs,
    run_model,
    serving,
    write_model,
)
from threadpoolctl import threadpool_info

from occupancy.calibration import Pose, parse_calibration
from occupancy.cameras import CAMERA_NAMES
from occupancy.classes import CLASS_NAMES, FREE_CLASS
from occupancy.encoding import decode_dense, decode_npy, decode_sparse
from occupancy.grid import OCC3D_GRID
from occupancy.network_input import REFERENCE
from occupancy.preprocess import apply_transform, test_time_transform
from service.backends.embedded import EmbeddedBackend
from service.core.config import Settings
from service.images import read_header
from service.main import create_app
from service.pipeline import Frame, check_headers, prepare_inputs

INPUT_SIZE = (32, 64)
SOURCE_SIZE = (90, 160)  # the size the calibration's intrinsics are for


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "fake", (1, 3), build_test_model(INPUT_SIZE))
    write_model(root, "fake-temporal", (2,), build_test_model(INPUT_SIZE, temporal=True))
    return root


@pytest.fixture(scope="module")
def settings(repository):
    return Settings(model_repository=repository, default_model="fake")


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def frame():
    """Six images, each camera its own size (PNG and JPEG, downscaled 2x or not, cropped differently),
    and a calibration."""
    return exact_frame_images(INPUT_SIZE), calibration(SOURCE_SIZE)


@pytest.fixture(scope="module")
def expected_grid(repository, frame):
    """The stand-in model's grid on the frame's model inputs as computed without the gateway's code."""
    images, calib = frame
    return run_model(repository / "fake" / "3" / "model.onnx", expected_inputs(images, calib, INPUT_SIZE))


# --- answers -------------------------------------------------------------------------------------------


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_numpy_blas_runs_on_one_thread_while_the_gateway_serves(settings):
    """After a LAPACK call (the inverse of a camera's ego pose) OpenBLAS's spare threads spin on the cores
    the JPEG decoder needs: the gateway holds BLAS to one thread while it serves, and gives the others
    back when it stops."""
    before = _blas_threads()
    with TestClient(create_app(settings)):
        assert _blas_threads() == {1}
    assert _blas_threads() == before


def test_dense_answer_is_the_models_grid(client, frame, expected_grid):
    response = post_frame(client, *frame)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "fake", "version": "3"}
    assert body["grid"] == {"shape": [200, 200, 16], "axes": "xyz", "range_m": OCC3D_GRID.range_m,
                            "voxel_size_m": [0.4, 0.4, 0.4]}
    assert body["classes"] == list(CLASS_NAMES) and body["free_class"] == FREE_CLASS == 17
    assert body["occupancy"]["encoding"] == "dense-uint8-zlib-base64"
    np.testing.assert_array_equal(decode_dense(body["occupancy"]["data"]), expected_grid)
    timing = body["timing_ms"]
    assert set(timing) == {"decode", "preprocess", "inference", "encode", "total"}
    assert all(value >= 0 for value in timing.values())
    assert timing["total"] >= timing["decode"] + timing["preprocess"] + timing["inference"]


def test_sparse_answer_lists_every_non_free_voxel(client, frame, expected_grid):
    response = post_frame(client, *frame, params={"encoding": "sparse"})
    assert response.status_code == 200, response.text
    voxels = response.json()["occupancy"]["voxels"]
    assert len(voxels) == int((expected_grid != FREE_CLASS).sum()) > 0
    np.testing.assert_array_equal(decode_sparse(voxels), expected_grid)


def test_npy_answer_with_model_headers(client, frame, expected_grid):
    response = post_frame(client, *frame, headers={"Accept": "application/x-npy"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npy"
    assert (response.headers["x-model-name"], response.headers["x-model-version"]) == ("fake", "3")
    np.testing.assert_array_equal(decode_npy(response.content), expected_grid)


def test_json_request_form_gives_the_same_grid(client, frame, expected_grid):
    images, calib = frame
    body = {"images": {name: base64.b64encode(data).decode() for name, data in images.items()},
            "calibration": calib}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(decode_dense(response.json()["occupancy"]["data"]), expected_grid)


def test_png_and_other_image_sizes(settings, repository):
    """Every camera its own size and scale (upscaled too), PNG and JPEG mixed: each is transformed from its
    own source size. With the reference resampling the gateway must answer the grid of the literal
    reference pipeline (Pillow; the fast path's arbitrary scales have no exact closed form)."""
    sizes = [(90, 160), (120, 200), (45, 80), (300, 400), (90, 160), (64, 64)]
    images = {name: encode(camera_image(size, seed), ".png" if seed % 2 else ".jpg")
              for seed, (name, size) in enumerate(zip(CAMERA_NAMES, sizes, strict=True))}
    calib = calibration()
    inputs = reference_pipeline_inputs(images, calib, INPUT_SIZE)
    expected = run_model(repository / "fake" / "3" / "model.onnx", inputs)
    with TestClient(create_app(changed(settings, resampling=REFERENCE))) as reference:
        response = post_frame(reference, images, calib)
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(decode_dense(response.json()["occupancy"]["data"]), expected)


def test_temporal_model_with_sequence_fields(client, frame):
    images, _ = frame
    response = post_frame(client, images, calibration(SOURCE_SIZE, temporal=True),
                          params={"model": "fake-temporal"})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == {"name": "fake-temporal", "version": "2"}


def _camera_poses(calib: dict, moved: bool) -> dict:
    """`calib` with an ego pose per camera: the frame's, or (moved) one that drives 0.4 m further and
    turns 0.5 degrees more for each camera, as cameras exposing tens of milliseconds apart see it."""
    posed = json.loads(json.dumps(calib))
    for index, name in enumerate(CAMERA_NAMES):
        step = index if moved else 0
        yaw = math.radians(30 + 0.5 * step)
        posed["cameras"][name]["ego2global"] = {"translation": [600.0 + 0.4 * step, 1647.5, 0.0],
                                                "rotation": [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]}
        posed["cameras"][name]["timestamp"] = 1533151603547590 + 8000 * step
    return posed


def test_per_camera_poses_give_the_grid_of_their_composed_extrinsics(client, frame):
    """A frame whose cameras carry their own ego poses answers as the same frame with every sensor2ego
    carried into the key camera's (CAM_FRONT_LEFT) ego by hand, inv(E_key) @ E_cam @ S_cam, and one pose."""
    images, calib = frame
    posed = _camera_poses(calib, moved=True)
    key_ego2global = Pose(**posed["cameras"]["CAM_FRONT_LEFT"]["ego2global"]).matrix()
    composed = json.loads(json.dumps(calib))
    composed["ego2global"] = posed["cameras"]["CAM_FRONT_LEFT"]["ego2global"]
    for name in CAMERA_NAMES:
        camera = posed["cameras"][name]
        by_hand = (np.linalg.inv(key_ego2global) @ Pose(**camera["ego2global"]).matrix()
                   @ Pose(**camera["sensor2ego"]).matrix())
        composed["cameras"][name]["sensor2ego"] = Pose.from_matrix(by_hand).model_dump()
    np.testing.assert_array_equal(_grid(client, images, posed), _grid(client, images, composed))


def test_per_camera_poses_change_the_grid_only_when_they_differ(client, frame, expected_grid):
    images, calib = frame
    np.testing.assert_array_equal(_grid(client, images, _camera_poses(calib, moved=False)), expected_grid)
    assert not np.array_equal(_grid(client, images, _camera_poses(calib, moved=True)), expected_grid)


def _grid(client, images, calib) -> np.ndarray:
    response = post_frame(client, images, calib)
    assert response.status_code == 200, response.text
    return decode_dense(response.json()["occupancy"]["data"])


# --- errors (API.md's table) ---------------------------------------------------------------------------


def _replace_part(images, calib, name, data):
    files = [(n, f) for n, f in multipart_files(images, calib) if n != name]
    return [*files, (name, (f"{name}.bin", data, "application/octet-stream"))]


def _assert_error(response, status, *words):
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in str(detail), (word, detail)


def test_malformed_multipart_is_400(client):
    response = client.post("/predict", content=b"not multipart at all",
                           headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    _assert_error(response, 400, "multipart")
    truncated = b'--xyz\r\nContent-Disposition: form-data; name="calibration"\r\n\r\n{}\r\n--xy'
    response = client.post("/predict", content=truncated,
                           headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    _assert_error(response, 400, "multipart")
    response = client.post("/predict", content=b"x", headers={"Content-Type": "multipart/form-data"})
    _assert_error(response, 400, "boundary")


def test_malformed_json_is_400(client, frame):
    response = client.post("/predict", content=b'{"images": {', headers={"Content-Type": "application/json"})
    _assert_error(response, 400, "JSON")
    images, calib = frame
    files = [(n, f) for n, f in multipart_files(images, calib) if n != "calibration"]
    part = ("calibration", ("c.json", b"{nope", "application/json"))
    response = client.post("/predict", files=[*files, part])
    _assert_error(response, 400, "calibration", "JSON")


def test_undecodable_image_is_400(client, frame):
    images, calib = frame
    truncated_jpeg = b"\xff\xd8\xff" + b"junk" * 50  # no start-of-frame: no size
    response = client.post("/predict", files=_replace_part(images, calib, "CAM_BACK", truncated_jpeg))
    _assert_error(response, 400, "CAM_BACK")
    # A readable PNG header over garbage pixel data: OpenCV cannot decode it.
    png = encode(camera_image((20, 30), 0), ".png")
    broken = png[:33] + bytes(len(png) - 33)
    response = client.post("/predict", files=_replace_part(images, calib, "CAM_FRONT", broken))
    _assert_error(response, 400, "CAM_FRONT")
    body = {"images": {name: "!!not base64!!" for name in CAMERA_NAMES}, "calibration": calib}
    _assert_error(client.post("/predict", json=body), 400, "images.CAM_FRONT_LEFT", "base64")


def test_body_over_the_limit_is_413(settings, frame):
    images, calib = frame
    with TestClient(create_app(changed(settings, max_body_bytes=4000))) as small:
        _assert_error(post_frame(small, images, calib), 413, "body")
        # No Content-Length (chunked): the streamed bytes are counted.
        chunks = (b"x" * 1000 for _ in range(10))
        response = small.post("/predict", content=chunks, headers={"Content-Type": "application/json"})
        _assert_error(response, 413, "body")


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height over a tiny zlib stream: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def test_pixel_bomb_is_413_before_decoding(client, frame, settings):
    images, calib = frame
    response = client.post("/predict", files=_replace_part(images, calib, "CAM_BACK_LEFT",
                                                           _png_claiming(100_000, 100_000)))
    _assert_error(response, 413, "CAM_BACK_LEFT", "pixels")
    # The same for a JPEG whose start-of-frame claims 60000 x 60000.
    jpeg = bytearray(images["CAM_FRONT"])
    sof = next(i for i in range(2, len(jpeg)) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2))
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    response = client.post("/predict", files=_replace_part(images, calib, "CAM_FRONT", bytes(jpeg)))
    _assert_error(response, 413, "CAM_FRONT", "pixels")


def test_unsupported_content_type_and_image_type_are_415(client, frame):
    _assert_error(client.post("/predict", content=b"hello", headers={"Content-Type": "text/plain"}), 415,
                  "content-type")
    _assert_error(client.post("/predict", content=b"hello"), 415, "content-type")
    images, calib = frame
    gif = b"GIF89a" + bytes(100)
    _assert_error(client.post("/predict", files=_replace_part(images, calib, "CAM_FRONT_RIGHT", gif)), 415,
                  "CAM_FRONT_RIGHT")


def test_missing_duplicate_and_unknown_parts_are_422(client, frame):
    images, calib = frame
    files = multipart_files(images, calib)
    _assert_error(client.post("/predict", files=[f for f in files if f[0] != "CAM_BACK"]), 422,
                  "missing part CAM_BACK")
    _assert_error(client.post("/predict", files=[*files, files[1]]), 422, "duplicate part CAM_FRONT")
    _assert_error(client.post("/predict", files=[*files, ("CAM_TOP", files[0][1])]), 422, "CAM_TOP")
    _assert_error(client.post("/predict", files=[f for f in files if f[0] != "calibration"]), 422,
                  "missing part calibration")
    body = {"images": {name: base64.b64encode(data).decode() for name, data in images.items()
                       if name != "CAM_BACK_RIGHT"}, "calibration": calib}
    _assert_error(client.post("/predict", json=body), 422, "CAM_BACK_RIGHT")


def _with_camera(calib, camera, **fields):
    changed = json.loads(json.dumps(calib))
    changed["cameras"][camera].update(fields)
    return changed


@pytest.mark.parametrize(("change", "words"), [
    (lambda c: _with_camera(c, "CAM_FRONT", intrinsic=[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]),
     ["calibration.cameras.CAM_FRONT.intrinsic"]),
    (lambda c: _with_camera(c, "CAM_BACK", intrinsic=[[float("nan"), 0, 1], [0, 1, 1], [0, 0, 1]]),
     ["calibration.cameras.CAM_BACK.intrinsic"]),
    (lambda c: _with_camera(c, "CAM_FRONT_LEFT", intrinsic=[[-5.0, 0, 1], [0, 5.0, 1], [0, 0, 1]]),
     ["CAM_FRONT_LEFT", "focal"]),
    (lambda c: _with_camera(c, "CAM_BACK_LEFT", sensor2ego={"translation": [0, 0, 0],
                                                            "rotation": [0, 0, 0, 0]}),
     ["CAM_BACK_LEFT.sensor2ego.rotation"]),
    (lambda c: {"cameras": {k: v for k, v in c["cameras"].items() if k != "CAM_FRONT_RIGHT"}},
     ["calibration.cameras", "CAM_FRONT_RIGHT"]),
])
def test_calibration_schema_violations_are_422(client, frame, change, words):
    images, calib = frame
    _assert_error(post_frame(client, images, change(calib)), 422, *words)


def test_duplicate_camera_in_calibration_json_is_422(client, frame):
    images, calib = frame
    text = json.dumps(calib)
    front = json.dumps(calib["cameras"]["CAM_FRONT"])
    text = text.replace('"cameras": {', f'"cameras": {{"CAM_FRONT": {front}, ', 1)
    files = [(n, f) for n, f in multipart_files(images, calib) if n != "calibration"]
    part = ("calibration", ("c.json", text.encode(), "application/json"))
    response = client.post("/predict", files=[*files, part])
    _assert_error(response, 422, "duplicate", "CAM_FRONT")


def test_temporal_model_without_sequence_fields_is_422(client, frame):
    response = post_frame(client, *frame, params={"model": "fake-temporal"})
    _assert_error(response, 422, "temporal", "ego2global", "timestamp", "sequence_id")


def test_unknown_model_is_404(client, frame):
    _assert_error(post_frame(client, *frame, params={"model": "nope"}), 404, "nope", "fake")


def test_api_keys(settings, frame):
    images, calib = frame
    with TestClient(create_app(changed(settings, api_keys=("k1", "secret-2")))) as keyed:
        for headers, status in [({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                                ({"X-API-Key": "k"}, 401), ({"Authorization": "Bearer secret-2"}, 200),
                                ({"X-API-Key": "k1"}, 200)]:
            response = post_frame(keyed, images, calib, headers=headers)
            assert response.status_code == status, (headers, response.text)
            if status == 401:
                assert response.headers["www-authenticate"] == "Bearer"
        assert keyed.get("/v1/models").status_code == 401
        assert keyed.get("/v1/models", headers={"X-API-Key": "k1"}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert keyed.get(open_path).status_code == 200


def gated(gate: threading.Event) -> tuple[list[GatedBackend], Callable]:
    """A backend factory for create_app whose backend waits at `gate`, and the list it puts it in."""
    built: list[GatedBackend] = []

    def build(settings: Settings) -> GatedBackend:
        built.append(GatedBackend(EmbeddedBackend.load(settings), gate))
        return built[-1]

    return built, build


def test_full_queue_is_503_with_retry_after(settings, frame):
    images, calib = frame
    files = multipart_files(images, calib)
    limited = changed(settings, max_concurrent=1, max_queue=1, retry_after_s=3)
    gate = threading.Event()
    backends, build = gated(gate)

    async def scenario():
        async with serving(limited, build) as client:
            try:
                first = asyncio.create_task(client.post("/predict", files=files))
                assert await asyncio.to_thread(backends[0].entered.wait, 30)  # the first holds the slot
                others = [asyncio.create_task(client.post("/predict", files=files)) for _ in range(2)]
                # While the slot is held only a refusal can answer, and the other request waits in the queue.
                done, _ = await asyncio.wait(others, timeout=30, return_when=asyncio.FIRST_COMPLETED)
                metrics = (await client.get("/metrics")).text
            finally:
                gate.set()
            return [await first, *[await other for other in others]], done, metrics

    answers, done, metrics = asyncio.run(scenario())
    assert len(done) == 1, "no request was refused while the slot was held and the queue full"
    refused = done.pop().result()
    assert sorted(answer.status_code for answer in answers) == [200, 200, 503]
    _assert_error(refused, 503, "overloaded")
    assert refused.headers["retry-after"] == "3"
    assert 'occ_requests_in_flight{backend="embedded"} 1.0' in metrics
    assert 'occ_requests_queued{backend="embedded"} 1.0' in metrics


def test_backend_slower_than_the_timeout_is_504(settings, frame):
    images, calib = frame
    gate = threading.Event()
    _, build = gated(gate)

    async def scenario():
        async with serving(changed(settings, request_timeout_s=0.2), build) as client:
            response = await client.post("/predict", files=multipart_files(images, calib))
            gate.set()  # the held inference ends before the app does
            return response

    _assert_error(asyncio.run(scenario()), 504, "timeout")


# --- other endpoints -----------------------------------------------------------------------------------


def test_models_listing(client):
    body = client.get("/v1/models").json()
    assert body["default"] == "fake"
    models = {model["name"]: model for model in body["models"]}
    assert models["fake"] == {"name": "fake", "version": "3", "versions": ["1", "3"], "config": "test-fake",
                              "input_size": list(INPUT_SIZE), "temporal": False, "backend": "embedded",
                              "default": True, "state_bytes": None, "frame_gap_s": None}
    temporal = models["fake-temporal"]
    assert temporal["temporal"] is True and temporal["frame_gap_s"] == 0.5
    assert temporal["state_bytes"] == sum(4 * math.prod(t.shape) for t in TEST_STATE) == 240


def test_health_and_readiness(client, settings):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200

    class NotAnswering(GatedBackend):
        async def ready(self):
            return False

    with TestClient(create_app(settings, lambda s: NotAnswering(EmbeddedBackend.load(s), threading.Event()))
                    ) as down:
        response = down.get("/readyz")
        assert response.status_code == 503 and "retry-after" in response.headers


def test_metrics_after_a_request(settings, frame):
    with TestClient(create_app(settings)) as fresh:
        assert post_frame(fresh, *frame).status_code == 200
        assert post_frame(fresh, *frame, params={"model": "nope"}).status_code == 404
        text = fresh.get("/metrics").text
    assert 'occ_requests_total{backend="embedded",encoding="dense",model="fake",status="200"} 1.0' in text
    assert 'occ_requests_total{backend="embedded",encoding="dense",model="unknown",status="404"} 1.0' in text
    assert 'occ_frames_total{backend="embedded",model="fake"} 1.0' in text
    for stage in ("decode", "preprocess", "inference", "encode", "total"):
        assert f'occ_stage_latency_seconds_count{{backend="embedded",stage="{stage}"}} 1.0' in text
    assert 'occ_stage_latency_seconds_bucket{backend="embedded",le="0.001",stage="total"}' in text
    assert 'occ_stage_latency_seconds_bucket{backend="embedded",le="30.0",stage="total"} 1.0' in text
    assert 'occ_model_info{backend="embedded",config="test-fake",name="fake",version="3"} 1.0' in text


def test_openapi_describes_the_multipart_form(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]
    assert set(form["required"]) == {*CAMERA_NAMES, "calibration"}
    for name in CAMERA_NAMES:
        assert form["properties"][name] == {**form["properties"][name], "type": "string", "format": "binary"}
    assert form["properties"]["calibration"]["$ref"] == "#/components/schemas/FrameCalibration"
    components = schema["components"]["schemas"]
    assert {"FrameCalibration", "PredictJSONBody", "CameraCalibration", "Pose"} <= set(components)
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/PredictJSONBody"
    assert {"model", "encoding"} <= {p["name"] for p in schema["paths"]["/predict"]["post"]["parameters"]}
    assert client.get("/docs").status_code == 200


# --- image headers and reduced decoding ----------------------------------------------------------------


@pytest.mark.parametrize("size", [(90, 160), (1, 1), (333, 517)])
def test_header_sizes_match_decoded_sizes(size):
    image = camera_image(size, 1)
    for data in (encode(image, ".jpg"), encode(image, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
                 encode(image[..., 0], ".jpg"), encode(image, ".png")):
        header = read_header(data, "part")
        assert (header.height, header.width) == cv2.imdecode(np.frombuffer(data, np.uint8), -1).shape[:2]


def test_reduced_decoding_keeps_the_geometry(settings):
    # 1600 x 900 -> 256 x 704 decodes at 1/2; it must match a full decode warped by the same transform.
    images = frame_images((900, 1600))
    frame = Frame(images, parse_calibration(calibration()))
    inputs, _ = prepare_inputs(frame, check_headers(frame, settings.max_pixels), (256, 704))
    np.testing.assert_allclose(inputs["post_rots"][0, 0], np.diag([0.44, 0.44, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(inputs["post_trans"][0, 0], [0.0, -140.0, 0.0])
    transform = test_time_transform((900, 1600), (256, 704))
    for index, name in enumerate(CAMERA_NAMES):
        full = cv2.imdecode(np.frombuffer(images[name], np.uint8), cv2.IMREAD_COLOR)
        reference = apply_transform(full, transform).transpose(2, 0, 1).astype(np.float64)
        difference = np.abs(inputs["images"][0, index] - reference)
        assert difference.mean() < 1.5, (name, difference.mean())


def test_npy_response_is_a_plain_npy_file(client, frame, expected_grid):
    response = post_frame(client, *frame, headers={"Accept": "text/html, application/x-npy;q=0.9"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert array.dtype == np.uint8 and array.shape == (200, 200, 16)
    np.testing.assert_array_equal(array, expected_grid)


@pytest.mark.parametrize("spinning", [False, True])
def test_onnx_runtime_threads_spin_only_when_asked(settings, spinning):
    """Off by default: spinning intra-op threads take the cores from the next request's decoding."""
    assert Settings(model_repository=settings.model_repository).ort_spinning is False
    configured = settings.model_copy(update={"ort_spinning": spinning})
    backend = EmbeddedBackend.load(configured)
    try:
        entry = backend._options.get_session_config_entry("session.intra_op.allow_spinning")
    finally:
        asyncio.run(backend.close())
    assert entry == ("1" if spinning else "0")
