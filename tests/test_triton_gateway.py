"""The gateway's `triton` backend against a real tritonserver on loopback (nvidia-pytriton's binary,
serving the CPU python-backend model), next to the `embedded` backend on the same ONNX files.

- both backends give the same grid for the same frame (and the one ONNX Runtime gives directly);
- `occ publish --triton-url` while clients send frames without pause: no request fails, and both
  gateways switch to the new version (Triton reloads; the embedded backend watches the repository);
- Triton killed under load: 503 with Retry-After at once (far within the inference deadline), and
  recovery without a restart of the gateway once Triton is back on the same ports.
Each scenario waits on what the gateway answers (`Traffic.until`), never on a sleep.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_fixtures import (
    build_test_model,
    calibration,
    frame_images,
    gateway_inputs,
    multipart_files,
    run_model,
    test_metadata,
    write_python_model,
)
from test_triton_local import free_ports, start_triton
from tritonclient.utils import InferenceServerException

from clients.local_gateway import running_gateway
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
    server = start_triton(repository, load_models=(MODEL,), exit_timeout_s=1)
    try:
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
    expected = run_model(onnx_files[0], gateway_inputs(images, calib, INPUT_SIZE))

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


def test_a_model_triton_loads_later_is_served_too(repository, triton, onnx_files):
    """The backend follows Triton's repository: a model loaded after start-up joins the served ones on
    the next re-read (where the gateway is not pinned to one default model)."""
    import tritonclient.grpc as grpcclient

    async def reread(settings: Settings) -> list[str]:
        backend = TritonBackend.load(settings)
        before = sorted(backend.models)
        write_python_model(repository, "later", onnx_files[1])
        grpcclient.InferenceServerClient(triton.grpc_url).load_model("later")
        await backend._reread_models()
        await backend.close()
        return [before, sorted(backend.models)]

    settings = Settings(backend="triton", triton_url=triton.grpc_url)
    assert asyncio.run(reread(settings)) == [[MODEL], sorted([MODEL, "later"])]
    pinned = asyncio.run(reread(Settings(backend="triton", triton_url=triton.grpc_url, default_model=MODEL)))
    assert pinned == [[MODEL], [MODEL]]


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
    assert 1.0 < client.calls[0][1] <= 2.0  # the whole deadline (less what a loaded machine took to start)

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


class Traffic:
    """Frames posted back to back to one gateway until `stop()`; `log` has (sent at, answered at, status,
    version or detail) of each, and `until` waits for a condition on it, woken by each answer."""

    def __init__(self, client: httpx.AsyncClient, files):
        self.log: list[tuple[float, float, int, str]] = []
        self._answered, self._stop = asyncio.Event(), asyncio.Event()
        self._task = asyncio.create_task(self._send(client, files))

    async def _send(self, client: httpx.AsyncClient, files) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            response = await client.post("/predict", files=files)
            body = response.json()
            outcome = body["model"]["version"] if response.status_code == 200 else body["detail"]
            self.log.append((sent, time.monotonic(), response.status_code, outcome))
            self._answered.set()

    async def until(self, condition: Callable[[list], bool], what: str, timeout_s: float = 60.0) -> None:
        """Return once `condition(log)` holds; AssertionError naming `what` after `timeout_s` (the bound
        is for a broken gateway, not a timing requirement)."""
        try:
            async with asyncio.timeout(timeout_s):
                while not condition(self.log):
                    self._answered.clear()
                    await self._answered.wait()
        except TimeoutError:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}; last answers {self.log[-3:]}",
                                 ) from None

    async def stop(self) -> list[tuple[float, float, int, str]]:
        self._stop.set()
        await self._task
        return self.log


def answered_since(moment: float, status: int, version: str | None = None) -> Callable[[list], bool]:
    """A `Traffic.until` condition: a request sent after `moment` was answered with `status` (and by
    `version`)."""
    return lambda log: any(sent > moment and code == status and version in (None, outcome)
                           for sent, _, code, outcome in log)


def test_publish_while_serving_swaps_versions_without_a_failed_request(repository, triton, frame, onnx_files):
    files = multipart_files(*frame)
    command = ["publish", "--repository", str(repository), "--name", MODEL, "--onnx", str(onnx_files[1]),
               "--backend-kind", "python", "--triton-url", triton.grpc_url, "--keep", "1"]

    async def scenario():
        async with gateway(settings_for(repository, "embedded")) as embedded, \
                gateway(settings_for(repository, "triton", triton)) as served:
            traffic = {"embedded": Traffic(embedded, files), "triton": Traffic(served, files)}
            for backend, flow in traffic.items():
                await flow.until(answered_since(0.0, 200, "1"), f"{backend}: version 1 answers")
            published_at = time.monotonic()
            assert await asyncio.to_thread(occ_main, command) == 0
            published = time.monotonic()
            for backend, flow in traffic.items():  # three answers of version 2, the last one among them
                await flow.until(lambda log: log[-1][3] == "2" and sum(e[3] == "2" for e in log) >= 3,
                                 f"{backend}: version 2 answers")
            logs = {backend: await flow.stop() for backend, flow in traffic.items()}
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


# Triton down must be refused at once (a few UNAVAILABLE retries, milliseconds apart), not after waiting for
# the inference deadline: the deadline is 30 s and a refusal may take at most a third of it, slack enough
# for a loaded 2-core machine.
DOWN_DEADLINE_S = 30.0


def test_triton_killed_under_load_is_503_at_once_and_recovers(repository, triton, frame):
    files = multipart_files(*frame)
    settings = settings_for(repository, "triton", triton, triton_timeout_s=DOWN_DEADLINE_S)

    async def scenario():
        async with gateway(settings) as client:
            traffic = Traffic(client, files)
            await traffic.until(answered_since(0.0, 200), "answers before the kill")
            await asyncio.to_thread(triton.kill)
            killed_at = time.monotonic()
            await traffic.until(answered_since(killed_at, 503), "a 503 after the kill")
            down = await client.post("/predict", files=files)
            not_ready = await client.get("/readyz")
            restarted_at = time.monotonic()
            await asyncio.to_thread(triton.start)
            await asyncio.to_thread(triton.wait_ready, 60)
            ready_at = time.monotonic()
            await traffic.until(answered_since(ready_at, 200), "a 200 after Triton was back")
            log = await traffic.stop()
            ready = await client.get("/readyz")
        return log, killed_at, down, not_ready, restarted_at, ready_at, ready

    log, killed_at, down, not_ready, restarted_at, ready_at, ready = asyncio.run(scenario())
    assert down.status_code == 503 and down.headers["retry-after"] == "2", down.text
    assert "unavailable" in down.json()["detail"]
    assert not_ready.status_code == 503 and ready.status_code == 200
    while_down = [entry for entry in log if killed_at <= entry[0] < restarted_at]
    assert while_down and {entry[2] for entry in while_down} == {503}, while_down[:3]
    slowest = max(answered - sent for sent, answered, _, _ in while_down)
    assert slowest < DOWN_DEADLINE_S / 3, f"a 503 took {slowest:.1f} s: waited for the deadline"
    assert {entry[2] for entry in log} <= {200, 503}
    recovered = min(answered for sent, answered, status, _ in log if status == 200 and sent >= ready_at)
    print(f"\nslowest 503 {slowest:.3f} s ({len(while_down)} requests while down); Triton ready "
          f"{ready_at - restarted_at:.2f} s after restart; first 200 {recovered - ready_at:+.2f} s later")


def test_embedded_swaps_in_only_a_version_that_loads(repository, frame, onnx_files):
    """No Triton here: a broken version 2 is skipped (requests go on with 1), version 3 replaces 1."""
    files = multipart_files(*frame)
    refused = LogRecordSeen("service.embedded", f"model {MODEL} version 2: not served")

    async def scenario():
        async with gateway(settings_for(repository, "embedded", watch_interval_s=0.1)) as client:
            traffic = Traffic(client, files)
            await traffic.until(answered_since(0.0, 200, "1"), "version 1 answers")
            broken = repository / MODEL / ".staging"
            broken.mkdir()
            (broken / "model.onnx").write_bytes(b"not an onnx model")
            broken.rename(repository / MODEL / "2")
            assert await asyncio.to_thread(refused.seen.wait, 60), "the broken version was not refused"
            skipped_at = time.monotonic()
            await traffic.until(answered_since(skipped_at, 200, "1"), "version 1 answers after the refusal")
            command = ["publish", "--repository", str(repository), "--name", MODEL,
                       "--onnx", str(onnx_files[1])]
            assert await asyncio.to_thread(occ_main, command) == 0
            published = time.monotonic()
            await traffic.until(lambda log: log[-1][3] == "3", "version 3 answers")
            return await traffic.stop(), published

    with refused:
        log, published = asyncio.run(scenario())
    assert [entry for entry in log if entry[2] != 200] == []
    versions = [entry[3] for entry in log]
    assert set(versions) == {"1", "3"} and versions[-1] == "3"
    assert "1" not in versions[versions.index("3"):]  # the swap is one step
    swapped = next(answered for _, answered, _, version in log if version == "3")
    print(f"\nembedded: version 3 answered {swapped - published:.2f} s after occ publish returned "
          f"(watch every 0.1 s; load and warm-up included); {len(log)} requests, none failed")


class LogRecordSeen(logging.Handler):
    """While entered, sets `seen` once `logger` logs a message that contains `text`."""

    def __init__(self, logger: str, text: str):
        super().__init__()
        self.logger, self.text, self.seen = logging.getLogger(logger), text, threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    def __enter__(self) -> "LogRecordSeen":
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc_info) -> None:
        self.logger.removeHandler(self)


def test_occ_serve_with_the_triton_backend(triton, frame, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OCC_TRITON_STARTUP_TIMEOUT_S", "0.5")
    (unused,) = free_ports(1)
    assert occ_main(["serve", "--backend", "triton", "--triton-url", f"127.0.0.1:{unused}"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"--triton-url 127.0.0.1:{unused}: does not answer" in error

    with running_gateway("--backend", "triton", "--triton-url", triton.grpc_url,
                         log_path=tmp_path / "serve.log") as url:
        response = httpx.post(f"{url}/predict", files=multipart_files(*frame), timeout=30)
    assert response.status_code == 200 and response.json()["model"] == {"name": MODEL, "version": "1"}


def test_a_restricted_triton_lets_only_key_holders_control_models(repository, monkeypatch):
    """Triton started with a model-control key (as the Helm chart and compose start it): loading a model
    and the gateway's discovery are refused without the key, with a message that says what to set;
    with OCC_TRITON_KEY both work, and inference needs no key."""
    from occupancy.errors import InputError
    from occupancy.triton_access import TRITON_KEY_ENV
    from training.publish import load_in_triton

    key = "key-for-this-test-only"
    server = start_triton(repository, load_models=(MODEL,), exit_timeout_s=1, restricted_key=key)
    try:
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
