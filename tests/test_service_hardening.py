"""The gateway under hostile or unlucky requests (issue 16): limits that cannot be bypassed, work bounded
before admission, slots held while work runs, disconnecting clients, EXIF, hostile JSON, a version swap
during a request, what a 503 reveals, and what the metrics count."""

import asyncio
import base64
import json
import logging
import subprocess
import sys
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_fixtures import (
    build_test_model,
    calibration,
    camera_image,
    changed,
    encode,
    frame_images,
    gateway_inputs,
    jpeg_with_a_fake_frame,
    multipart_files,
    post_frame,
    run_model,
    serving,
    with_exif_orientation,
    write_model,
)

from occupancy.encoding import decode_dense
from service.backends.base import BackendUnavailable
from service.backends.embedded import EmbeddedBackend
from service.core.config import Settings
from service.main import create_app

INPUT_SIZE = (32, 64)
SOURCE_SIZE = (90, 160)
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def frame():
    return frame_images(SOURCE_SIZE), calibration(SOURCE_SIZE)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "fake", (1,), build_test_model(INPUT_SIZE))
    return root


@pytest.fixture(scope="module")
def settings(repository):
    return Settings(model_repository=repository, default_model="fake", watch_interval_s=0)


@pytest.fixture(scope="module")
def client(settings):
    """The gateway on a one-model repository, in this process; no version watching."""
    with TestClient(create_app(settings)) as gateway:
        yield gateway


def json_body(images, calib) -> dict:
    """The application/json form of a frame (a copy: tests change it)."""
    return {"images": {name: base64.b64encode(data).decode() for name, data in images.items()},
            "calibration": json.loads(json.dumps(calib))}


def assert_error(response, status, *words, longest=1000):
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert len(detail) <= longest, len(detail)
    for word in words:
        assert word in detail, (word, detail)


