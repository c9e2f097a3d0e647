"""A hand-made data root in the `occ prepare` index format: small images, random labels, for fast tests.

Six cameras looking out at the nuScenes yaw angles from 1.5 m, intrinsics scaled to `image_size`.
Also a micro model config (registered into CONFIGS by the tests that need it) that trains in well
under a second per iteration on a CPU.
"""

from pathlib import Path

import cv2
import numpy as np

from occupancy.cameras import CAMERA_NAMES
from occupancy.data_root import labels_path, write_index
from occupancy.geometry import matrix_to_quaternion
from training.data.augment import AugmentConfig
from training.data.prepare import build_index, write_indexes
from training.data.synth.generate import SynthConfig, generate
from training.models.bev_encoder import FPN_LSS  # noqa: F401  (the configs module needs the models package)
from training.models.configs import BevEncoder2DConfig, ModelConfig, ResNetConfig
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
            for name in CAMERA_NAMES:
                path = f"samples/{name}/{token}.png"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                image = cv2.GaussianBlur(rng.integers(0, 256, (*image_size, 3), dtype=np.uint8), (5, 5), 0)
                cv2.imwrite(str(root / path), image)
                cameras[name] = {"image_path": path, **camera(name, image_size)}
            occ_path = labels_path(scene, token)
            write_labels(root / occ_path, rng.integers(0, 18, (200, 200, 16), dtype=np.uint8),
                         rng.random((200, 200, 16)) < 0.5)
            splits[split].append({"token": token, "scene_name": scene, "frame_index": frame,
                                  "cameras": cameras, "occ_path": occ_path})
    for split, samples in splits.items():
        write_index(root, "tiny", split, samples)
    return root


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
