"""A BEVStereo4D model exported and served frame by frame: three frames posted in order give the offline
three-frame forward (the first its cold start), `occ eval --onnx` streams the same grids, the graph selects
its history per frame of a batch, and the export describes its state."""

import itertools
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from test_export import amplified
from test_temporal_models import R50_CONFIGS, _built
from tiny_dataset import MICRO_TEMPORAL_CONFIG, write_tiny_dataset

from clients.client import OccupancyClient
from clients.dataset import frame_of_sample
from occupancy import model_contract as contract
from occupancy.data_root import load_index
from occupancy.model_contract import ModelMetadata
from occupancy.model_repository import Runtime
from service.core.config import Settings
from service.main import create_app
from training import evaluate
from training.data.dataset import OccupancyDataset, collate
from training.export.artifact import export_artifact
from training.export.onnx_export import TRAINED_FRAME_GAP_S, sequence_inputs
from training.export.triton_config import read_signature
from training.models.checkpoint import save_checkpoint
from training.models.configs import CONFIGS
from training.publish import publish

NAME = "micro-4d-stereo"
FRAMES = 3
MIN_AGREEMENT = 0.999


def _quiet(_: str) -> None:
    pass


def export_served(config, model: torch.nn.Module, root: Path) -> Path:
    """`model` saved as a checkpoint, exported (parity over three frames) and published; the repository."""
    checkpoint = root / "checkpoint.pt"
    save_checkpoint(checkpoint, model, config)
    with tempfile.TemporaryDirectory() as scratch:
        artifact = export_artifact(config, checkpoint, Path(scratch), Runtime.ONNXRUNTIME, log=_quiet)
        publish(root / "repository", NAME, artifact)
    return root / "repository"


def offline_grids(model: torch.nn.Module, data_root: Path, input_size) -> list[np.ndarray]:
    """The offline three-frame forward of each val frame (its history as the reference's dataset makes it)."""
    dataset = OccupancyDataset(data_root, "val", input_size, history_frames=2)
    with torch.no_grad():
        return [model.predict(collate([dataset[k]]).camera_batch())[0].to(torch.uint8).numpy()
                for k in range(len(dataset))]


def streamed(repository: Path, data_root: Path, frames: list[int] | None = None,
             sequence: str | None = None) -> list[tuple[np.ndarray, dict]]:
    """The val frames (or those numbered `frames`) posted in order to a gateway serving the export, under
    their scene's sequence id (or `sequence`): (grid, sequence) per frame."""
    # A full-size R50 frame takes ONNX Runtime tens of seconds on two loaded cores.
    settings = Settings(model_repository=repository, default_model=NAME, watch_interval_s=0,
                        request_timeout_s=600)
    entries = load_index(data_root, "val")
    answers = []
    with TestClient(create_app(settings)) as http, OccupancyClient("http://testserver", http=http) as client:
        for index in range(len(entries)) if frames is None else frames:
            frame = frame_of_sample(data_root, entries[index])
            calibration = frame.calibration
            if sequence is not None:
                calibration = calibration.model_copy(update={"sequence_id": sequence})
            prediction = client.predict(frame.images, calibration)
            answers.append((prediction.grid, prediction.sequence))
    return answers


def agreement(first: np.ndarray, second: np.ndarray) -> float:
    return float((first == second).mean())


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """The micro BEVStereo4D model (depth net sharpened and BatchNorm gains grown, so the images and the
    history move the grid), exported and served, and a one-scene data root of three keyframes."""
    root = tmp_path_factory.mktemp("streaming")
    config = MICRO_TEMPORAL_CONFIG
    model = amplified(_built(config))
    data_root = write_tiny_dataset(root / "data", scenes=1, frames=FRAMES, val_scenes=1)
    return config, model, export_served(config, model, root), data_root


def assert_streamed_equals_offline(model: torch.nn.Module, repository: Path, data_root: Path,
                                   input_size: tuple[int, int]) -> list[tuple[np.ndarray, dict]]:
    """The val frames posted in order: histories 0, 1, 2 and each grid the offline forward's; the answers."""
    offline = offline_grids(model, data_root, input_size)
    answers = streamed(repository, data_root)
    assert [sequence["history"] for _, sequence in answers] == [0, 1, 2]
    for k, ((grid, _), want) in enumerate(zip(answers, offline, strict=True)):
        assert agreement(grid, want) >= MIN_AGREEMENT, f"frame {k}: {agreement(grid, want):.4%}"
    return answers


def test_frames_posted_in_order_give_the_offline_three_frame_forward(micro):
    config, model, repository, data_root = micro
    answers = assert_streamed_equals_offline(model, repository, data_root, config.input_size)
    # The history moves the grid: the third frame alone (a cold start) is another grid.
    ((cold, sequence),) = streamed(repository, data_root, frames=[FRAMES - 1], sequence="alone")
    assert sequence["history"] == 0 and agreement(answers[2][0], cold) < MIN_AGREEMENT


