"""The gateway's `triton` backend against a real tritonserver on loopback (nvidia-pytriton's binary,
serving the CPU python-backend model), next to the `embedded` backend on the same ONNX files.

- both backends give the same grid for the same frame (and the one ONNX Runtime gives directly);
- `occ publish --triton-url` while clients send frames without pause: no request fails, and both
  gateways switch to the new version (Triton reloads; the embedded backend watches the repository);
- Triton killed under load: 503 with Retry-After within a second, and recovery without a restart of
  the gateway once Triton is back on the same ports.
"""

import asyncio
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_fixtures import (
    build_test_model,
    calibration,
    frame_images,
    multipart_files,
    reference_inputs,
    run_model,
    test_metadata,
    write_python_model,
)
from test_triton_local import free_ports
from tritonclient.utils import InferenceServerException

from occ.cli import main as occ_main
from occupancy import model_contract as contract
from occupancy.encoding import decode_dense
from service.backends.base import BackendUnavailable, ServedModel
from service.backends.triton import TritonBackend, _infer_input
from service.backends.watch import warmup_inputs
from service.core.config import Settings
from service.main import create_app
from service.triton_local import TritonLocal

pytestmark = pytest.mark.integration
INPUT_SIZE = (32, 64)
SOURCE_SIZE = (90, 160)
MODEL = "fake"


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> tuple[Path, Path]:
    """Two versions of one model: the same contract, different config names (so a swap is visible)."""
    folder = tmp_path_factory.mktemp("onnx")
    first, second = folder / "first.onnx", folder / "second.onnx"
    first.write_bytes(build_test_model(INPUT_SIZE, config="test-fake-v1"))
    second.write_bytes(build_test_model(INPUT_SIZE, config="test-fake-v2"))
    return first, second


@pytest.fixture
def repository(tmp_path, onnx_files) -> Path:
    """A repository with version 1 of MODEL as a python-backend model (its model.onnx serves embedded)."""
    write_python_model(tmp_path / "repository", MODEL, onnx_files[0], max_queue_delay_us=0)
    return tmp_path / "repository"


@pytest.fixture
def triton(repository):
    """tritonserver with MODEL loaded, explicit model control; always stopped afterwards."""
    http_port, grpc_port, metrics_port = free_ports(3)
    server = TritonLocal(repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                         load_models=(MODEL,), exit_timeout_s=1)
    server.start()
    try:
        server.wait_ready(timeout_s=60)
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def frame():
    return frame_images(SOURCE_SIZE), calibration(SOURCE_SIZE)


def settings_for(repository: Path, backend: str, triton: TritonLocal | None = None, **changes) -> Settings:
    values = {"model_repository": repository, "backend": backend, "default_model": MODEL,
              "watch_interval_s": 0.2, "max_concurrent": 2, "retry_after_s": 2} | changes
    if triton is not None:
        values["triton_url"] = triton.grpc_url
    return Settings(**values)


@asynccontextmanager
async def gateway(settings: Settings):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            yield client


def grid_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return decode_dense(response.json()["occupancy"]["data"])


def test_inputs_travel_as_raw_bytes():
    array = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    tensor = _infer_input(contract.POST_TRANS, array)
    assert tensor.datatype() == "FP32" and tensor.shape() == [1, 2, 3, 4]
    assert tensor._get_content() == array.tobytes()  # gRPC raw_input_contents
    assert not tensor._get_tensor().HasField("contents")  # no typed (list) contents


def test_triton_and_embedded_give_the_same_grid(repository, triton, frame, onnx_files):
    images, calib = frame
    files = multipart_files(images, calib)
    expected = run_model(onnx_files[0], reference_inputs(images, calib, INPUT_SIZE))

    async def scenario():
        answers = {}
        for backend in ("embedded", "triton"):
            async with gateway(settings_for(repository, backend, triton)) as client:
                answers[backend] = (await client.post("/predict", files=files),
                                    await client.get("/readyz"), (await client.get("/metrics")).text)
        return answers

    answers = asyncio.run(scenario())
    for backend, (response, ready, metrics) in answers.items():
        np.testing.assert_array_equal(grid_of(response), expected, err_msg=backend)
        assert response.json()["model"] == {"name": MODEL, "version": "1"}
        assert ready.status_code == 200
        requests = f'occ_requests_total{{backend="{backend}",encoding="dense",model="{MODEL}",status="200"}}'
        assert f"{requests} 1.0" in metrics
        assert f'occ_frames_total{{backend="{backend}",model="{MODEL}"}} 1.0' in metrics
        assert f'occ_stage_latency_seconds_count{{backend="{backend}",stage="inference"}} 1.0' in metrics
        assert (f'occ_model_info{{backend="{backend}",config="test-fake-v1",name="{MODEL}",version="1"}} 1.0'
                in metrics)


