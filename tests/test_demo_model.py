"""The committed demo model and example frame: what `make serve` serves and the README's curl sends."""

import json
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from service_fixtures import gateway_inputs, multipart_files, run_model

from occupancy.cameras import CAMERA_NAMES
from occupancy.classes import CLASS_NAMES
from occupancy.encoding import decode_npy
from occupancy.metrics import OccupancyMetric
from service.core.config import Settings
from service.main import create_app

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "frame"
DEMO = ROOT / "model_repository" / "demo-tiny"


def _example() -> tuple[dict[str, bytes], dict]:
    images = {name: (EXAMPLE / f"{name}.jpg").read_bytes() for name in CAMERA_NAMES}
    return images, json.loads((EXAMPLE / "calibration.json").read_text())


def _newest_version() -> Path:
    return max((p for p in DEMO.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def test_default_settings_serve_the_committed_demo_model_on_the_example_frame():
    images, calibration = _example()
    with TestClient(create_app(Settings())) as client:
        assert client.get("/readyz").status_code == 200
        response = client.post("/predict", files=multipart_files(images, calibration),
                               headers={"Accept": "application/x-npy"})
    assert response.status_code == 200, response.text
    assert response.headers["x-model-name"] == "demo-tiny"
    served = decode_npy(response.content)
    expected = run_model(_newest_version() / "model.onnx", gateway_inputs(images, calibration, (128, 352)))
    np.testing.assert_array_equal(served, expected)


def test_demo_model_learned_the_ground_and_objects_of_an_unseen_frame():
    """A trained model, not a random one: the example frame's scene was held out of training."""
    images, calibration = _example()
    inputs = gateway_inputs(images, calibration, (128, 352))
    prediction = run_model(_newest_version() / "model.onnx", inputs)
    labels = np.load(EXAMPLE / "labels.npz")
    metric = OccupancyMetric()
    metric.update(prediction, labels["semantics"], labels["mask_camera"])
    iou = metric.per_class_iou()
    assert iou["driveable_surface"] > 50.0 and iou["terrain"] > 50.0, metric.table()
    # Objects too (the first demo model predicted none): the vehicle classes present average > 5 IoU.
    vehicles = [iou[name] for name in ("bus", "car", "construction_vehicle", "truck")
                if not np.isnan(iou[name])]
    assert vehicles and np.mean(vehicles) > 5.0, metric.table()


def test_model_card_describes_the_committed_model():
    card = json.loads((_newest_version() / "card.json").read_text())
    assert card["config"] == "demo-tiny" and card["name"] == "demo-tiny"
    assert set(card["per_class"]) == set(CLASS_NAMES[:-1])
    assert 0.0 < card["mIoU"] < 100.0
    assert (_newest_version() / "model_card.md").is_file()