def grid(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return decode_dense(response.json()["occupancy"]["data"])


# --- 1. the pixel limit ---------------------------------------------------------------------------------


def test_a_decoy_frame_behind_stuffed_bytes_does_not_pass_the_pixel_limit(settings, frame):
    """The header shows a decoy 8 x 8 frame to a reader that takes FF 00 for a marker; libjpeg decodes the
    real 300 x 400 one. Over a 200 x 200 limit that is a 413 before decoding (it was a 400 after it)."""
    images, calib = frame
    crafted = jpeg_with_a_fake_frame(encode(camera_image((300, 400), 7)))
    with TestClient(create_app(changed(settings, max_pixels=200 * 200))) as small:
        response = post_frame(small, {**images, "CAM_BACK": crafted}, calib)
    assert_error(response, 413, "CAM_BACK", "400 x 300", "pixels")


def test_opencv_refuses_what_the_header_check_missed():
    """The second cap: with OpenCV's own limit set (as `occ serve` sets it from OCC_MAX_PIXELS), an image
    whose header was misread as small is refused by the decoder with a 413 kind, not decoded."""
    code = """
import sys
from service.cli import limit_opencv_pixels
limit_opencv_pixels(1000)
from service_fixtures import calibration, camera_image, encode
from occupancy.calibration import parse_calibration
from occupancy.cameras import CAMERA_NAMES
from service.core.errors import ErrorKind, GatewayError
from service.images import ImageHeader
from service.pipeline import Frame, prepare_inputs
images = {name: encode(camera_image((90, 160), 0)) for name in CAMERA_NAMES}
lying = {name: ImageHeader("jpeg", 9, 16) for name in CAMERA_NAMES}
try:
    prepare_inputs(Frame(images, parse_calibration(calibration((90, 160)))), lying, (8, 16))
except GatewayError as error:
    assert error.kind is ErrorKind.TOO_LARGE and "CAM_FRONT_LEFT" in error.detail, error
    sys.exit(0)
sys.exit("decoded")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": ":".join(sys.path)})
    assert result.returncode == 0, result.stdout + result.stderr


# --- 2. bounded work before admission ---------------------------------------------------------------------


def test_a_part_count_bomb_is_413_with_a_short_answer(client, frame):
    images, calib = frame
    boundary = "bomb"
    part = '--{boundary}\r\nContent-Disposition: form-data; name="p{index}"\r\n\r\nx\r\n'
    tiny = "".join(part.format(boundary=boundary, index=index) for index in range(20_000))
    response = client.post("/predict", content=f"{tiny}--{boundary}--\r\n".encode(),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_error(response, 413, "more than 16 multipart parts", longest=100)
    # Under the part limit, unknown names are listed only up to a few.
    strays = [(f"stray{i}", ("s.bin", b"x", "application/octet-stream")) for i in range(9)]
    response = client.post("/predict", files=[*multipart_files(images, calib), *strays])
    assert_error(response, 422, "stray0", "and 4 more unexpected", longest=400)
    # The JSON form has no parts: its unknown image keys and calibration fields are listed up to a few.
    body = json_body(images, calib)
    body["images"].update({f"CAM_{i}": "" for i in range(10_000)})
    body["calibration"]["cameras"].update({f"CAM_{i}": {} for i in range(10_000)})
    assert_error(client.post("/predict", json=body), 422, "more", longest=1000)


def test_a_body_not_received_in_time_is_408(settings):
    never = asyncio.Event()

    async def stalled():
        yield b'{"images": '
        await never.wait()

    async def scenario():
        async with serving(changed(settings, body_timeout_s=0.2)) as gateway:
            # The guard only keeps a broken gateway from hanging the suite: 0.2 s is the limit under test.
            return await asyncio.wait_for(gateway.post("/predict", content=stalled(), headers=JSON), 30)

    assert_error(asyncio.run(scenario()), 408, "body", "upload timeout")


def test_uploads_beyond_the_limit_are_503_at_once(settings, frame):
    """With one upload allowed, a second body is refused while the first is still arriving."""
    images, calib = frame
    body = json.dumps(json_body(images, calib)).encode()

    async def scenario():
        arriving, release = asyncio.Event(), asyncio.Event()

        async def slow_body():
            yield body[:100]
            arriving.set()
            await release.wait()
            yield body[100:]

        async with serving(changed(settings, max_uploads=1, retry_after_s=4)) as gateway:
            first = asyncio.create_task(gateway.post("/predict", content=slow_body(), headers=JSON))
            await arriving.wait()
            second = await gateway.post("/predict", content=body, headers=JSON)
            release.set()
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.status_code == 200, first.text
    assert_error(second, 503, "uploads")
    assert second.headers["retry-after"] == "4"


# --- 3. a timeout keeps the slot until the work stops -----------------------------------------------------


class BlockedBackend:
    """The real backend, whose first inference blocks its thread until `release` is set, as a running
    ONNX Runtime call would; counts the inferences that started."""

    def __init__(self, inner):
        self.inner, self.kind, self.models = inner, inner.kind, inner.models
        self.release, self.returned = threading.Event(), asyncio.Event()
        self.started = 0

    async def infer(self, model, inputs):
        self.started += 1
        if self.started == 1:
            await asyncio.to_thread(self.release.wait)
            self.returned.set()
        return await self.inner.infer(model, inputs)

    async def ready(self):
        return True

    async def close(self):
        await self.inner.close()


def test_a_timeout_keeps_the_slot_until_the_stage_ends(settings, frame):
    """One slot, a 1 s timeout, an inference that runs on: the first request is answered 504 at its
    deadline, but its slot stays taken (in flight 1) until the inference really ends, so a second request
    waits and times out without starting an inference of its own. Once the first inference ends, the
    slot is free again and a third request is answered."""
    files = multipart_files(*frame)
    backends = []

    def build(s):
        backends.append(BlockedBackend(EmbeddedBackend.load(s)))
        return backends[0]

    async def scenario():
        limited = changed(settings, max_concurrent=1, max_queue=1, request_timeout_s=1.0)
        async with serving(limited, build) as gateway:
            first = await gateway.post("/predict", files=files)
            in_flight = (await gateway.get("/metrics")).text
            second = await gateway.post("/predict", files=files)
            started_while_blocked = backends[0].started
            backends[0].release.set()
            await asyncio.wait_for(backends[0].returned.wait(), 30)  # a guard against a hang, not a timing
            third = await gateway.post("/predict", files=files)
            return first, in_flight, second, started_while_blocked, third

    first, in_flight, second, started_while_blocked, third = asyncio.run(scenario())
    assert_error(first, 504, "timeout")
    assert 'occ_requests_in_flight{backend="embedded"} 1.0' in in_flight
    assert_error(second, 504, "timeout")
    assert started_while_blocked == 1
    assert third.status_code == 200, third.text


# --- 3b. a client that disconnects ------------------------------------------------------------------------


def test_a_disconnected_client_is_not_computed_for_and_counted_499(settings, frame):
    """An ASGI client that is gone once its body is sent: no inference runs for it, and
    occ_requests_total counts it with status 499, not 200."""
    files = multipart_files(*frame)
    import httpx

    request = httpx.Request("POST", "http://gateway/predict", files=files)
    body = request.read()
    inferences = []

    class Counting(BlockedBackend):
        async def infer(self, model, inputs):
            inferences.append(model.name)
            return await self.inner.infer(model, inputs)

    async def scenario():
        app = create_app(settings, lambda s: Counting(EmbeddedBackend.load(s)))
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])
        sent = []

        async def receive():
            return next(messages, {"type": "http.disconnect"})

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
                 "client": ("127.0.0.1", 5000), "server": ("gateway", 80), "root_path": ""}
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g") as c:
                metrics = (await c.get("/metrics")).text
        return sent, metrics

    sent, metrics = asyncio.run(scenario())
    assert inferences == []
    assert sent[0]["status"] == 499
    assert 'occ_requests_total{backend="embedded",encoding="dense",model="fake",status="499"} 1.0' in metrics
    assert 'status="200"' not in metrics


# --- 4. EXIF orientation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", [3, 6])
def test_exif_orientation_does_not_turn_the_pixels(client, frame, repository, orientation):
    """Calibration is for the sensor's raw pixels: an image tagged Orientation 3 (turned 180 degrees) or 6
    (90 degrees) gives the grid of the same image untagged."""
    images, calib = frame
    model = repository / "fake" / "1" / "model.onnx"
    expected = run_model(model, gateway_inputs(images, calib, INPUT_SIZE))
    tagged = {name: with_exif_orientation(data, orientation) for name, data in images.items()}
    np.testing.assert_array_equal(grid(post_frame(client, tagged, calib)), expected)


# --- 5. valid but hostile JSON ------------------------------------------------------------------------------


def test_a_5000_digit_integer_is_422_naming_the_field_in_both_forms(client, frame):
    images, calib = frame
    def huge(document: dict) -> str:
        return json.dumps(document).replace('"timestamp": 1', '"timestamp": ' + "9" * 5000)

    calib = {**calib, "timestamp": 1}
    files = [(n, f) for n, f in multipart_files(images, calib) if n != "calibration"]
    part = ("calibration", ("c.json", huge(calib).encode(), "application/json"))
    assert_error(client.post("/predict", files=[*files, part]), 422, "calibration.timestamp", "integer")
    response = client.post("/predict", content=huge(json_body(images, calib)), headers=JSON)
    assert_error(response, 422, "body.calibration.timestamp", "integer")


def test_100000_nested_brackets_are_400_in_both_forms(client, frame):
    images, calib = frame
    deep = "[" * 100_000 + "]" * 100_000
    files = [(n, f) for n, f in multipart_files(images, calib) if n != "calibration"]
    part = ("calibration", ("c.json", f'{{"cameras": {deep}}}'.encode(), "application/json"))
    assert_error(client.post("/predict", files=[*files, part]), 400, "calibration", "nested deeper than 16")
    response = client.post("/predict", content=f'{{"images": {deep}}}'.encode(), headers=JSON)
    assert_error(response, 400, "body", "nested deeper than 16")


# --- 6. a version swap during a request ---------------------------------------------------------------------


def test_a_version_swap_to_another_input_size_during_a_request(tmp_path, frame, monkeypatch):
    """Version 2 (another input size) is swapped in after the request made its tensors for version 1:
    version 1 still answers it (it was a 500), and the next request gets version 2."""
    import service.api.routes.predict as predict_route

    write_model(tmp_path, "fake", (1,), build_test_model(INPUT_SIZE))
    backends = []
    real_prepare = predict_route.prepare_inputs

    def prepare_then_swap(*args):
        prepared = real_prepare(*args)
        version_2 = tmp_path / "fake" / "2"
        version_2.mkdir(exist_ok=True)
        (version_2 / "model.onnx").write_bytes(build_test_model((64, 128)))
        assert backends[0].refresh() == ["fake"]
        return prepared

    def build(s):
        backends.append(EmbeddedBackend.load(s))
        return backends[0]

    monkeypatch.setattr(predict_route, "prepare_inputs", prepare_then_swap)
    with TestClient(create_app(Settings(model_repository=tmp_path, watch_interval_s=0), build)) as gateway:
        during = post_frame(gateway, *frame)
        monkeypatch.setattr(predict_route, "prepare_inputs", real_prepare)
        after = post_frame(gateway, *frame)
    assert during.status_code == 200, during.text
    assert during.json()["model"]["version"] == "1"
    assert after.status_code == 200 and after.json()["model"]["version"] == "2"


# --- 7. what a 503 tells the client, what the log and the metrics get ---------------------------------


class Unavailable(BlockedBackend):
    async def infer(self, model, inputs):
        raise BackendUnavailable("triton at 10.1.2.3:8001: failed to connect to all addresses")


def test_a_503_does_not_reveal_the_backend_address(settings, frame, caplog):
    with caplog.at_level(logging.WARNING, logger="service"), \
            TestClient(create_app(changed(settings, retry_after_s=2),
                                  lambda s: Unavailable(EmbeddedBackend.load(s)))) as down:
        response = post_frame(down, *frame)
    assert_error(response, 503, "unavailable")
    assert response.headers["retry-after"] == "2"
    assert "10.1.2.3" not in response.text and "8001" not in response.text
    assert "10.1.2.3:8001" in caplog.text  # the operator still learns why


def test_401_and_framework_422_are_counted(settings, frame):
    with TestClient(create_app(changed(settings, api_keys=("k1",)))) as keyed:
        assert post_frame(keyed, *frame).status_code == 401
        key = {"X-API-Key": "k1"}
        assert post_frame(keyed, *frame, headers=key, params={"encoding": "bogus-" * 50}).status_code == 422
        assert post_frame(keyed, *frame, headers=key, params={"model": "nope"}).status_code == 404
        text = keyed.get("/metrics").text
    assert 'occ_requests_total{backend="embedded",encoding="dense",model="fake",status="401"} 1.0' in text
    # A client cannot mint label values: an unknown encoding is "invalid", an unknown model "unknown".
    assert 'occ_requests_total{backend="embedded",encoding="invalid",model="fake",status="422"} 1.0' in text
    assert 'occ_requests_total{backend="embedded",encoding="dense",model="unknown",status="404"} 1.0' in text


def test_a_rollback_is_logged(tmp_path, caplog):
    write_model(tmp_path, "fake", (1, 3), build_test_model(INPUT_SIZE))
    backend = EmbeddedBackend.load(Settings(model_repository=tmp_path, watch_interval_s=0))
    try:
        (tmp_path / "fake" / "3" / "model.onnx").unlink()
        with caplog.at_level(logging.INFO, logger="service"):
            assert backend.refresh() == ["fake"]
        assert backend.models["fake"].version == "1"
        assert "version 3 disappeared from the repository, rolled back to version 1" in caplog.text
        assert [r.levelno for r in caplog.records if "rolled back" in r.message] == [logging.WARNING]
    finally:
        asyncio.run(backend.close())

