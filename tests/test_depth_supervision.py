"""Depth supervision (BEVDepth's): sparse depth maps through the image augmentation, their nearest-point
downsampling and one-hot bins, a loss that ignores pixels without depth, and a demo-tiny step that learns."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_dataset import write_tiny_dataset

from occupancy.cameras import CAMERA_NAMES
from occupancy.errors import InputError
from occupancy.geometry import ego_to_pixels, pose_matrix, quaternion_to_matrix, transform_points
from training.data.augment import AugmentConfig
from training.data.dataset import OccupancyDataset, collate
from training.models.configs import CONFIGS, build_model
from training.models.view_transformer import DepthBins, depth_bin_targets, depth_loss, downsample_gt_depth
from training.train import Distributed, TrainOptions, build_trainer, train_step

SOURCE_SIZE = (45, 80)
POINTS_PER_CAMERA = 60


def add_labels_2d(root: Path, seed: int = 0) -> None:
    """labels_2d like the synthetic data's: pixels (source image) and depths of random ego points each camera
    sees; the points' ego coordinates go alongside (`ego`) so tests can project them independently."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        path = root / f"occ_index_{split}.json"
        index = json.loads(path.read_text())
        for entry in index["samples"]:
            entry["labels_2d"] = {}
            for name in CAMERA_NAMES:
                camera = entry["cameras"][name]
                points = rng.uniform([-40, -40, -1], [40, 40, 4], size=(4000, 3))
                sensor2ego = pose(camera)
                uv, depth = ego_to_pixels(points, np.array(camera["intrinsic"]), sensor2ego)
                seen = (depth > 0.5) & (uv[:, 0] >= 0) & (uv[:, 0] < SOURCE_SIZE[1]) & (uv[:, 1] >= 0) \
                    & (uv[:, 1] < SOURCE_SIZE[0])
                keep = np.flatnonzero(seen)[:POINTS_PER_CAMERA]
                relative = f"samples_2d/{name}/{entry['token']}.npz"
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                np.savez(root / relative, uv=uv[keep].astype(np.float32),
                         depth=depth[keep].astype(np.float32), semantics=np.ones(len(keep), np.uint8),
                         ego=points[keep])
                entry["labels_2d"][name] = relative
        path.write_text(json.dumps(index))


def yaw_pose(translation: list[float], yaw_deg: float) -> dict:
    return {"translation": translation, "rotation": [float(np.cos(np.radians(yaw_deg) / 2)), 0.0, 0.0,
                                                     float(np.sin(np.radians(yaw_deg) / 2))]}