def test_triton_streams_a_sequence_as_the_embedded_backend_does(repository, triton, frame, tmp_path):
    """A temporal model on the python backend: the gateway sends the state as tensors and gets the next
    one back; three frames give the embedded backend's grids and histories."""
    import tritonclient.grpc as grpcclient

    temporal = tmp_path / "temporal.onnx"
    temporal.write_bytes(build_test_model(INPUT_SIZE, temporal=True))
    write_python_model(repository, "fake-temporal", temporal)
    grpcclient.InferenceServerClient(triton.grpc_url).load_model("fake-temporal")
    images, _ = frame
    frames = []
    for k in range(3):
        posed = calibration(SOURCE_SIZE, temporal=True)
        posed["timestamp"] += 500_000 * k
        posed["ego2global"]["translation"][0] += 2.0 * k
        frames.append(multipart_files(images, posed))

    async def scenario():
        answers = {}
        for backend in ("embedded", "triton"):
            settings = settings_for(repository, backend, triton, default_model="fake-temporal")
            async with gateway(settings) as client:
                answers[backend] = [await client.post("/predict", files=files) for files in frames]
        return answers

    answers = asyncio.run(scenario())
    assert [r.json()["sequence"]["history"] for r in answers["triton"]] == [0, 1, 2]
    grids = {backend: [grid_of(r) for r in responses] for backend, responses in answers.items()}
    for k in range(3):
        np.testing.assert_array_equal(grids["triton"][k], grids["embedded"][k], err_msg=f"frame {k}")
        assert answers["triton"][k].json()["sequence"] == answers["embedded"][k].json()["sequence"]
    assert (grids["triton"][2] != grids["triton"][0]).any()


def test_discovery_checks_triton_models_against_the_contract(repository, triton, tmp_path):
    import tritonclient.grpc as grpcclient
    from test_triton_config import write_tiny_model

    from occupancy.errors import InputError

    def load(model: str) -> TritonBackend:
        return TritonBackend.load(Settings(backend="triton", triton_url=triton.grpc_url, default_model=model,
                                           triton_startup_timeout_s=0.3))

    with pytest.raises(InputError, match="'absent' is not loaded"):
        load("absent")
    # The contract's tensors, but no occ.* grid and classes in its config parameters.
    write_python_model(repository, "bare", write_tiny_model(tmp_path / "bare.onnx", (32, 64)))
    grpcclient.InferenceServerClient(triton.grpc_url).load_model("bare")
    with pytest.raises(InputError, match=r"'bare'.*unusable occ\.\* metadata"):
        load("bare")
    assert load(MODEL).models[MODEL].input_size == INPUT_SIZE


class ScriptedClient:
    """Stands in for the aio client: fails with the given gRPC statuses, then answers with `answer`."""

    def __init__(self, statuses: list[str], answer=None):
        self.statuses, self.answer, self.calls = list(statuses), answer, []

    async def infer(self, model, inputs, outputs, client_timeout, model_version=""):
        self.calls.append((time.monotonic(), client_timeout))
        if self.statuses:
            raise InferenceServerException("scripted failure", status=self.statuses.pop(0))
        return self.answer

    async def get_model_metadata(self, *args, **kwargs):  # a re-read after NOT_FOUND: Triton is gone
        raise InferenceServerException("scripted: no metadata", status="StatusCode.UNAVAILABLE")