def test_occ_eval_onnx_streams_the_scene_through_the_state(micro):
    config, model, repository, data_root = micro
    session, metadata = evaluate.onnx_session(repository / NAME / "1" / "model.onnx")
    loader = evaluate.eval_loader(data_root, "val", metadata.input_size, batch_size=2, num_workers=0)
    predicted = np.concatenate([classes for _, classes in evaluate.predict_onnx(session, metadata, loader)])
    for k, want in enumerate(offline_grids(model, data_root, config.input_size)):
        assert agreement(predicted[k], want) >= MIN_AGREEMENT, f"frame {k}"


def test_the_graph_selects_the_history_of_each_frame_of_a_batch(micro):
    """Frame 2 of the drive (history 2) batched with frame 0 (history 0) gives what each gives alone."""
    config, _, repository, _ = micro
    path = repository / NAME / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
    frames = sequence_inputs(config, metadata.state)
    outputs = list(metadata.output_names)
    for previous, frame in itertools.pairwise(frames):
        frame.update(zip((tensor.name for tensor in metadata.state), session.run(outputs, previous)[1:],
                         strict=True))
    alone = [session.run(outputs, frame) for frame in (frames[2], frames[0])]
    batched = session.run(outputs, {name: np.concatenate([frames[2][name], frames[0][name]])
                                    for name in metadata.input_names})
    for index, single in enumerate(alone):
        for name, got, want in zip(outputs, batched, single, strict=True):
            np.testing.assert_allclose(got[index:index + 1], want, rtol=1e-4, atol=1e-5, err_msg=name)
    without_history = {**frames[2], contract.HISTORY: frames[0][contract.HISTORY]}
    assert (alone[0][0] != session.run(outputs, without_history)[0]).any()


def test_the_export_describes_its_state_for_the_gateway_and_triton(micro):
    config, model, repository, _ = micro
    path = repository / NAME / "1" / "model.onnx"
    signature = read_signature(path)
    metadata = ModelMetadata.from_props(signature.metadata, str(path))
    described = (metadata.temporal, metadata.frame_gap_s, metadata.test_path)
    assert described == (True, TRAINED_FRAME_GAP_S, "relift")
    depth = model.img_view_transformer.D
    stride = model.img_view_transformer.downsample
    height, width = config.input_size
    stereo_channels = model.img_backbone.forward_first_stage(torch.zeros(1, 3, height, width)).shape[1]
    assert [(tensor.name, tensor.shape) for tensor in metadata.state] == [
        (contract.STATE_STEREO, (6, stereo_channels, height // 4, width // 4)),
        (contract.STATE_REDUCED, (6, config.neck_channels, height // stride, width // stride)),
        (contract.STATE_COST, (6, depth, height // stride, width // stride)),
    ]
    inputs = {spec.name: spec for spec in signature.inputs}
    outputs = {spec.name: spec for spec in signature.outputs}
    assert list(inputs) == list(metadata.input_names) and list(outputs) == list(metadata.output_names)
    assert inputs[contract.HISTORY].data_type == "TYPE_INT32" and inputs[contract.HISTORY].dims == (1,)
    for tensor in metadata.state:
        assert inputs[tensor.name].dims == outputs[tensor.output].dims == tensor.shape
    config_text = (repository / NAME / "config.pbtxt").read_text()
    assert all(f'name: "{tensor.output}"' in config_text for tensor in metadata.state)


@pytest.mark.slow
@pytest.mark.parametrize("name", R50_CONFIGS[:1])
def test_a_full_size_r50_export_streams_the_offline_grids(name, tmp_path):
    """The full-size network (random weights), exported with its three-frame parity and served: frames
    posted in order give the offline three-frame forward."""
    config = CONFIGS[name]
    model = amplified(_built(config))
    data_root = write_tiny_dataset(tmp_path / "data", scenes=1, frames=FRAMES, val_scenes=1,
                                   image_size=(450, 800))
    repository = export_served(config, model, tmp_path)
    assert_streamed_equals_offline(model, repository, data_root, config.input_size)


def test_flashoccs_test_path_streams_the_offline_grids_too(tmp_path):
    """FlashOCC's BEVStereo4DOCC test path (t-1's BEV feature warped into t's ego after the view
    transformation, `align_after_view_transformation`) exported and served: the offline forward's grids."""
    config = replace(MICRO_TEMPORAL_CONFIG, temporal=replace(MICRO_TEMPORAL_CONFIG.temporal,
                                                             align_after_view_transformation=True))
    model = amplified(_built(config))
    data_root = write_tiny_dataset(tmp_path / "data", scenes=1, frames=FRAMES, val_scenes=1)
    repository = export_served(config, model, tmp_path)
    signature = read_signature(repository / NAME / "1" / "model.onnx")
    assert ModelMetadata.from_props(signature.metadata, NAME).test_path == "align_after_view_transformation"
    assert_streamed_equals_offline(model, repository, data_root, config.input_size)
