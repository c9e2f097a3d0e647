"""`occ prepare`: the JSON index of a data root, read through nuscenes-devkit, and its input errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from occ.cli import main
from occupancy.cameras import CAMERA_NAMES
from training.data.dataset import OccupancyDataset
from training.data.synth.generate import SynthConfig, generate


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(
        root,
        SynthConfig(scenes=3, frames=3, seed=1, val_scenes=1, image_size=(90, 160), ray_scale=2),
        progress=False,
    )
    return root


@pytest.fixture
def root(source, tmp_path) -> Path:
    """A private copy that a test may break."""
    return Path(shutil.copytree(source, tmp_path / "data"))


def _prepare(root: Path, *extra: str) -> int:
    return main(["prepare", "--data-root", str(root), *extra])


def test_index_of_a_synthetic_root(root):
    from nuscenes.nuscenes import NuScenes

    assert _prepare(root) == 0
    splits = json.loads((root / "splits.json").read_text())
    nusc = NuScenes(version="v1.0-trainval", dataroot=str(root), verbose=False)
    for split in ("train", "val"):
        index = json.loads((root / f"occ_index_{split}.json").read_text())
        assert index["format"] == 1 and index["split"] == split and index["version"] == "v1.0-trainval"
        samples = index["samples"]
        assert sorted({s["scene_name"] for s in samples}) == splits[split]
        assert len(samples) == 3 * len(splits[split])
        keys = [(s["scene_name"], s["timestamp"]) for s in samples]
        assert keys == sorted(keys)
        for i, sample in enumerate(samples):
            first = sample["frame_index"] == 0
            last = i + 1 == len(samples) or samples[i + 1]["scene_name"] != sample["scene_name"]
            assert sample["prev"] == (None if first else samples[i - 1]["token"])
            assert sample["next"] == (None if last else samples[i + 1]["token"])
            assert first or sample["frame_index"] == samples[i - 1]["frame_index"] + 1
            assert list(sample["cameras"]) == list(CAMERA_NAMES)
            paths = [c["image_path"] for c in sample["cameras"].values()]
            paths += [sample["occ_path"], sample["lidar"]["path"], *sample["labels_2d"].values()]
            assert all((root / p).is_file() for p in paths)
            assert sample["occ_path"] == f"gts/{sample['scene_name']}/{sample['token']}/labels.npz"
            # Poses and calibration are the devkit's records.
            record = nusc.get("sample", sample["token"])
            lidar = nusc.get("sample_data", record["data"]["LIDAR_TOP"])
            assert (
                sample["ego2global"]["translation"]
                == nusc.get("ego_pose", lidar["ego_pose_token"])["translation"]
            )
            assert sample["lidar"]["path"] == lidar["filename"]
            lidar_calib = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
            assert sample["lidar"]["sensor2ego"]["rotation"] == lidar_calib["rotation"]
            front = nusc.get("sample_data", record["data"]["CAM_FRONT"])
            calib = nusc.get("calibrated_sensor", front["calibrated_sensor_token"])
            assert sample["cameras"]["CAM_FRONT"]["intrinsic"] == calib["camera_intrinsic"]
            assert sample["cameras"]["CAM_FRONT"]["sensor2ego"]["rotation"] == calib["rotation"]
            assert np.asarray(sample["cameras"]["CAM_BACK"]["intrinsic"]).shape == (3, 3)


def test_lidar_depth_agrees_with_the_2d_labels(root):
    """The LiDAR sweep projected into the cameras (how real nuScenes roots get depth supervision) lands
    on the depths that the synthetic world's camera rays measured, wherever both have a point."""
    assert _prepare(root) == 0
    dataset = OccupancyDataset(root, "train", (90, 160), depth=True)
    for index in range(2):
        from_labels = dataset[index].gt_depth.numpy()
        dataset.samples[index] = {k: v for k, v in dataset.samples[index].items() if k != "labels_2d"}
        from_lidar = dataset[index].gt_depth.numpy()
        both = (from_labels > 0) & (from_lidar > 0)
        assert both.sum() > 500
        error = np.abs(from_lidar[both] - from_labels[both])
        assert np.median(error) < 0.1  # metres; occlusion (the roof LiDAR sees past objects) makes the tail
        assert np.mean(error < 0.05 * from_labels[both]) > 0.8


def test_a_real_layout_uses_the_official_split(root):
    """Without splits.json and 2D labels (a real nuScenes + Occ3D root): devkit splits, no labels_2d."""
    names = {"scene-0001": "scene-0061", "scene-0002": "scene-0553", "scene-0003": "scene-0103"}
    (root / "splits.json").unlink()
    shutil.rmtree(root / "samples_2d")
    (root / "v1.0-trainval").rename(root / "v1.0-mini")
    scenes = json.loads((root / "v1.0-mini" / "scene.json").read_text())
    for scene in scenes:
        (root / "gts" / scene["name"]).rename(root / "gts" / names[scene["name"]])
        scene["name"] = names[scene["name"]]
    (root / "v1.0-mini" / "scene.json").write_text(json.dumps(scenes))
    assert _prepare(root, "--version", "v1.0-mini") == 0
    train = json.loads((root / "occ_index_train.json").read_text())["samples"]
    val = json.loads((root / "occ_index_val.json").read_text())["samples"]
    # scene-0061 and scene-0553 are in mini_train, scene-0103 in mini_val.
    assert {s["scene_name"] for s in train} == {"scene-0061", "scene-0553"}
    assert {s["scene_name"] for s in val} == {"scene-0103"}
    assert all("labels_2d" not in s for s in train + val)


def _error(capsys) -> str:
    """The error line (the progress bar shares stderr)."""
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_missing_image_is_named(root, capsys):
    image = next((root / "samples" / "CAM_BACK_LEFT").glob("*.jpg"))
    image.unlink()
    assert _prepare(root) == 2
    message = _error(capsys)
    assert message.startswith("occ prepare: error:") and f"samples/CAM_BACK_LEFT/{image.name}" in message
    assert not (root / "occ_index_train.json").exists()


def test_missing_labels_are_named(root, capsys):
    labels = next((root / "gts").rglob("labels.npz"))
    labels.unlink()
    assert _prepare(root) == 2
    assert str(labels.relative_to(root)) in _error(capsys)


def test_missing_or_broken_tables_are_named(root, capsys):
    (root / "v1.0-trainval" / "ego_pose.json").unlink()
    assert _prepare(root) == 2
    assert "ego_pose.json" in _error(capsys)
    (root / "v1.0-trainval" / "ego_pose.json").write_text("[{")
    assert _prepare(root) == 2
    assert "ego_pose.json is not valid JSON" in _error(capsys)
    assert _prepare(root, "--version", "v1.0-test") == 2
    assert "v1.0-test" in _error(capsys)


def test_broken_link_is_named(root, capsys):
    samples = json.loads((root / "v1.0-trainval" / "sample.json").read_text())
    samples[0]["next"] = "f" * 32
    (root / "v1.0-trainval" / "sample.json").write_text(json.dumps(samples))
    assert _prepare(root) == 2
    assert "scene-0001" in _error(capsys)


def test_malformed_root_is_named(root, tmp_path, capsys):
    (root / "splits.json").write_text('{"train": "scene-0001"}')
    assert _prepare(root) == 2
    assert "splits.json" in _error(capsys)
    assert _prepare(tmp_path / "nowhere") == 2
    assert "nowhere" in _error(capsys)