def scripted_backend(statuses: list[str], answer=None, **settings) -> tuple[TritonBackend, ScriptedClient]:
    model = ServedModel.described(MODEL, "1", ("1",), test_metadata(INPUT_SIZE).to_props(), "test")
    served = TritonBackend(Settings(backend="triton", **settings), {MODEL: model})  # no discovery
    client = ScriptedClient(statuses, answer)
    served._connect = lambda: client
    return served, client


def test_unavailable_is_retried_with_backoff_then_503_and_a_deadline_never():
    inputs = warmup_inputs(test_metadata(INPUT_SIZE))

    async def attempt(backend):
        try:
            return await backend.infer(backend.models[MODEL], inputs)
        except Exception as error:
            return error

    unavailable = "StatusCode.UNAVAILABLE"
    backend, client = scripted_backend([unavailable] * 5, triton_retries=2, triton_retry_backoff_s=0.05)
    assert isinstance(asyncio.run(attempt(backend)), BackendUnavailable)
    gaps = np.diff([sent for sent, _ in client.calls])
    assert len(client.calls) == 3 and gaps[0] >= 0.05 and gaps[1] >= 0.1  # 1 + 2 retries, doubling waits
    assert all(timeout <= 10.0 for _, timeout in client.calls)  # each within the remaining deadline

    backend, client = scripted_backend(["StatusCode.DEADLINE_EXCEEDED"], triton_timeout_s=2.0)
    assert isinstance(asyncio.run(attempt(backend)), TimeoutError) and len(client.calls) == 1
    assert 1.9 < client.calls[0][1] <= 2.0

    backend, client = scripted_backend([unavailable] * 5, triton_timeout_s=0.08, triton_retry_backoff_s=0.1)
    assert isinstance(asyncio.run(attempt(backend)), BackendUnavailable)
    assert len(client.calls) == 1  # a retry would not fit into the deadline: answer now

    backend, client = scripted_backend(["StatusCode.NOT_FOUND"])
    assert isinstance(asyncio.run(attempt(backend)), BackendUnavailable) and len(client.calls) == 1


def test_inputs_refused_after_a_swap_to_another_input_size_are_503_and_reread():
    """Triton refuses tensors that do not fit the version it serves now (INVALID_ARGUMENT): a version with
    another input size was swapped in after the request made its inputs. That is a 503 to retry, and the
    served models are re-read at once, never a 500."""
    backend, client = scripted_backend(["StatusCode.INVALID_ARGUMENT"])
    rereads = []
    backend._refresh_soon = lambda force=False: rereads.append(force)

    async def attempt():
        try:
            return await backend.infer(backend.models[MODEL], warmup_inputs(test_metadata(INPUT_SIZE)))
        except Exception as error:
            return error

    assert isinstance(asyncio.run(attempt()), BackendUnavailable)
    assert len(client.calls) == 1 and rereads == [True]


def test_triton_slower_than_its_timeout_is_504(repository, triton, frame):
    async def scenario():
        async with gateway(settings_for(repository, "triton", triton, triton_timeout_s=0.001)) as client:
            return await client.post("/predict", files=multipart_files(*frame))

    response = asyncio.run(scenario())
    assert response.status_code == 504, response.text


async def send_continuously(client: httpx.AsyncClient, files, stop: asyncio.Event, log: list) -> None:
    """Post frames back to back until `stop`; log (sent at, answered at, status, version or detail)."""
    while not stop.is_set():
        sent = time.monotonic()
        response = await client.post("/predict", files=files)
        body = response.json()
        outcome = body["model"]["version"] if response.status_code == 200 else body["detail"]
        log.append((sent, time.monotonic(), response.status_code, outcome))


