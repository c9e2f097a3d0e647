"""The README's "Export and serving with Triton" commands, run as written against the committed repository,
answer the README's curl example (on examples/frame/) with the grid the embedded model gives."""

import json
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from service_fixtures import gateway_inputs, run_model

from occupancy.cameras import CAMERA_NAMES
from occupancy.classes import FREE_CLASS
from occupancy.model_contract import ModelMetadata

REPO = Path(__file__).resolve().parents[1]
FRAME = REPO / "examples" / "frame"
VENV_BIN = ".venv/bin/"


def code_block(heading: str) -> str:
    """The first ``` block of the README section under `heading`."""
    section = REPO.joinpath("README.md").read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1].strip()


def command(line: str) -> list[str]:
    """A README command line without its comment, with `.venv/bin/` meaning this interpreter's bin folder."""
    words = shlex.split(line, comments=True)
    if words[0].startswith(VENV_BIN):
        words[0] = str(Path(sys.executable).parent / words[0].removeprefix(VENV_BIN))
    return words


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args} exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout_s} s")


def launch(words: list[str], log: Path) -> subprocess.Popen:
    """Start a command in its own process group, its output into `log`."""
    with log.open("wb") as output:
        return subprocess.Popen(words, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the command's process group (Triton's stubs too), then SIGKILL what lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.integration
def test_readme_triton_commands_answer_the_curl_example(tmp_path):
    lines = code_block("## Export and serving with Triton").splitlines()
    triton_local = command(next(line for line in lines if " triton-local " in line))
    serve = command(next(line for line in lines if " serve " in line))
    port = int(serve[serve.index("--port") + 1])
    curl = code_block("## Ask for a grid").replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
    processes = []
    try:
        processes.append(launch(triton_local, tmp_path / "triton.log"))
        wait_until_ready("http://127.0.0.1:8000/v2/models/demo-tiny/ready", processes[0], 120)
        processes.append(launch(serve, tmp_path / "serve.log"))
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", processes[1], 120)
        answer = subprocess.run(["bash", "-c", curl], cwd=FRAME, capture_output=True, timeout=120, check=True)
    finally:
        for process in reversed(processes):
            stop(process)
    body = json.loads(answer.stdout)
    assert body["model"]["name"] == "demo-tiny" and body["occupancy"]["encoding"] == "sparse"
    voxels = np.asarray(body["occupancy"]["voxels"])
    grid = np.full((200, 200, 16), FREE_CLASS, np.uint8)
    grid[tuple(voxels[:, :3].T)] = voxels[:, 3]
    # The same frame through the same model in ONNX Runtime in this process.
    version = max((REPO / "model_repository/demo-tiny").glob("[0-9]*"), key=lambda path: int(path.name))
    images = {name: (FRAME / f"{name}.jpg").read_bytes() for name in CAMERA_NAMES}
    calibration = json.loads((FRAME / "calibration.json").read_text())
    props = ort.InferenceSession(str(version / "model.onnx")).get_modelmeta().custom_metadata_map
    input_size = ModelMetadata.from_props(props, str(version)).input_size
    expected = run_model(version / "model.onnx", gateway_inputs(images, calibration, input_size))
    assert (grid == expected).mean() > 0.9999
