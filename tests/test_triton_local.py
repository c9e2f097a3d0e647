"""A real tritonserver (nvidia-pytriton's binary) serving the CPU python-backend model on loopback.

The model is loaded through the repository API, inferred through gRPC with binary tensors, and its
grids must equal ONNX Runtime's byte for byte; the metrics endpoint must count the requests.
"""

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from service_fixtures import write_python_model
from test_triton_config import tiny_frames, write_tiny_model

from occupancy import model_contract as contract
from occupancy.errors import InputError
from service.triton_local import TritonLocal

pytestmark = pytest.mark.integration
MODEL = "tiny"
QUEUE_DELAY_US = 2_000_000  # Triton's dynamic batching holds a request up to 2 s for others to join
T = TypeVar("T")


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago (another process may take one before a
    server binds it: see `on_free_ports`)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def on_free_ports(start: Callable[..., T], count: int = 3, attempts: int = 3) -> T:
    """`start(*ports)` on `count` free loopback ports, again on new ones when it fails because a port was
    taken in between (tritonserver cannot be asked to bind port 0 and say which port it got)."""
    for attempt in range(1, attempts + 1):
        try:
            return start(*free_ports(count))
        except (InputError, RuntimeError) as error:  # TritonLocal's: "is in use" or "already in use"
            if "in use" not in str(error) or attempt == attempts:
                raise
    raise AssertionError("unreachable")


def start_triton(repository: Path, **options) -> TritonLocal:
    """A TritonLocal serving `repository` on free loopback ports, started and ready; the caller stops it."""
    def start(http_port: int, grpc_port: int, metrics_port: int) -> TritonLocal:
        server = TritonLocal(repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                             **options)
        try:
            server.start()
            server.wait_ready(timeout_s=60)
        except BaseException:
            server.kill()
            raise
        return server

    return on_free_ports(start)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    onnx_path = write_tiny_model(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    # A long queue delay lets the concurrent requests below meet in one batch, also on a loaded machine.
    write_python_model(root, MODEL, onnx_path, max_batch_size=8, max_queue_delay_us=QUEUE_DELAY_US)
    return root


@pytest.fixture(scope="module")
def server(repository):
    triton = start_triton(repository, load_models=())
    try:
        yield triton
    finally:
        triton.stop()


def _grpc_inputs(frames: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in frames.items():
        datatype = "UINT8" if array.dtype == np.uint8 else "FP32"
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)  # gRPC sends raw bytes: binary tensors
        inputs.append(tensor)
    return inputs


def test_load_infer_and_metrics(server, repository):
    http = httpclient.InferenceServerClient(server.http_url)
    assert not http.is_model_ready(MODEL)  # explicit model control: nothing loads by itself
    started = time.monotonic()
    http.load_model(MODEL)
    print(f"load_model took {time.monotonic() - started:.2f} s")
    assert http.is_model_ready(MODEL)

    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    config = grpc.get_model_config(MODEL).config
    assert config.max_batch_size == 8 and [i.name for i in config.input] == list(contract.INPUT_NAMES)

    onnx_path = repository / MODEL / "1" / "model.onnx"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    requests = [tiny_frames(batch, rng) for batch in (1, 2, 1, 3)]
    results: dict[int, object] = {}
    done = threading.Event()

    def collect(index):
        def callback(result, error):
            results[index] = error if error is not None else result
            if len(results) == len(requests):
                done.set()
        return callback

    for index, frames in enumerate(requests):
        grpc.async_infer(MODEL, _grpc_inputs(frames), collect(index),
                         outputs=[grpcclient.InferRequestedOutput(contract.SEMANTICS)])
    assert done.wait(30), f"only {len(results)} of {len(requests)} answers"
    for index, frames in enumerate(requests):
        result = results[index]
        assert not isinstance(result, Exception), result
        grid = result.as_numpy(contract.SEMANTICS)
        assert grid.dtype == np.uint8 and grid.shape == (len(frames[contract.IMAGES]), 200, 200, 16)
        np.testing.assert_array_equal(grid, session.run([contract.SEMANTICS], frames)[0])

    stats = grpc.get_inference_statistics(MODEL).model_stats[0]
    assert stats.inference_count == 7  # frames, all batch sizes
    # Dynamic batching: requests sent together ran together, in an execution larger than any one request.
    assert stats.execution_count < len(requests)
    largest_request = max(len(frames[contract.IMAGES]) for frames in requests)
    assert max(batch.batch_size for batch in stats.batch_stats) > largest_request

    with urllib.request.urlopen(server.metrics_url, timeout=5) as answer:
        metrics = answer.read().decode()
    counts = re.findall(rf'^nv_inference_request_success{{model="{MODEL}",version="1"}} (\d+)', metrics, re.M)
    assert counts == [str(len(requests))]


def test_kill_ends_the_server_and_its_stubs(repository):
    triton = start_triton(repository, load_models=(MODEL,))
    try:
        group = triton._process.pid
        assert httpclient.InferenceServerClient(triton.http_url).is_model_ready(MODEL)
    finally:
        triton.kill()
    assert not triton.is_ready()
    # The python stub goes with the server; SIGKILL takes effect a moment after it is sent.
    assert still_running(live_processes_in_group(group), timeout_s=30) == []


def still_running(pids: list[int], timeout_s: float) -> list[int]:
    """Those of `pids` that have not exited after waiting up to `timeout_s` for each, woken by the exit
    itself (a pidfd turns readable when its process terminates)."""
    running = []
    for pid in pids:
        try:
            descriptor = os.pidfd_open(pid)
        except ProcessLookupError:  # gone already
            continue
        try:
            if not select.select([descriptor], [], [], timeout_s)[0]:
                running.append(pid)
        finally:
            os.close(descriptor)
    return running


def live_processes_in_group(group: int) -> list[int]:
    """Processes of a process group that are not zombies (a killed stub whose new parent, PID 1 in a
    container, does not reap it stays a zombie: dead, but still listed)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        state, pgid = fields[0], int(fields[2])
        if pgid == group and state != "Z":
            live.append(int(stat.parent.name))
    return live


def test_cli_runs_in_the_foreground_until_ctrl_c(repository):
    def start(http_port: int, grpc_port: int, metrics_port: int) -> tuple[subprocess.Popen, int]:
        ports = ["--http-port", str(http_port), "--grpc-port", str(grpc_port),
                 "--metrics-port", str(metrics_port)]
        process = subprocess.Popen(
            [sys.executable, "-m", "occ", "triton-local", "--repository", str(repository), *ports,
             "--load-model", MODEL],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        output = []
        for line in process.stdout:  # until it says it is ready, or ends
            if line.startswith("triton ready"):
                return process, http_port
            output.append(line)
        process.wait()
        raise RuntimeError(f"occ triton-local exited with {process.returncode}:\n{''.join(output)}")

    process, http_port = on_free_ports(start)
    try:
        assert httpclient.InferenceServerClient(f"127.0.0.1:{http_port}").is_model_ready(MODEL)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)  # reads its shutdown log: a full pipe would block it from exiting
        assert process.returncode == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/live", timeout=2)
