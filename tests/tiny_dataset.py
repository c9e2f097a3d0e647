"""A hand-made data root in the `occ prepare` index format: small images, random labels, for fast tests.

Six cameras looking out at the nuScenes yaw angles from 1.5 m, intrinsics scaled to `image_size`; the
ego drives 2 m per keyframe along x and each camera has its own ego pose (the cameras fire 8 ms apart),
scenes link their keyframes with `prev`/`next` as `occ prepare` writes them. Also micro model configs
(registered into CONFIGS by the tests that need it) that train in well under a second per iteration on
a CPU: a single-frame one and a BEVStereo4D one.
"""

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from occupancy.cameras import CAMERA_NAMES
from occupancy.data_root import labels_path, write_index
from occupancy.geometry import matrix_to_quaternion
from training.data.augment import AugmentConfig
from training.data.prepare import build_index, write_indexes
from training.data.synth.generate import SynthConfig, generate
from training.models.bev_encoder import FPN_LSS  # noqa: F401  (the configs module needs the models package)
from training.models.configs import BevEncoder2DConfig, ModelConfig, ResNetConfig, TemporalConfig
from training.models.view_transformer import DepthBins, VoxelGridConfig
from training.recipe import TrainRecipe

YAWS_DEG = {"CAM_FRONT_LEFT": 55.0, "CAM_FRONT": 0.0, "CAM_FRONT_RIGHT": -55.0,
            "CAM_BACK_LEFT": 110.0, "CAM_BACK": 180.0, "CAM_BACK_RIGHT": -110.0}
# Camera optical axes (x right, y down, z forward) in the ego frame of a camera looking along ego x.
OPTICAL_TO_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

MICRO_CONFIG = ModelConfig(
    name="test-micro",
    description="a few thousand parameters, for tests",
    reference="",
    input_size=(32, 96),
    backbone=ResNetConfig(depth=18, base_channels=8, with_cp=False),
    neck_channels=16,
    bev_channels=8,
    pool_grid=VoxelGridConfig(x=(-40.0, 40.0, 0.8), y=(-40.0, 40.0, 0.8), z=(-1.0, 5.4, 6.4)),
    depth_bins=DepthBins(1.0, 45.0, 4.0),
    bev_encoder=BevEncoder2DConfig(num_layer=(1, 1, 1), num_channels=(8, 16, 32), stride=(1, 2, 2),
                                   neck_channels=8, extra_upsample=None, head_channels=8),
    upsample_bev=True,
    recipe=TrainRecipe(global_batch=None),  # one batch per step, whatever --batch-size
)
MICRO_TEMPORAL_CONFIG = replace(
    MICRO_CONFIG,
    name="test-micro-4d-stereo",
    description="BEVStereo4D of a few thousand parameters, for tests",
    backbone=ResNetConfig(depth=18, base_channels=8, out_indices=(0, 2, 3), with_cp=False),
    depth_loss_weight=0.05,
    temporal=TemporalConfig(aspp_mid_channels=8),
)
EGO_SPEED_M_PER_FRAME = 2.0
CAMERA_INTERVAL_FRACTION = 0.016  # of a frame interval between consecutive cameras (8 ms of 0.5 s)
KEYFRAME_INTERVAL_US = 500_000
NO_IMAGE_AUGMENT = AugmentConfig(resize_lim=(0.0, 0.0), rot_lim=(0.0, 0.0), flip=False)


def camera(name: str, image_size: tuple[int, int]) -> dict:
    """Index entry of one camera (intrinsic in pixels of `image_size` (H, W), sensor2ego pose)."""
    height, width = image_size
    focal = 1266.4 * width / 1600
    yaw = np.radians(YAWS_DEG[name])
    cos, sin = np.cos(yaw), np.sin(yaw)
    rotation_z = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return {
        "intrinsic": [[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]],
        "sensor2ego": {"translation": [1.0, 0.0, 1.5],
                       "rotation": matrix_to_quaternion(rotation_z @ OPTICAL_TO_EGO).tolist()},
    }