def add_lidar(root: Path, seed: int = 0) -> None:
    """A LiDAR sweep per frame, as real nuScenes roots have: random global points written in the frame
    of a roof LiDAR yawed -90 degrees, while the car moves, so each camera fires from a different ego
    pose than the sweep. The global points go alongside (`lidar_truth/`) so tests can project them
    independently."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        path = root / f"occ_index_{split}.json"
        index = json.loads(path.read_text())
        for entry in index["samples"]:
            start = rng.uniform(-500, 500, 2)
            lidar = {"path": f"samples/LIDAR_TOP/{entry['token']}.pcd.bin",
                     "sensor2ego": yaw_pose([0.94, 0.0, 1.84], -90.0),
                     "ego2global": yaw_pose([*start, 0.0], 30.0)}
            for n, name in enumerate(CAMERA_NAMES):  # 10 m/s, images 8 ms apart, yawing 1 degree each
                moved = start + 0.08 * (n + 1) * np.array([np.cos(np.radians(30)), np.sin(np.radians(30))])
                entry["cameras"][name]["ego2global"] = yaw_pose([*moved, 0.0], 30.0 + n + 1)
            world = pose_matrix(**lidar["ego2global"]) @ pose_matrix(**lidar["sensor2ego"])
            ego_points = rng.uniform([-40, -40, -1], [40, 40, 4], size=(20000, 3))
            global_points = ego_points @ quaternion_to_matrix(lidar["ego2global"]["rotation"]).T \
                + lidar["ego2global"]["translation"]
            in_lidar = (global_points - world[:3, 3]) @ world[:3, :3]
            sweep = np.concatenate([in_lidar, np.zeros((len(in_lidar), 2))], 1).astype(np.float32)
            (root / lidar["path"]).parent.mkdir(parents=True, exist_ok=True)
            sweep.tofile(root / lidar["path"])
            (root / "lidar_truth").mkdir(exist_ok=True)
            np.save(root / "lidar_truth" / f"{entry['token']}.npy", global_points)
            entry["lidar"] = lidar
        path.write_text(json.dumps(index))


def ego_points_seen(root: Path, entry: dict, name: str) -> np.ndarray:
    """The points a camera's depth labels come from, in the frame the model's sensor2ego maps the camera
    into: the key camera's (CAM_FRONT_LEFT's) ego frame, each camera firing from its own ego pose."""
    key_ego2global = pose_matrix(**entry["cameras"][CAMERA_NAMES[0]]["ego2global"])
    if "labels_2d" in entry:  # written in the ego frame at the camera's own time
        with np.load(root / entry["labels_2d"][name]) as labels:
            camera_ego2global = pose_matrix(**entry["cameras"][name]["ego2global"])
            return transform_points(np.linalg.inv(key_ego2global) @ camera_ego2global, labels["ego"])
    global_points = np.load(root / "lidar_truth" / f"{entry['token']}.npy")
    return transform_points(np.linalg.inv(key_ego2global), global_points)


def pose(camera: dict) -> np.ndarray:
    return pose_matrix(camera["sensor2ego"]["translation"], camera["sensor2ego"]["rotation"])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = write_tiny_dataset(tmp_path_factory.mktemp("depth"), scenes=2, frames=1, image_size=SOURCE_SIZE)
    add_labels_2d(root)
    return root


@pytest.fixture(scope="module")
def lidar_root(tmp_path_factory) -> Path:
    root = write_tiny_dataset(tmp_path_factory.mktemp("lidar"), scenes=2, frames=1, image_size=SOURCE_SIZE)
    add_lidar(root)
    return root


def test_downsampled_depth_is_the_nearest_point_of_each_patch():
    generator = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 3, 8, 12, generator=generator) * 50
    depth[torch.rand(depth.shape, generator=generator) < 0.7] = 0.0  # sparse: most pixels have no point
    depth[0, 0, :4, :4] = 0.0  # a patch with no point at all
    result = downsample_gt_depth(depth, 4)
    assert result.shape == (2, 3, 2, 3)
    for b, n, i, j in np.ndindex(*result.shape):
        patch = depth[b, n, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
        valid = patch[patch > 0]
        expected = valid.min() if len(valid) else torch.tensor(0.0)
        assert result[b, n, i, j] == expected
    assert result[0, 0, 0, 0] == 0


def test_depth_bins_at_edges_and_out_of_range():
    bins = DepthBins(1.0, 45.0, 0.5)  # D = 88, bin i covers [1 + 0.5 i, 1.5 + 0.5 i)
    depths = torch.tensor([1.0, 1.25, 1.5, 2.0, 44.5, 44.99, 0.0, 0.99, 45.0, 60.0])
    targets = depth_bin_targets(depths, bins)
    assert targets.shape == (10, 88)
    expected_bins = [0, 0, 1, 2, 87, 87]
    for row, expected in enumerate(expected_bins):
        assert targets[row].sum() == 1 and targets[row, expected] == 1, (depths[row], targets[row].argmax())
    assert targets[len(expected_bins):].sum() == 0  # no point, below 1 m, at or past 45 m: ignored


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("source", ["labels_2d", "lidar"])
def test_depth_points_follow_the_image_augmentation(request, source, seed):
    root = request.getfixturevalue({"labels_2d": "root", "lidar": "lidar_root"}[source])
    dataset = OccupancyDataset(root, "train", (64, 176), AugmentConfig(), seed=seed, depth=True)
    sample = dataset[0]
    entry = dataset.samples[0]
    assert sample.gt_depth.shape == (6, 64, 176)
    for n, name in enumerate(CAMERA_NAMES):
        ego = ego_points_seen(root, entry, name)
        # The camera geometry the model receives: ego -> source pixels -> post_rot/post_tran -> input pixels.
        intrinsic, sensor2ego = sample.intrinsics[n].double().numpy(), sample.sensor2ego[n].double().numpy()
        uv, depth = ego_to_pixels(ego, intrinsic, sensor2ego)
        uv, depth = uv[depth > 0], depth[depth > 0]  # behind the camera: no depth label
        post_rot, post_tran = sample.post_rots[n].double().numpy(), sample.post_trans[n].double().numpy()
        uvd = np.concatenate([uv, depth[:, None]], 1) @ post_rot.T + post_tran
        np.testing.assert_allclose(uvd[:, 2], depth)  # depth along the optical axis is unchanged
        cols, rows = np.floor(uvd[:, 0]).astype(int), np.floor(uvd[:, 1]).astype(int)
        inside = (cols >= 0) & (cols < 176) & (rows >= 0) & (rows < 64)
        nearest: dict[tuple[int, int], float] = {}
        for row, col, d in zip(rows[inside], cols[inside], depth[inside], strict=True):
            nearest[(row, col)] = min(d, nearest.get((row, col), np.inf))
        gt = sample.gt_depth[n].numpy()
        assert len(nearest) > 10 and np.count_nonzero(gt) == len(nearest)
        for (row, col), d in nearest.items():
            assert gt[row, col] == pytest.approx(d, rel=1e-5)


def test_no_labels_2d_means_no_depth(tmp_path):
    root = write_tiny_dataset(tmp_path, scenes=2, frames=1, image_size=SOURCE_SIZE)
    batch = collate([OccupancyDataset(root, "train", (64, 176), depth=True)[0]])
    assert batch.gt_depth is None and batch.targets().gt_depth is None


def test_depth_loss_ignores_pixels_without_depth():
    bins = DepthBins(1.0, 45.0, 1.0)
    logits = torch.randn(1, 2, bins.count, 3, 4, requires_grad=True)
    gt = torch.zeros(1, 2, 12, 16)
    gt[0, 0, 1, 2] = 10.3  # feature pixel (0, 0) of camera 0 -> bin 9
    gt[0, 0, 1, 3] = 7.0  # same patch, nearer: this one wins -> bin 6
    gt[0, 1, 9, 13] = 30.0  # feature pixel (2, 3) of camera 1 -> bin 29
    gt[0, 1, 5, 5] = 60.0  # out of range: no target
    probabilities = logits.softmax(2)
    loss = depth_loss(probabilities, gt, bins, downsample=4)
    # Brute force: BCE summed over the bins of the two supervised pixels, averaged over them.
    expected = 0.0
    for (n, i, j), index in (((0, 0, 0), 6), ((1, 2, 3), 29)):
        target = F.one_hot(torch.tensor(index), bins.count).float()
        expected += F.binary_cross_entropy(probabilities[0, n, :, i, j], target, reduction="sum")
    torch.testing.assert_close(loss, expected / 2)
    loss.backward()
    grad_norm = logits.grad.abs().sum(2)[0]  # N x fH x fW
    supervised = torch.zeros_like(grad_norm, dtype=torch.bool)
    supervised[0, 0, 0] = supervised[1, 2, 3] = True
    assert (grad_norm[~supervised] == 0).all()
    assert (grad_norm[supervised] > 0).all()


def test_configs_weight_depth_in_the_demos_and_the_stereo_configs_only():
    """The single-frame reference configs have no depth loss; BEVStereo4D's has weight 0.05
    (`loss_depth_weight` of every 4D-Stereo config); the demos take BEVDepth's 3."""
    demos = {"demo-tiny", "demo-tiny-2d", "demo-tiny-4d-stereo"}
    assert all(CONFIGS[name].depth_loss_weight == 3.0 for name in demos)
    for name, config in CONFIGS.items():
        if name not in demos:
            assert config.depth_loss_weight == (0.05 if config.temporal else 0.0), name


