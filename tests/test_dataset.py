"""The dataset: augmentations keep image content, geometry and labels consistent; files are validated."""

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tiny_dataset import write_labels, write_tiny_dataset

from occupancy import preprocess
from occupancy.cameras import CAMERA_NAMES
from occupancy.classes import FREE_CLASS
from occupancy.errors import InputError
from occupancy.geometry import ego_to_pixels, pose_matrix
from occupancy.grid import OCC3D_GRID
from occupancy.network_input import NORMALIZE_MEAN, NORMALIZE_STD
from occupancy.preprocess import decode_scale, test_time_transform
from training.data.augment import AugmentConfig
from training.data.dataset import OccupancyDataset, collate

SOURCE_SIZE = (180, 320)
INPUT_SIZE = (64, 176)
CAR = 4
# An ego point in front of the car, seen by CAM_FRONT (1 m ahead of the ego origin, 1.5 m up).
POINT = np.array([15.0, 0.5, 0.5])
EPOCHS = range(16)


@pytest.fixture
def root(tmp_path) -> Path:
    """One training frame: black images but a white spot where CAM_FRONT sees POINT; a car voxel at POINT."""
    write_tiny_dataset(tmp_path, scenes=2, frames=1, image_size=SOURCE_SIZE)
    index = json.loads((tmp_path / "occ_index_train.json").read_text())
    entry = index["samples"][0]
    for name in CAMERA_NAMES:  # a parked car: every camera at the key camera's pose (motion is tested below)
        entry["cameras"][name]["ego2global"] = entry["cameras"][CAMERA_NAMES[0]]["ego2global"]
    (tmp_path / "occ_index_train.json").write_text(json.dumps(index))
    for name in CAMERA_NAMES:
        black = np.zeros((*SOURCE_SIZE, 3), np.uint8)
        cv2.imwrite(str(tmp_path / entry["cameras"][name]["image_path"]), black)
    u, v = project(entry["cameras"]["CAM_FRONT"], POINT)
    cv2.imwrite(str(tmp_path / entry["cameras"]["CAM_FRONT"]["image_path"]), spot_image(u, v, sigma=5.0))
    semantics = np.full(OCC3D_GRID.shape, FREE_CLASS, np.uint8)
    semantics[tuple(OCC3D_GRID.to_index(POINT[None])[0][0])] = CAR
    write_labels(tmp_path / entry["occ_path"], semantics, np.ones(OCC3D_GRID.shape, bool))
    return tmp_path


def project(camera: dict, point: np.ndarray) -> np.ndarray:
    sensor2ego = pose_matrix(camera["sensor2ego"]["translation"], camera["sensor2ego"]["rotation"])
    pixels, depth = ego_to_pixels(point, np.array(camera["intrinsic"]), sensor2ego)
    assert depth > 0
    return pixels


def spot_image(u: float, v: float, sigma: float) -> np.ndarray:
    """A Gaussian spot at (u, v) in pixel-area coordinates: pixel [i, j] centred at (j + .5, i + .5)."""
    rows, cols = np.mgrid[0:SOURCE_SIZE[0], 0:SOURCE_SIZE[1]] + 0.5
    spot = 255 * np.exp(-((cols - u) ** 2 + (rows - v) ** 2) / (2 * sigma**2))
    return np.repeat(spot[..., None], 3, axis=2).round().astype(np.uint8)