def write_tiny_dataset(root: Path, scenes: int = 2, frames: int = 2, val_scenes: int = 1,
                       image_size: tuple[int, int] = (45, 80), seed: int = 0) -> Path:
    """Write images, labels.npz files and both split indexes under `root`; returns root."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for scene_index in range(scenes):
        scene = f"scene-{scene_index:04d}"
        split = "val" if scene_index >= scenes - val_scenes else "train"
        for frame in range(frames):
            token = f"{scene_index:04d}{frame:04d}"
            cameras = {}
            for index, name in enumerate(CAMERA_NAMES):
                path = f"samples/{name}/{token}.png"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                image = cv2.GaussianBlur(rng.integers(0, 256, (*image_size, 3), dtype=np.uint8), (5, 5), 0)
                cv2.imwrite(str(root / path), image)
                fired = frame + index * CAMERA_INTERVAL_FRACTION
                cameras[name] = {"image_path": path, **camera(name, image_size),
                                 "ego2global": ego_pose(scene_index, fired), "timestamp": timestamp_us(fired)}
            occ_path = labels_path(scene, token)
            write_labels(root / occ_path, rng.integers(0, 18, (200, 200, 16), dtype=np.uint8),
                         rng.random((200, 200, 16)) < 0.5)
            last = frame + 1 == frames
            splits[split].append({"token": token, "scene_name": scene, "scene_token": scene,
                                  "frame_index": frame, "timestamp": timestamp_us(frame),
                                  "ego2global": ego_pose(scene_index, frame), "cameras": cameras,
                                  "occ_path": occ_path,
                                  "prev": f"{scene_index:04d}{frame - 1:04d}" if frame else None,
                                  "next": None if last else f"{scene_index:04d}{frame + 1:04d}"})
    for split, samples in splits.items():
        write_index(root, "tiny", split, samples)
    return root


def timestamp_us(frame: float) -> int:
    """Microseconds at `frame` keyframes into a scene (0.5 s apart, as nuScenes' samples)."""
    return 1_533_151_603_547_590 + round(frame * KEYFRAME_INTERVAL_US)


def ego_pose(scene_index: int, frame: float) -> dict:
    """The ego pose `frame` keyframes into a scene (fractions: between keyframes), far from the origin as
    real global poses are: driving along x, turning slowly."""
    yaw = 0.3 * scene_index + 0.02 * frame
    return {"translation": [600.0 + 100 * scene_index + EGO_SPEED_M_PER_FRAME * frame, 1600.0, 0.0],
            "rotation": [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]}


def write_labels(path: Path, semantics: np.ndarray, mask_camera: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, semantics=semantics.astype(np.uint8), mask_lidar=mask_camera.astype(np.uint8),
                        mask_camera=mask_camera.astype(np.uint8))


def write_synthetic_scene(root: Path, seed: int) -> Path:
    """One scene of four keyframes of the synthetic world (small images, its 2D labels), indexed as
    `occ prepare` does (all frames in the train split); returns root."""
    config = SynthConfig(scenes=1, frames=4, seed=seed, val_scenes=0, image_size=(90, 160), ray_scale=2)
    generate(root, config, progress=False)
    write_indexes(root, "v1.0-trainval", build_index(root, progress=False))
    return root


def record_initial_weights(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """A list that receives a copy of the weights every training of this test starts its first step from
    (what `training.train.build_trainer` is given)."""
    from training import train as training

    started: list[dict[str, torch.Tensor]] = []
    build_trainer = training.build_trainer

    def recording(options, config, env, max_iters, raw_model):
        started.append({name: value.clone() for name, value in raw_model.state_dict().items()})
        return build_trainer(options, config, env, max_iters, raw_model)

    monkeypatch.setattr(training, "build_trainer", recording)
    return started
