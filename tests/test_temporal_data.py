"""Temporal data: which keyframes are a sample's history, the same image transform for all of its frames,
and every camera carried into the key frame's ego with its own ego pose."""

import numpy as np
import pytest
import torch
from tiny_dataset import EGO_SPEED_M_PER_FRAME, write_tiny_dataset

from occupancy.cameras import CAMERA_NAMES
from occupancy.errors import InputError
from occupancy.geometry import pose_matrix, sensor_to_key_ego
from training.data.augment import AugmentConfig
from training.data.dataset import OccupancyDataset, collate, history_indices


def _yaw_pose(yaw: float, x: float, y: float) -> np.ndarray:
    pose = np.eye(4)
    pose[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    pose[:2, 3] = [x, y]
    return pose


def test_sensor_to_key_ego_on_a_hand_made_pose_pair():
    """A camera 1 m ahead of its ego, facing left; its ego and the key ego both face north, the camera's
    ego 10 m further north: the camera sits 11 m ahead of the key ego, facing its left."""
    sensor2ego = _yaw_pose(np.pi / 2, 1.0, 0.0)
    ego2global = _yaw_pose(np.pi / 2, 110.0, 50.0)
    key = _yaw_pose(np.pi / 2, 110.0, 40.0)
    composed = sensor_to_key_ego(sensor2ego, ego2global, key)
    np.testing.assert_allclose(composed[:3, 3], [11.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(composed[:2, :2], [[0.0, -1.0], [1.0, 0.0]], atol=1e-12)
    stacked = sensor_to_key_ego(np.stack([sensor2ego] * 2), np.stack([ego2global] * 2), key)
    np.testing.assert_allclose(stacked, np.stack([composed] * 2))


def test_history_is_the_same_scenes_previous_keyframes_or_the_frame_itself():
    """As BEVDet's get_adj_info: frame k's history is (k-1, k-2), with the frame itself where the scene
    has fewer frames: the second frame gets (first, second), not (first, first)."""
    samples = [{"token": f"s{scene}f{frame}", "prev": f"s{scene}f{frame - 1}" if frame else None}
               for scene in range(2) for frame in range(4)]
    assert history_indices(samples, 2) == [(0, 0), (0, 1), (1, 0), (2, 1), (4, 4), (4, 5), (5, 4), (6, 5)]
    assert history_indices(samples, 0) == [()] * 8
    orphan = [{"token": "a", "prev": "not-in-this-split"}]
    assert history_indices(orphan, 2) == [(0, 0)]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("temporal"), scenes=2, frames=3, val_scenes=1,
                              image_size=(90, 160))


def test_a_sample_carries_its_history_through_the_key_frames_transform(root):
    augment = AugmentConfig(resize_lim=(-0.1, 0.1), rot_lim=(-5.0, 5.0), flip=True)
    dataset = OccupancyDataset(root, "train", (64, 96), augment, seed=3, history_frames=2)
    sample = dataset[2]  # third frame: history = frames 1 and 0
    assert sample.history_images.shape == (2, 6, 3, 64, 96)
    assert sample.history_sensor2ego.shape == (2, 6, 4, 4)
    # The history's images went through each camera's transform of the key frame: a frame's own image
    # run through the same transform is what the sample holds for it.
    first = OccupancyDataset(root, "train", (64, 96), augment, seed=3, history_frames=2)
    first.samples[2] = first.samples[0]  # frame 0's image files, drawn with sample 2's augmentation
    first.history[2] = first.history[0]
    assert torch.equal(first[2].images, sample.history_images[1])


def test_every_camera_is_in_the_key_frames_ego_with_its_own_ego_pose(root):
    dataset = OccupancyDataset(root, "val", (64, 96), history_frames=2)
    sample = dataset[2]
    entries = [dataset.samples[i] for i in (2, 1, 0)]
    key = pose_matrix(**entries[0]["cameras"]["CAM_FRONT_LEFT"]["ego2global"])
    for frame, poses in zip(entries, [sample.sensor2ego, *sample.history_sensor2ego], strict=True):
        for c, name in enumerate(CAMERA_NAMES):
            camera = frame["cameras"][name]
            ego2global, sensor2ego = pose_matrix(**camera["ego2global"]), pose_matrix(**camera["sensor2ego"])
            want = np.linalg.inv(key) @ ego2global @ sensor2ego
            np.testing.assert_allclose(poses[c].numpy(), want, atol=1e-4)
    # The ego drove 2 m per keyframe: the cameras of t-1 sit 2 m from those of t.
    shift = sample.sensor2ego[:, :2, 3] - sample.history_sensor2ego[0, :, :2, 3]
    assert shift.norm(dim=1).mean().item() == pytest.approx(EGO_SPEED_M_PER_FRAME, abs=0.05)
    # Each camera's own ego pose: later cameras of the same frame sit further ahead than CAM_FRONT_LEFT's ego.
    raw = pose_matrix(**entries[0]["cameras"]["CAM_BACK_RIGHT"]["sensor2ego"])
    assert sample.sensor2ego[5, 0, 3].item() > raw[0, 3] + 0.1


def test_a_scenes_first_frame_repeats_itself_and_batches_collate(root):
    dataset = OccupancyDataset(root, "val", (64, 96), history_frames=2)
    first = dataset[0]
    assert torch.equal(first.history_images[0], first.images)
    assert torch.equal(first.history_images[1], first.images)
    torch.testing.assert_close(first.history_sensor2ego[1], first.sensor2ego)
    batch = collate([dataset[0], dataset[1]])
    camera = batch.camera_batch()
    assert camera.history.images.shape == (2, 2, 6, 3, 64, 96)
    assert camera.history.images.dtype == torch.float32
    assert collate([OccupancyDataset(root, "val", (64, 96))[0]]).history_images is None


def test_data_without_camera_poses_is_an_input_error(tmp_path):
    """Every model takes each camera into the key ego with its own pose, single-frame ones too."""
    import json

    root = write_tiny_dataset(tmp_path, scenes=1, frames=2, val_scenes=1)
    index = root / "occ_index_val.json"
    content = json.loads(index.read_text())
    del content["samples"][1]["cameras"]["CAM_BACK"]["ego2global"]
    index.write_text(json.dumps(content))
    for history_frames in (0, 2):
        with pytest.raises(InputError, match="no ego2global for CAM_BACK"):
            OccupancyDataset(root, "val", (64, 96), history_frames=history_frames)
