"""The client library against the gateway: in-process (FastAPI's TestClient), and `occ predict` / `occ bench`
against a real `occ serve` on a free loopback port, with the stand-in model of service_fixtures."""

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from service_fixtures import (
    GatedBackend,
    build_test_model,
    calibration,
    frame_images,
    gateway_inputs,
    run_model,
    write_model,
)

from clients.bench import BenchResult, bench, require_loopback
from clients.client import GatewayError, OccupancyClient, build_request, parse_server_timing
from clients.dataset import dataset_frame
from clients.local_gateway import running_gateway
from occ.cli import main
from occupancy.calibration import parse_calibration
from occupancy.cameras import CAMERA_NAMES
from occupancy.errors import InputError
from service.backends.embedded import EmbeddedBackend
from service.core.config import Settings
from service.main import create_app

INPUT_SIZE = (128, 352)
SOURCE_SIZE = (450, 800)  # small JPEGs keep the tests fast; the calibration matches them


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    model_dir = write_model(root, "fake", (1,), build_test_model(INPUT_SIZE))
    return root, model_dir / "1" / "model.onnx"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A two-sample data root in the layout of `occ prepare`: images, index, a labels.npz."""
    root = tmp_path_factory.mktemp("data")
    frame = calibration(SOURCE_SIZE, temporal=True)
    samples = []
    for number in range(2):
        images = frame_images(SOURCE_SIZE) if number == 0 else dict(zip(CAMERA_NAMES, reversed(
            frame_images(SOURCE_SIZE).values()), strict=True))
        cameras = {}
        for name in CAMERA_NAMES:
            path = f"samples/{name}/{number}.jpg"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(images[name])
            cameras[name] = {**frame["cameras"][name], "image_path": path, "timestamp": 7}
        labels = f"gts/scene-1/token-{number}/labels.npz"
        (root / labels).parent.mkdir(parents=True)
        semantics = np.full((200, 200, 16), 17, np.uint8)
        semantics[90:110, 90:110, :3] = 11
        np.savez(root / labels, semantics=semantics, mask_camera=np.ones_like(semantics))
        samples.append({"token": f"token-{number}", "scene_name": "scene-1", "timestamp": 1000 + number,
                        "ego2global": frame["ego2global"], "cameras": cameras, "occ_path": labels})
    (root / "occ_index_val.json").write_text(json.dumps({"format": 1, "split": "val", "samples": samples}))
    return root


@pytest.fixture(scope="module")
def client(repository):
    settings = Settings(model_repository=repository[0], default_model="fake", watch_interval_s=0)
    with TestClient(create_app(settings)) as http, OccupancyClient("http://testserver", http=http) as occ:
        yield occ


def test_every_encoding_gives_the_reference_grid(client, repository):
    images, frame = frame_images(SOURCE_SIZE), calibration(SOURCE_SIZE)
    expected = run_model(repository[1], gateway_inputs(images, frame, INPUT_SIZE))
    assert (expected != 17).any() and (expected == 17).any()
    for encoding in ("dense", "sparse", "npy"):
        prediction = client.predict(images, parse_calibration(frame), encoding=encoding)
        assert prediction.grid.dtype == np.uint8 and prediction.grid.shape == (200, 200, 16)
        assert np.array_equal(prediction.grid, expected), encoding
        assert (prediction.model, prediction.version) == ("fake", "1")
        assert set(prediction.timing_ms) == {"decode", "preprocess", "inference", "encode", "total"}
        assert prediction.round_trip_ms > 0
        assert sum(prediction.histogram().values()) == expected.size
        assert prediction.histogram()["free"] == np.count_nonzero(expected == 17)


def test_images_as_files_and_calibration_as_a_mapping(client, tmp_path):
    images, frame = frame_images(SOURCE_SIZE), calibration(SOURCE_SIZE)
    paths = {}
    for name, data in images.items():
        paths[name] = tmp_path / f"{name}.jpg"
        paths[name].write_bytes(data)
    from_files = client.predict(paths, frame, model="fake")
    assert np.array_equal(from_files.grid, client.predict(images, parse_calibration(frame)).grid)
    with pytest.raises(InputError, match=r"images\.CAM_BACK"):
        client.predict({**paths, "CAM_BACK": tmp_path / "missing.jpg"}, frame)


def test_gateway_errors_carry_status_and_detail(client):
    images, frame = frame_images(SOURCE_SIZE), calibration(SOURCE_SIZE)
    bad_focal = json.loads(json.dumps(frame))
    bad_focal["cameras"]["CAM_FRONT"]["intrinsic"][0][0] = -5.0
    with pytest.raises(GatewayError) as caught:
        client.predict(images, bad_focal)
    assert caught.value.status == 422 and "cameras.CAM_FRONT.intrinsic" in caught.value.detail
    assert "422" in str(caught.value)

    missing = {name: data for name, data in images.items() if name != "CAM_BACK_LEFT"}
    with pytest.raises(GatewayError) as caught:
        client.predict(missing, frame)
    assert caught.value.status == 422 and "CAM_BACK_LEFT" in caught.value.detail

    with pytest.raises(GatewayError) as caught:
        client.predict(images, frame, model="no-such-model")
    assert caught.value.status == 404 and "no-such-model" in caught.value.detail


def test_models_and_ready(client):
    assert client.ready()
    listing = client.models()
    assert listing["default"] == "fake"
    assert [(m["name"], m["input_size"]) for m in listing["models"]] == [("fake", list(INPUT_SIZE))]


def test_dataset_frame_reads_the_index(data_root, client):
    frame = dataset_frame(data_root, "val", token="token-1")
    assert frame.images["CAM_FRONT"] == data_root / "samples/CAM_FRONT/1.jpg"
    assert frame.labels == data_root / "gts/scene-1/token-1/labels.npz"
    assert (frame.calibration.sequence_id, frame.calibration.timestamp) == ("scene-1", 1001)
    expected = parse_calibration(calibration(SOURCE_SIZE))
    assert np.allclose(frame.calibration.intrinsics_array(), expected.intrinsics_array())
    assert np.allclose(frame.calibration.sensor2ego_array(), expected.sensor2ego_array(), atol=1e-6)
    assert dataset_frame(data_root, index=-1).token == "token-1"
    first = dataset_frame(data_root)
    sent = client.predict(first.images, first.calibration)
    assert np.array_equal(sent.grid, client.predict(frame_images(SOURCE_SIZE), calibration(SOURCE_SIZE)).grid)
    with pytest.raises(InputError, match="--index 5"):
        dataset_frame(data_root, index=5)
    with pytest.raises(InputError, match=r"split: expected one of train, val, got .test."):
        dataset_frame(data_root, "test")


def test_server_timing_header_and_loopback_guard():
    assert parse_server_timing("decode;dur=1.25, total;dur=9.5") == {"decode": 1.25, "total": 9.5}
    for url in ("http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:8000"):
        require_loopback(url)
    for url in ("http://example.com", "http://10.0.0.1:8000"):
        with pytest.raises(InputError, match="--url"):
            require_loopback(url)


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    """`occ serve` on a free loopback port; always stopped afterwards."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with running_gateway("--repository", str(repository[0]), log_path=log_path) as url:
        yield url