def test_publish_while_serving_swaps_versions_without_a_failed_request(repository, triton, frame, onnx_files):
    files = multipart_files(*frame)
    command = ["publish", "--repository", str(repository), "--name", MODEL, "--onnx", str(onnx_files[1]),
               "--backend-kind", "python", "--triton-url", triton.grpc_url, "--keep", "1"]

    async def scenario():
        logs: dict[str, list] = {"embedded": [], "triton": []}
        async with gateway(settings_for(repository, "embedded")) as embedded, \
                gateway(settings_for(repository, "triton", triton)) as served:
            stop = asyncio.Event()
            clients = [asyncio.create_task(send_continuously(client, files, stop, logs[backend]))
                       for backend, client in (("embedded", embedded), ("triton", served))]
            await asyncio.sleep(1.0)
            published_at = time.monotonic()
            assert await asyncio.to_thread(occ_main, command) == 0
            published = time.monotonic()
            deadline = published + 10
            while time.monotonic() < deadline and not all(
                    log and log[-1][3] == "2" and sum(entry[3] == "2" for entry in log) >= 3
                    for log in logs.values()):
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*clients)
            models = (await served.get("/v1/models")).json()["models"][0]
            metrics = (await served.get("/metrics")).text
        return logs, published_at, published, models, metrics

    logs, published_at, published, models, metrics = asyncio.run(scenario())
    print(f"\nocc publish with --triton-url took {published - published_at:.2f} s")
    for backend, log in logs.items():
        failed = [entry for entry in log if entry[2] != 200]
        assert failed == [], f"{backend}: {failed[:3]}"
        versions = [entry[3] for entry in log]
        assert versions[0] == "1" and versions[-1] == "2", f"{backend}: {versions}"
        # Once the new version answered, the old one never answers again (the swap is one step).
        assert "1" not in versions[versions.index("2"):], backend
        first_new = next(entry for entry in log if entry[3] == "2")
        print(f"{backend}: {len(log)} requests, none failed; first answer of version 2 sent "
              f"{first_new[0] - published:+.2f} s after publish returned")
    assert models["version"] == "2" and models["config"] == "test-fake-v2"
    info = f'occ_model_info{{backend="triton",config="test-fake-v2",name="{MODEL}",version="2"}}'
    assert f"{info} 1.0" in metrics
    assert sorted(p.name for p in (repository / MODEL).iterdir()) == ["2", "config.pbtxt"]  # --keep 1


def test_triton_killed_under_load_is_503_at_once_and_recovers(repository, triton, frame):
    files = multipart_files(*frame)

    async def scenario():
        log: list = []
        async with gateway(settings_for(repository, "triton", triton, triton_timeout_s=5.0)) as client:
            stop = asyncio.Event()
            sender = asyncio.create_task(send_continuously(client, files, stop, log))
            await asyncio.sleep(0.5)
            killed_at = time.monotonic()
            await asyncio.to_thread(triton.kill)
            await asyncio.sleep(1.0)
            down = await client.post("/predict", files=files)
            not_ready = await client.get("/readyz")
            restarted_at = time.monotonic()
            await asyncio.to_thread(triton.start)
            await asyncio.to_thread(triton.wait_ready, 60)
            ready_at = time.monotonic()
            deadline = ready_at + 10
            while time.monotonic() < deadline and not (log and log[-1][2] == 200 and log[-1][0] > ready_at):
                await asyncio.sleep(0.05)
            stop.set()
            await sender
            ready = await client.get("/readyz")
        return log, killed_at, down, not_ready, restarted_at, ready_at, ready

    log, killed_at, down, not_ready, restarted_at, ready_at, ready = asyncio.run(scenario())
    assert down.status_code == 503 and down.headers["retry-after"] == "2", down.text
    assert "unavailable" in down.json()["detail"]
    assert not_ready.status_code == 503 and ready.status_code == 200
    while_down = [entry for entry in log if killed_at <= entry[0] < restarted_at]
    assert while_down and {entry[2] for entry in while_down} == {503}, while_down[:3]
    slowest = max(answered - sent for sent, answered, _, _ in while_down)
    first_503 = min(answered for _, answered, status, _ in log if status == 503 and answered >= killed_at)
    assert slowest < 1.0 and first_503 - killed_at < 1.0
    recovered = min(answered for sent, answered, status, _ in log if status == 200 and sent >= restarted_at)
    assert {entry[2] for entry in log} <= {200, 503}
    print(f"\nfirst 503 {first_503 - killed_at:.3f} s after the kill; slowest 503 {slowest:.3f} s "
          f"({len(while_down)} requests while down); Triton ready {ready_at - restarted_at:.2f} s after "
          f"restart; first 200 {recovered - ready_at:+.2f} s after Triton was ready")


