"""`occ refresh`: the publish-or-refuse rule, the model card, and the whole cycle on a tiny dataset
into a real Triton (loopback, CPU python backend), whose new version the gateway then serves."""

import asyncio
import importlib.util
import json
import math

import httpx
import pytest
import torch
import tritonclient.grpc as grpcclient
from service_fixtures import calibration, frame_images, multipart_files
from test_triton_local import start_triton
from tiny_dataset import MICRO_CONFIG, record_initial_weights, write_tiny_dataset

from occ.cli import main as occ_main
from occupancy.classes import CLASS_NAMES
from service.core.config import Settings
from service.main import create_app
from training.export.tensorrt import cuda_device_count
from training.models.configs import CONFIGS
from training.refresh import current_card, model_card_markdown, verdict

NAME = "micro"


@pytest.mark.parametrize(("new", "old", "force", "published"), [
    (29.5, 30.0, False, True),  # 0.5 points lower: within the threshold of 1
    (29.0, 30.0, False, True),  # exactly the threshold
    (28.9, 30.0, False, False),  # 1.1 points lower
    (28.9, 30.0, True, True),
    (31.0, 30.0, False, True),
    (10.0, None, False, True),  # nothing to compare with
    (None, 30.0, False, False),
])
def test_publish_unless_mIoU_drops_more_than_the_threshold(new, old, force, published):
    go, why = verdict(new, old, threshold=1.0, force=force)
    assert go == published
    if not published:
        assert "NOT published" in why or "not published" in why
    if force and new is not None and old - new > 1.0:
        assert "--force" in why


def test_card_page_lists_every_class(tmp_path):
    per_class = {"others": 1.5, "barrier": None, "free": 99.0}
    card = {"name": NAME, "config": "test-micro", "data_root": "/data", "iterations": 3,
            "fine_tuned_from": None, "checkpoint": "/w/iter_3.pt", "mIoU": 1.5, "val_frames": 2,
            "previous_version": None, "previous_mIoU": None, "verdict": "first version", "date": "today",
            "per_class": per_class}
    page = model_card_markdown(card)
    assert "| others | 1.50 |" in page and "| barrier | n/a |" in page and "from scratch" in page
    assert "val mIoU: 1.50 over 2 frames" in page
    (tmp_path / NAME / "4").mkdir(parents=True)
    (tmp_path / NAME / "4" / "card.json").write_text(json.dumps(card))
    assert current_card(tmp_path / NAME) == (4, card)
    assert current_card(tmp_path / "absent") == (None, {})


@pytest.fixture
def micro_config(monkeypatch):
    monkeypatch.setitem(CONFIGS, MICRO_CONFIG.name, MICRO_CONFIG)
    return MICRO_CONFIG.name


@pytest.mark.integration
def test_refresh_trains_evaluates_and_publishes_into_triton(tmp_path, micro_config, capsys,
                                                             monkeypatch):
    data_root = write_tiny_dataset(tmp_path / "data", scenes=3, frames=1, val_scenes=1)
    repository = tmp_path / "repository"
    repository.mkdir()
    triton = start_triton(repository)
    command = ["refresh", "--config", micro_config, "--data-root", str(data_root), "--work-dir",
               str(tmp_path / "work"), "--repository", str(repository), "--name", NAME, "--max-iters", "3",
               "--batch-size", "1", "--num-workers", "0", "--backend-kind", "python",
               "--triton-url", triton.grpc_url]
    started = record_initial_weights(monkeypatch)
    try:
        assert occ_main(command) == 0
        first_card = json.loads((repository / NAME / "1" / "card.json").read_text())
        assert first_card["fine_tuned_from"] is None and first_card["iterations"] == 3
        assert first_card["config"] == micro_config and first_card["previous_version"] is None
        assert list(first_card["per_class"]) == list(CLASS_NAMES[:-1])  # free is not scored
        assert (repository / NAME / "1" / "model_card.md").is_file()
        capsys.readouterr()

        # A served mIoU no model can reach: the next one is refused, and nothing is published.
        (repository / NAME / "1" / "card.json").write_text(json.dumps(first_card | {"mIoU": 99.0}))
        assert occ_main(command) == 1
        out = capsys.readouterr().out
        assert "NOT published" in out and "against 99.00" in out and "--force" in out
        assert sorted(p.name for p in (repository / NAME).iterdir()) == ["1", "config.pbtxt"]

        assert occ_main([*command, "--force"]) == 0
        assert "published anyway (--force)" in capsys.readouterr().out
        card = json.loads((repository / NAME / "2" / "card.json").read_text())
        assert card["fine_tuned_from"] == first_card["checkpoint"] and card["forced"] is True
        assert card["previous_version"] == 1 and card["previous_mIoU"] == 99.0
        # Fine-tuning started from the served version's checkpoint (its deployed, EMA weights); the first
        # refresh from scratch.
        deployed = torch.load(first_card["checkpoint"], weights_only=True)["state_dict"]
        assert len(started) == 3
        for name, value in deployed.items():
            assert torch.equal(started[1][name], value) and torch.equal(started[2][name], value), name
        assert not all(torch.equal(started[0][name], value) for name, value in deployed.items())
        # The card's mIoU is its checkpoint's, re-evaluated here with `occ eval` over the 1 val frame.
        scores = tmp_path / "scores.json"
        assert occ_main(["eval", "--config", micro_config, "--checkpoint", card["checkpoint"], "--data-root",
                         str(data_root), "--num-workers", "0", "--json", str(scores)]) == 0
        evaluated = json.loads(scores.read_text())
        assert card["val_frames"] == 1 and math.isfinite(card["mIoU"])
        assert card["mIoU"] == pytest.approx(evaluated["mIoU"])
        assert card["per_class"] == evaluated["per_class"]
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        assert client.is_model_ready(NAME, "2") and not client.is_model_ready(NAME, "1")

        served = asyncio.run(_predict_through_gateway(Settings(backend="triton", triton_url=triton.grpc_url)))
        assert served.status_code == 200 and served.json()["model"] == {"name": NAME, "version": "2"}
    finally:
        triton.stop()


async def _predict_through_gateway(settings: Settings) -> httpx.Response:
    app = create_app(settings)
    files = multipart_files(frame_images((90, 160)), calibration((90, 160)))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            return await client.post("/predict", files=files)


def test_refresh_of_a_tensorrt_served_model_takes_the_tensorrt_path(tmp_path, micro_config, capsys):
    """The served runtime decides the export: an engine-served model is refreshed as an engine, and a
    machine without TensorRT says so before any training starts."""
    repository = tmp_path / "repository"
    (repository / NAME).mkdir(parents=True)
    (repository / NAME / "config.pbtxt").write_text(f'name: "{NAME}"\nplatform: "tensorrt_plan"\n')
    command = ["refresh", "--config", micro_config, "--data-root", str(tmp_path / "data"), "--work-dir",
               str(tmp_path / "work"), "--repository", str(repository), "--name", NAME]
    if importlib.util.find_spec("tensorrt") is not None and cuda_device_count() > 0:
        pytest.skip("this machine can build engines: the refusal below is for machines without TensorRT")
    assert occ_main(command) == 2
    assert "cannot build a TensorRT engine here" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # refused before training