@pytest.mark.integration
def test_occ_predict_end_to_end(server, repository, data_root, tmp_path, capsys):
    images, frame = frame_images(SOURCE_SIZE), calibration(SOURCE_SIZE)
    image_args = []
    for name, data in images.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
        image_args.append(f"{name}={tmp_path / f'{name}.jpg'}")
    (tmp_path / "calibration.json").write_text(json.dumps(frame))
    out, picture = tmp_path / "grid.npy", tmp_path / "grid.png"
    code = main(["predict", "--url", server, "--images", *image_args, "--calibration",
                 str(tmp_path / "calibration.json"), "--encoding", "sparse", "--out", str(out),
                 "--render", str(picture)])
    printed = capsys.readouterr().out
    assert code == 0
    expected = run_model(repository[1], gateway_inputs(images, frame, INPUT_SIZE))
    assert np.array_equal(np.load(out), expected)
    assert "model fake version 1" in printed and "inference" in printed
    free_line = next(line for line in printed.splitlines() if line.split()[:1] == ["free"])
    assert int(free_line.split()[1]) == np.count_nonzero(expected == 17)
    assert picture.stat().st_size > 0

    # A dataset frame: the picture puts the ground truth beside the prediction.
    code = main(["predict", "--url", server, "--data-root", str(data_root), "--sample", "token-0",
                 "--out", str(tmp_path / "sample.npy"), "--render", str(tmp_path / "sample.png")])
    assert code == 0 and np.array_equal(np.load(tmp_path / "sample.npy"), expected)
    capsys.readouterr()

    code = main(["predict", "--url", server, "--data-root", str(data_root), "--model", "no-such-model"])
    error = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in error and "404" in error and "no-such-model" in error

    frame["cameras"]["CAM_BACK"]["sensor2ego"]["rotation"] = [0, 0, 0, 0]
    (tmp_path / "calibration.json").write_text(json.dumps(frame))
    code = main(["predict", "--url", server, "--images", *image_args, "--calibration",
                 str(tmp_path / "calibration.json")])
    assert code == 2  # the CLI validates the calibration file before sending it
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "CAM_BACK.sensor2ego.rotation" in error