def centroid(image: np.ndarray) -> np.ndarray:
    """Brightness-weighted centre (u, v) of a 3 x H x W image, pixel-area coordinates."""
    weight = image.astype(np.float64).sum(axis=0)
    rows, cols = np.mgrid[0:weight.shape[0], 0:weight.shape[1]] + 0.5
    return np.array([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()


def test_image_augmentation_moves_content_with_post_rot_and_post_tran(root):
    dataset = OccupancyDataset(root, "train", INPUT_SIZE, AugmentConfig())
    entry = dataset.samples[0]
    source_pixel = project(entry["cameras"]["CAM_FRONT"], POINT)
    front = CAMERA_NAMES.index("CAM_FRONT")
    flips = set()
    for epoch in EPOCHS:
        dataset.set_epoch(epoch)
        sample = dataset[0]
        post_rot, post_tran = sample.post_rots[front].numpy(), sample.post_trans[front].numpy()
        expected = post_rot[:2, :2] @ source_pixel + post_tran[:2]
        np.testing.assert_allclose(centroid(sample.images[front].numpy()), expected, atol=0.3)
        flips.add(bool(post_rot[0, 0] < 0))
        scale = np.sqrt(abs(np.linalg.det(post_rot[:2, :2])))
        assert INPUT_SIZE[1] / SOURCE_SIZE[1] - 0.06 - 1e-6 <= scale <= INPUT_SIZE[1] / SOURCE_SIZE[1] + 0.11
    assert flips == {False, True}, "16 epochs should draw both flipped and unflipped images"


def test_evaluation_uses_the_test_time_transform(root):
    dataset = OccupancyDataset(root, "train", INPUT_SIZE)
    sample = dataset[0]
    reference = test_time_transform(SOURCE_SIZE, INPUT_SIZE)
    for camera in range(len(CAMERA_NAMES)):
        np.testing.assert_array_equal(sample.post_rots[camera].numpy(), reference.post_rot)
        np.testing.assert_array_equal(sample.post_trans[camera].numpy(), reference.post_tran)
    np.testing.assert_array_equal(sample.bda.numpy(), np.eye(3))
    front = CAMERA_NAMES.index("CAM_FRONT")
    expected = reference.apply_to_points(project(dataset.samples[0]["cameras"]["CAM_FRONT"], POINT))
    np.testing.assert_allclose(centroid(sample.images[front].numpy()), expected, atol=0.3)



def test_small_inputs_decode_reduced_and_keep_the_geometry(root, monkeypatch):
    small = (24, 80)  # a quarter of the source width: the images decode at 1/4, as the gateway does
    reference = test_time_transform(SOURCE_SIZE, small)
    scales = []
    decode_image = preprocess.decode_image

    def recording_decode(data, decoded_scale=1.0, field="image"):
        scales.append(decoded_scale)
        return decode_image(data, decoded_scale, field)

    monkeypatch.setattr(preprocess, "decode_image", recording_decode)
    dataset = OccupancyDataset(root, "train", small)
    dataset[0]
    assert scales == [1.0] * len(CAMERA_NAMES)  # PNGs decode whole, in the gateway too
    # JPEG bytes (the kind is read from the bytes, not the file name) decode at 1/4.
    for name in CAMERA_NAMES:
        path = root / dataset.samples[0]["cameras"][name]["image_path"]
        path.write_bytes(cv2.imencode(".jpg", cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 100])[1])
    scales.clear()
    sample = dataset[0]
    assert scales == [decode_scale(reference)] * len(CAMERA_NAMES) == [0.25] * len(CAMERA_NAMES)
    front = CAMERA_NAMES.index("CAM_FRONT")
    expected = reference.apply_to_points(project(dataset.samples[0]["cameras"]["CAM_FRONT"], POINT))
    np.testing.assert_allclose(centroid(sample.images[front].numpy()), expected, atol=0.3)

def test_bev_flip_moves_labels_and_geometry_together(root):
    dataset = OccupancyDataset(root, "train", INPUT_SIZE, AugmentConfig())
    front = CAMERA_NAMES.index("CAM_FRONT")
    seen = set()
    for epoch in EPOCHS:
        dataset.set_epoch(epoch)
        sample = dataset[0]
        bda = sample.bda.numpy().astype(np.float64)
        seen.add((bda[0, 0] < 0, bda[1, 1] < 0))
        # The model's geometry (the view transformer's ego_points): augmented pixel + depth -> source
        # pixel -> camera -> ego -> bda. Follow the pixel that shows POINT.
        post_rot = sample.post_rots[front].numpy().astype(np.float64)
        post_tran = sample.post_trans[front].numpy().astype(np.float64)
        source_pixel = project(dataset.samples[0]["cameras"]["CAM_FRONT"], POINT)
        pixel = post_rot[:2, :2] @ source_pixel + post_tran[:2]
        sensor2ego = sample.sensor2ego[front].numpy().astype(np.float64)
        depth = (np.linalg.inv(sensor2ego) @ np.append(POINT, 1.0))[2]
        back = np.linalg.inv(post_rot) @ (np.append(pixel, depth) - post_tran)
        camera = np.linalg.inv(sample.intrinsics[front].numpy()) @ np.append(back[:2] * depth, depth)
        ego = bda @ (sensor2ego[:3, :3] @ camera + sensor2ego[:3, 3])
        np.testing.assert_allclose(ego, bda @ POINT, atol=1e-3)
        index, inside = OCC3D_GRID.to_index(ego[None])
        assert inside[0]
        semantics = sample.semantics.numpy()
        assert semantics[tuple(index[0])] == CAR
        assert (semantics == CAR).sum() == 1
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_images_are_bgr_uint8_and_normalised_on_collation(root):
    entry = json.loads((root / "occ_index_train.json").read_text())["samples"][0]
    blue_bgr = np.zeros((*SOURCE_SIZE, 3), np.uint8)
    blue_bgr[..., 0] = 200  # OpenCV order: blue first
    cv2.imwrite(str(root / entry["cameras"]["CAM_BACK"]["image_path"]), blue_bgr)
    dataset = OccupancyDataset(root, "train", INPUT_SIZE)
    batch = collate([dataset[0], dataset[0]])
    back = CAMERA_NAMES.index("CAM_BACK")
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (2, 6, 3, *INPUT_SIZE)
    assert batch.images[0, back, 0].float().mean() == pytest.approx(200, abs=1)  # B, G, R: blue first
    assert batch.images[0, back, 2].max() == 0
    camera_batch = batch.camera_batch()
    # The reference's normalisation of the blue channel (channel 0): its mean and std come first.
    expected_blue = (200 - NORMALIZE_MEAN[0]) / NORMALIZE_STD[0]
    assert camera_batch.images[0, back, 0, 10, 10].item() == pytest.approx(expected_blue, abs=1e-5)
    targets = batch.targets()
    assert targets.semantics.dtype == torch.int64 and targets.semantics.shape == (2, 200, 200, 16)
    assert targets.mask_camera.dtype == torch.bool
    inputs = batch.contract_inputs()
    assert inputs["images"].dtype == np.uint8 and inputs["post_rots"].dtype == np.float32


def test_missing_files_are_named(root):
    entry = json.loads((root / "occ_index_train.json").read_text())["samples"][0]
    (root / entry["occ_path"]).unlink()
    with pytest.raises(InputError, match=re.escape(entry["occ_path"])):
        OccupancyDataset(root, "train", INPUT_SIZE)
    image = root / entry["cameras"]["CAM_BACK_LEFT"]["image_path"]
    image.unlink()
    with pytest.raises(InputError, match=re.escape(image.name)):
        OccupancyDataset(root, "train", INPUT_SIZE)
    with pytest.raises(InputError, match="occ prepare"):
        OccupancyDataset(root / "elsewhere", "val", INPUT_SIZE)


def test_each_camera_is_carried_into_the_key_cameras_ego_frame(root):
    """Cameras with their own ego poses (the car moved between exposures) reach the model in
    CAM_FRONT_LEFT's ego frame, as the reference composes them; without poses nothing changes."""
    index_file = root / "occ_index_train.json"
    index = json.loads(index_file.read_text())
    entry = index["samples"][0]
    plain = OccupancyDataset(root, "train", INPUT_SIZE)[0].sensor2ego.numpy()
    key_pose = {"translation": [100.0, 50.0, 0.0], "rotation": [1.0, 0.0, 0.0, 0.0]}
    later = {"translation": [100.4, 50.1, 0.0], "rotation": [np.cos(0.01), 0.0, 0.0, np.sin(0.01)]}
    for name in CAMERA_NAMES:
        entry["cameras"][name]["ego2global"] = later if name == "CAM_BACK" else key_pose
    index_file.write_text(json.dumps(index))
    moved = OccupancyDataset(root, "train", INPUT_SIZE)[0].sensor2ego.numpy()
    back = CAMERA_NAMES.index("CAM_BACK")
    camera = entry["cameras"]["CAM_BACK"]["sensor2ego"]
    expected = np.linalg.inv(pose_matrix(**key_pose)) @ pose_matrix(**later) @ pose_matrix(**camera)
    np.testing.assert_allclose(moved[back], expected, atol=1e-5)
    assert np.abs(moved[back, :3, 3] - plain[back, :3, 3]).max() > 0.3  # 0.4 m of motion
    others = [i for i in range(len(CAMERA_NAMES)) if i != back]
    np.testing.assert_allclose(moved[others], plain[others], atol=1e-5)  # same pose as the key camera
