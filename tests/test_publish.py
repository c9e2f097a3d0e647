"""`occ publish`: numbered versions appear whole (staged, then renamed), config.pbtxt follows the model,
old versions go only after the new one is in place, model cards travel along, and a Triton that cannot
load the new version gets it taken back."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from service_fixtures import build_test_model
from test_triton_config import parse_config
from test_triton_local import free_ports
from tiny_dataset import MICRO_CONFIG

from occ.cli import main as occ_main
from occupancy import model_contract as contract
from occupancy.errors import InputError
from occupancy.model_repository import STAGING_PREFIX, Runtime, scan_repository
from training import publish as publishing
from training.models.checkpoint import save_checkpoint
from training.models.configs import CONFIGS, build_model
from training.publish import Artifact, publish

INPUT_SIZE = (32, 64)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source") / "exported.onnx"
    path.write_bytes(build_test_model(INPUT_SIZE, config="test-fake"))
    return path


def entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_versions_count_up_and_the_config_follows_the_model(tmp_path, onnx_file):
    first = publish(tmp_path, "fake", Artifact(onnx_file))
    second = publish(tmp_path, "fake", Artifact(onnx_file))
    assert (first.version, second.version) == (1, 2) and second.removed == ()
    assert entries(tmp_path / "fake") == ["1", "2", "config.pbtxt"]  # no staging folder left
    assert entries(tmp_path / "fake" / "2") == ["model.onnx"]
    assert (tmp_path / "fake" / "2" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    config = parse_config(tmp_path / "fake" / "config.pbtxt")
    assert config.name == "fake" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert [tensor.name for tensor in config.input] == list(contract.INPUT_NAMES)
    assert json.loads(config.parameters[contract.META_CONFIG].string_value) == "test-fake"
    # The gateway's scan sees both versions and serves the newest.
    assert scan_repository(tmp_path)["fake"].versions == (1, 2)


def test_keep_deletes_the_oldest_after_the_new_version_is_in_place(tmp_path, onnx_file, monkeypatch):
    for _ in range(3):
        publish(tmp_path, "fake", Artifact(onnx_file))
    seen_when_pruning = []
    prune = publishing.prune
    monkeypatch.setattr(publishing, "prune", lambda model_dir, keep: (
        seen_when_pruning.append(entries(model_dir)), prune(model_dir, keep))[1])
    published = publish(tmp_path, "fake", Artifact(onnx_file), keep=2)
    assert seen_when_pruning == [["1", "2", "3", "4", "config.pbtxt"]]
    assert published.version == 4 and published.removed == (1, 2)
    assert entries(tmp_path / "fake") == ["3", "4", "config.pbtxt"]
    with pytest.raises(InputError, match="--keep 0"):
        publish(tmp_path, "fake", Artifact(onnx_file), keep=0)


def test_files_are_written_only_into_the_staging_folder(tmp_path, onnx_file, monkeypatch):
    copies = []
    copyfile = shutil.copyfile

    def watched_copy(source, target, *args, **kwargs):
        copies.append(Path(target))
        assert not (tmp_path / "fake" / "1").exists(), "the version folder appeared before it was complete"
        return copyfile(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", watched_copy)
    publish(tmp_path, "fake", Artifact(onnx_file), runtime=Runtime.PYTHON)
    assert copies and all(path.parent.parent.name.startswith(STAGING_PREFIX) for path in copies)
    assert entries(tmp_path / "fake" / "1") == ["model.onnx", "model.py"]
    assert parse_config(tmp_path / "fake" / "config.pbtxt").backend == "python"

    def failing_copy(source, target, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        publish(tmp_path, "fake", Artifact(onnx_file))
    assert entries(tmp_path / "fake") == ["1", "config.pbtxt"]  # nothing half-written, no staging left


def test_the_kind_stays_as_served_and_cards_travel_along(tmp_path, onnx_file):
    source = tmp_path / "export"
    source.mkdir()
    shutil.copyfile(onnx_file, source / "model.onnx")
    (source / "card.json").write_text('{"mIoU": 12.5}')
    (source / "model_card.md").write_text("# fake\n")
    exported = Artifact.from_files(source / "model.onnx")
    publish(tmp_path / "repository", "fake", exported, runtime=Runtime.PYTHON)
    published = publish(tmp_path / "repository", "fake", exported)
    assert published.runtime is Runtime.PYTHON
    assert entries(published.version_dir) == ["card.json", "model.onnx", "model.py", "model_card.md"]
    assert json.loads((published.version_dir / "card.json").read_text()) == {"mIoU": 12.5}


def test_an_engine_is_published_with_its_onnx(tmp_path, onnx_file):
    build = tmp_path / "build"
    build.mkdir()
    (build / "model.plan").write_bytes(b"engine bytes")
    with pytest.raises(InputError, match="--onnx"):
        Artifact.from_files(plan=build / "model.plan")
    shutil.copyfile(onnx_file, build / "model.onnx")
    published = publish(tmp_path / "repository", "fake", Artifact.from_files(plan=build / "model.plan"))
    assert published.runtime is Runtime.TENSORRT
    assert entries(published.version_dir) == ["model.onnx", "model.plan"]
    config = parse_config(tmp_path / "repository" / "fake" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    with pytest.raises(InputError, match="served by TensorRT: publishing needs an engine"):
        publish(tmp_path / "repository", "fake", Artifact(onnx_file))  # served by TensorRT now


def test_a_triton_that_does_not_load_it_gets_it_taken_back(tmp_path, onnx_file):
    publish(tmp_path, "fake", Artifact(onnx_file), runtime=Runtime.PYTHON)
    before = (tmp_path / "fake" / "config.pbtxt").read_text()
    (port,) = free_ports(1)  # nothing listens there
    with pytest.raises(InputError, match=rf"--triton-url 127.0.0.1:{port}: loading fake version 2 failed"):
        publish(tmp_path, "fake", Artifact(onnx_file), runtime=Runtime.ONNXRUNTIME,
                triton_url=f"127.0.0.1:{port}", ready_timeout_s=5)
    assert entries(tmp_path / "fake") == ["1", "config.pbtxt"]
    assert (tmp_path / "fake" / "config.pbtxt").read_text() == before


def test_cli_exports_a_checkpoint_with_its_card(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(CONFIGS, MICRO_CONFIG.name, MICRO_CONFIG)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "iter_1.pt", build_model(MICRO_CONFIG), MICRO_CONFIG)
    (tmp_path / "card.json").write_text('{"mIoU": 1.0}')
    repository = tmp_path / "repository"
    code = occ_main(["publish", "--repository", str(repository), "--name", "micro",
                     "--checkpoint", str(tmp_path / "iter_1.pt"), "--config", MICRO_CONFIG.name])
    assert code == 0
    assert "published micro version 1 (onnxruntime)" in capsys.readouterr().out
    assert entries(repository / "micro" / "1") == ["card.json", "model.onnx"]
    images = parse_config(repository / "micro" / "config.pbtxt").input[0]
    assert images.name == contract.IMAGES and images.dims[-2:] == list(MICRO_CONFIG.input_size)


@pytest.mark.parametrize(("flags", "message"), [
    ([], "nothing to publish"),
    (["--checkpoint", "x.pt"], "--checkpoint needs --config"),
    (["--onnx", "missing.onnx"], "--onnx missing.onnx: no such file"),
    (["--onnx", "a.onnx", "--checkpoint", "x.pt"], "give one of"),
])
def test_cli_input_errors_are_one_line(tmp_path, capsys, flags, message):
    assert occ_main(["publish", "--repository", str(tmp_path), "--name", "fake", *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and message in error