@pytest.mark.integration
def test_occ_bench_counts(server, data_root, tmp_path, capsys):
    report = tmp_path / "bench.json"
    code = main(["bench", "--url", server, "--data-root", str(data_root), "--requests", "6",
                 "--concurrency", "3", "--encoding", "npy", "--json", str(report)])
    assert code == 0, capsys.readouterr()
    result = json.loads(report.read_text())
    assert (result["requests"], result["ok"], result["errors"]) == (6, 6, {})
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p90"] <= result["latency_ms"]["p99"]
    assert set(result["server_timing_ms"]) == {"decode", "preprocess", "inference", "encode", "total"}
    assert result["fps"] == pytest.approx(6 / result["wall_s"])
    assert "requests 6 (ok 6" in capsys.readouterr().out

    frame = dataset_frame(data_root)
    failing = build_request(frame.images, frame.calibration, model="no-such-model")
    result = bench(server, failing, requests=4, concurrency=2, warmup=0)
    assert isinstance(result, BenchResult)
    assert (result.requests, result.ok, result.errors, result.latency_ms) == (4, 0, {"404": 4}, ())


@pytest.mark.integration
def test_occ_bench_open_loop_offers_rate_times_duration_frames(server, data_root, tmp_path, capsys):
    report = tmp_path / "open.json"
    code = main(["bench", "--url", server, "--data-root", str(data_root), "--rate", "8", "--duration", "1.5",
                 "--encoding", "npy", "--json", str(report)])
    assert code == 0, capsys.readouterr()
    result = json.loads(report.read_text())
    assert result["requests"] == 12 and result["ok"] + sum(result["errors"].values()) == 12
    assert result["offered_fps"] == 8 and result["concurrency"] is None
    assert result["fps"] == pytest.approx(result["ok"] / result["wall_s"])
    # Frames are sent on schedule, not after the previous answer: the run lasts about 11 / 8 s, not less.
    assert result["wall_s"] >= 11 / 8
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p90"] <= result["latency_ms"]["p99"]
    assert "offered open-loop at 8 frames/s" in capsys.readouterr().out


class RefusalCounter:
    """An ASGI app around the gateway that sets `refused` once the gateway has answered `count` requests
    with 503."""

    def __init__(self, app, count: int, refused: threading.Event):
        self.app, self.count, self.refused, self.answered_503 = app, count, refused, 0

    async def __call__(self, scope, receive, send):
        async def counting(message):
            if message["type"] == "http.response.start" and message["status"] == 503:
                self.answered_503 += 1
                if self.answered_503 == self.count:
                    self.refused.set()
            await send(message)

        await self.app(scope, receive, counting)


@contextmanager
def uvicorn_in_a_thread(app) -> Iterator[str]:
    """`app` served by uvicorn on a loopback socket bound here first (port 0: the kernel's free port, known
    before the server starts; connections wait in its backlog until it accepts); yields the URL."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        listening.close()


@pytest.mark.integration
def test_open_loop_counts_the_503s_of_a_full_queue(repository, data_root):
    """One frame at a time and no waiting room, and the first frame admitted held until the gateway has
    refused all the others: of 40 frames offered, exactly 1 is answered and 39 are 503, whatever the load
    of the machine. The bench must count them so."""
    settings = Settings(model_repository=repository[0], default_model="fake", watch_interval_s=0,
                        max_queue=0, max_concurrent=1)
    offered, refused = 40, threading.Event()
    app = create_app(settings, lambda settings: GatedBackend(EmbeddedBackend.load(settings), refused))
    gateway = RefusalCounter(app, offered - 1, refused)
    frame = dataset_frame(data_root)
    request = build_request(frame.images, frame.calibration, encoding="npy")
    with uvicorn_in_a_thread(gateway) as url:
        result = bench(url, request, duration_s=offered / 1000, rate=1000, warmup=0)
    assert (result.requests, result.ok, result.errors) == (offered, 1, {"503": offered - 1})
    assert result.share_overloaded == (offered - 1) / offered
    assert result.to_dict()["share_503"] == result.share_overloaded


def test_occ_bench_refuses_other_hosts_and_big_runs(data_root, capsys):
    assert main(["bench", "--url", "http://example.com", "--data-root", str(data_root)]) == 2
    assert main(["bench", "--url", "http://127.0.0.1:9", "--data-root", str(data_root),
                 "--requests", "100000"]) == 2
    assert main(["bench", "--url", "http://127.0.0.1:9", "--data-root", str(data_root),
                 "--rate", "100", "--duration", "200"]) == 2
    assert main(["bench", "--url", "http://127.0.0.1:9", "--data-root", str(data_root),
                 "--rate", "5", "--concurrency", "2"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert "localhost" in errors[0] and "--requests 100000" in errors[1]
    assert "20000 frames, more than 10000" in errors[2] and "--concurrency" in errors[3]
    with pytest.raises(httpx.ConnectError):
        bench("http://127.0.0.1:9", build_request({}, {}), requests=1)