def test_demo_tiny_step_with_depth_supervision_learns(root, tmp_path):
    torch.manual_seed(0)
    config = CONFIGS["demo-tiny"]
    options = TrainOptions(config="demo-tiny", data_root=root, work_dir=tmp_path, batch_size=1)
    config = replace(config, recipe=replace(config.recipe, warmup_iters=0))  # full lr from the first step
    trainer = build_trainer(options, config, Distributed(0, 1, torch.device("cpu")), 1, build_model(config))
    assert trainer.depth_loss_weight == 3.0
    trainer.model.train()
    batch = collate([OccupancyDataset(root, "train", config.input_size, depth=True)[0]])
    assert batch.gt_depth.shape == (1, 6, *config.input_size) and (batch.gt_depth > 0).any()
    history = [train_step(trainer, [batch]) for _ in range(6)]
    assert set(history[0]) == {"loss", "loss_occ", "loss_depth"}
    for losses in history:
        torch.testing.assert_close(losses["loss"], losses["loss_occ"] + losses["loss_depth"])
    assert history[-1]["loss_depth"] < history[0]["loss_depth"]
    assert history[-1]["loss"] < history[0]["loss"]


def test_missing_or_malformed_lidar_sweep_is_named(lidar_root, tmp_path):
    root = Path(shutil.copytree(lidar_root, tmp_path / "data"))
    entry = OccupancyDataset(root, "train", (64, 176), depth=True).samples[0]
    sweep = root / entry["lidar"]["path"]
    np.zeros(6, np.float32).tofile(sweep)
    with pytest.raises(InputError, match=f"{sweep}: not a nuScenes LiDAR sweep"):
        OccupancyDataset(root, "train", (64, 176), depth=True)[0]
    sweep.unlink()
    with pytest.raises(InputError, match=f"{sweep}: file missing"):
        OccupancyDataset(root, "train", (64, 176), depth=True)
    assert len(OccupancyDataset(root, "train", (64, 176))) > 0  # without depth the sweep is not needed
