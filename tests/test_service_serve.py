"""`occ serve` as a real process: start-up errors, no torch, and one frame over loopback HTTP."""

import re
import subprocess
import sys

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
    write_model,
)

from clients.local_gateway import running_gateway
from occ.cli import main
from occupancy import model_contract as contract
from occupancy.encoding import decode_dense

INPUT_SIZE = (256, 704)


def test_empty_repository_is_a_one_line_error(tmp_path, capsys):
    assert main(["serve", "--repository", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(tmp_path) in error and "no model" in error and "export" in error


def test_a_model_exported_for_rgb_images_is_a_one_line_error(tmp_path, capsys):
    import onnx

    model = onnx.load_from_string(build_test_model(INPUT_SIZE))
    props = {p.key: p.value for p in model.metadata_props if p.key != contract.META_CHANNEL_ORDER}
    onnx.helper.set_model_props(model, props)  # what every export before the B, G, R images wrote
    write_model(tmp_path, "old", (1,), model.SerializeToString())
    assert main(["serve", "--repository", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "exported for images in R, G, B order" in error and "re-export" in error


def test_the_gateway_never_imports_torch():
    code = ("import sys, service.main, service.cli; from service.core.config import Settings; "
            "service.main.create_app(Settings()); "
            "assert 'torch' not in sys.modules and 'training' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.fixture
def server(tmp_path):
    """`occ serve` on a free loopback port with a one-model repository; always stopped afterwards."""
    write_model(tmp_path / "repository", "fake", (1,), build_test_model(INPUT_SIZE))
    repository = tmp_path / "repository"
    with running_gateway("--repository", str(repository), log_path=tmp_path / "server.log") as url:
        yield url, tmp_path / "repository" / "fake" / "1" / "model.onnx"


@pytest.mark.integration
def test_served_grid_equals_onnxruntime_on_the_same_tensors(server):
    url, model_path = server
    images, calib = frame_images((900, 1600)), calibration((900, 1600))
    response = httpx.post(f"{url}/predict", files=multipart_files(images, calib), timeout=60)
    assert response.status_code == 200, response.text
    expected = run_model(model_path, gateway_inputs(images, calib, INPUT_SIZE))
    served = decode_dense(response.json()["occupancy"]["data"])
    assert np.count_nonzero(served != expected) == 0
    assert (served != 17).any()


@pytest.mark.integration
def test_occ_serve_logs_the_gateways_own_events(server, tmp_path):
    """The service.* loggers reach the log, one line per event with time, level and logger; and OpenCV's
    own pixel limit was set before cv2 was imported."""
    log = (tmp_path / "server.log").read_text()
    startup = r"^\S+ \S+ INFO service: serving \['fake'\] with backend embedded"
    assert re.search(startup, log, re.MULTILINE), log
    assert "INFO service.cli: images over 16777216 pixels are refused by their header and by OpenCV" in log