def test_embedded_swaps_in_only_a_version_that_loads(repository, frame, onnx_files):
    """No Triton here: a broken version 2 is skipped (requests go on with 1), version 3 replaces 1."""
    files = multipart_files(*frame)

    async def scenario():
        log: list = []
        async with gateway(settings_for(repository, "embedded", watch_interval_s=0.1)) as client:
            stop = asyncio.Event()
            sender = asyncio.create_task(send_continuously(client, files, stop, log))
            await asyncio.sleep(0.3)
            broken = repository / MODEL / ".staging"
            broken.mkdir()
            (broken / "model.onnx").write_bytes(b"not an onnx model")
            broken.rename(repository / MODEL / "2")
            await asyncio.sleep(0.5)  # several watch rounds
            assert log[-1][3] == "1"
            command = ["publish", "--repository", str(repository), "--name", MODEL,
                       "--onnx", str(onnx_files[1])]
            assert await asyncio.to_thread(occ_main, command) == 0
            published = time.monotonic()
            while time.monotonic() < published + 10 and log[-1][3] != "3":
                await asyncio.sleep(0.02)
            stop.set()
            await sender
        return log, published

    log, published = asyncio.run(scenario())
    assert [entry for entry in log if entry[2] != 200] == []
    versions = [entry[3] for entry in log]
    assert set(versions) == {"1", "3"} and versions[-1] == "3"
    swapped = next(answered for _, answered, _, version in log if version == "3")
    print(f"\nembedded: version 3 answered {swapped - published:.2f} s after occ publish returned "
          f"(watch every 0.1 s; load and warm-up included); {len(log)} requests, none failed")
    assert swapped - published < 5


def test_occ_serve_with_the_triton_backend(triton, frame, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OCC_TRITON_STARTUP_TIMEOUT_S", "0.5")
    (unused,) = free_ports(1)
    assert occ_main(["serve", "--backend", "triton", "--triton-url", f"127.0.0.1:{unused}"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"--triton-url 127.0.0.1:{unused}: does not answer" in error

    (port,) = free_ports(1)
    log_file = (tmp_path / "serve.log").open("w")
    command = [sys.executable, "-m", "occ", "serve", "--port", str(port), "--backend", "triton",
               "--triton-url", triton.grpc_url]
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "no /readyz within 60 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        response = httpx.post(f"http://127.0.0.1:{port}/predict", files=multipart_files(*frame), timeout=30)
        assert response.status_code == 200 and response.json()["model"] == {"name": MODEL, "version": "1"}
    finally:
        process.terminate()
        process.wait(30)


def test_a_restricted_triton_lets_only_key_holders_control_models(repository, monkeypatch):
    """Triton started with a model-control key (as the Helm chart and compose start it): loading a model
    and the gateway's discovery are refused without the key, with a message that says what to set;
    with OCC_TRITON_KEY both work, and inference needs no key."""
    from occupancy.errors import InputError
    from occupancy.triton_access import TRITON_KEY_ENV
    from training.publish import load_in_triton

    http_port, grpc_port, metrics_port = free_ports(3)
    key = "key-for-this-test-only"
    server = TritonLocal(repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                         load_models=(MODEL,), exit_timeout_s=1, restricted_key=key)
    server.start()
    try:
        server.wait_ready(timeout_s=60)
        monkeypatch.delenv(TRITON_KEY_ENV, raising=False)
        with pytest.raises(InputError, match="loading fake version 1 failed: This protocol is restricted"):
            load_in_triton(server.grpc_url, MODEL, 1, timeout_s=10)
        startup = {"backend": "triton", "triton_url": server.grpc_url, "triton_startup_timeout_s": 0.3}
        with pytest.raises(InputError, match=f"refuses its model-control API.*set {TRITON_KEY_ENV}"):
            TritonBackend.load(Settings(**startup))
        monkeypatch.setenv(TRITON_KEY_ENV, key)
        assert load_in_triton(server.grpc_url, MODEL, 1, timeout_s=30) >= 0
        backend = TritonBackend.load(Settings(**startup))  # the key from the environment
        answer = asyncio.run(backend.infer(backend.models[MODEL], warmup_inputs(test_metadata(INPUT_SIZE))))
        assert answer.semantics.shape == (1, 200, 200, 16)
    finally:
        server.kill()
