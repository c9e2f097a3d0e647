"""A nuScenes-like six-camera rig, for parity checks and benchmarks that need realistic geometry.

Real frustums map many points to one BEV cell (every ray starts at the camera, and near the car the
rays of neighbouring pixels share cells), so checks with uniform random voxel indices miss the
duplicate-index bugs of scatter-based exports. The numbers follow the nuScenes rig: six cameras in
CAMERA_NAMES order about 1.5 m above the ground, front cameras with f ~ 1266 px, the back camera
with f ~ 809 px, on 1600 x 900 source images.
"""

import math

import numpy as np
import torch

from occupancy.cameras import NUM_CAMERAS, SOURCE_IMAGE_SIZE
from training.batch import CameraBatch

# Per camera, in CAMERA_NAMES order: yaw of the optical axis in the ego frame (degrees, counter-
# clockwise from x forward), focal length (px), mounting position in the ego frame (m).
_CAMERAS: tuple[tuple[float, float, tuple[float, float, float]], ...] = (
    (55.0, 1272.6, (1.52, 0.49, 1.51)),  # CAM_FRONT_LEFT
    (0.0, 1266.4, (1.70, 0.02, 1.51)),  # CAM_FRONT
    (-55.0, 1260.8, (1.55, -0.49, 1.50)),  # CAM_FRONT_RIGHT
    (110.0, 1256.7, (1.04, 0.48, 1.59)),  # CAM_BACK_LEFT
    (180.0, 809.2, (0.03, 0.00, 1.58)),  # CAM_BACK
    (-110.0, 1259.5, (1.01, -0.48, 1.56)),  # CAM_BACK_RIGHT
)


def camera_to_ego_rotation(yaw_deg: float, pitch_deg: float = 0.0) -> np.ndarray:
    """3x3 rotation taking camera axes (x right, y down, z forward) to ego axes (x fwd, y left, z up).

    `pitch_deg` > 0 tilts the optical axis down.
    """
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    forward = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), -math.sin(pitch)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.cross(forward, right)
    return np.stack((right, down, forward), axis=1)


def test_time_transform(input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """post_rot (3x3) and post_tran (3,) of the reference test-time resize and bottom crop.

    The source image is scaled to the input width and its bottom `input_size[0]` rows kept: for
    256 x 704, scale 0.44 and crop offset 140.
    """
    height, width = input_size
    scale = width / SOURCE_IMAGE_SIZE[1]
    crop_top = round(SOURCE_IMAGE_SIZE[0] * scale) - height
    return np.diag([scale, scale, 1.0]), np.array([0.0, -crop_top, 0.0])


def nuscenes_like_batch(input_size: tuple[int, int], batch_size: int = 1, seed: int = 0) -> CameraBatch:
    """A CameraBatch with the nuScenes-like rig; each frame's cameras get a small random pitch
    (up to 1 degree) and height change (up to 5 cm), and images are random normalised values.

    Shapes: images B x 6 x 3 x H x W; intrinsics B x 6 x 3 x 3; sensor2ego B x 6 x 4 x 4;
    post_rots B x 6 x 3 x 3; post_trans B x 6 x 3; bda B x 3 x 3 (identity).
    """
    rng = np.random.default_rng(seed)
    post_rot, post_tran = test_time_transform(input_size)
    src_h, src_w = SOURCE_IMAGE_SIZE
    intrinsics = np.zeros((batch_size, NUM_CAMERAS, 3, 3))
    sensor2ego = np.tile(np.eye(4), (batch_size, NUM_CAMERAS, 1, 1))
    for b in range(batch_size):
        for n, (yaw, focal, position) in enumerate(_CAMERAS):
            intrinsics[b, n] = [[focal, 0.0, src_w / 2], [0.0, focal, src_h / 2], [0.0, 0.0, 1.0]]
            sensor2ego[b, n, :3, :3] = camera_to_ego_rotation(yaw, rng.uniform(-1.0, 1.0))
            sensor2ego[b, n, :3, 3] = np.add(position, (0.0, 0.0, rng.uniform(-0.05, 0.05)))
    generator = torch.Generator().manual_seed(seed)
    height, width = input_size
    return CameraBatch(
        images=torch.randn(batch_size, NUM_CAMERAS, 3, height, width, generator=generator),
        intrinsics=torch.tensor(intrinsics, dtype=torch.float32),
        sensor2ego=torch.tensor(sensor2ego, dtype=torch.float32),
        post_rots=torch.tensor(post_rot, dtype=torch.float32).expand(batch_size, NUM_CAMERAS, 3, 3).clone(),
        post_trans=torch.tensor(post_tran, dtype=torch.float32).expand(batch_size, NUM_CAMERAS, 3).clone(),
        bda=torch.eye(3).expand(batch_size, 3, 3).clone(),
    )


# A drive for temporal models: 2 m and 0.03 rad of yaw per frame (0.5 s at 14 km/h), the cameras exposing
# 8 ms apart (each with its own ego pose, as nuScenes' do).
DRIVE_STEP_M, DRIVE_YAW_RAD, CAMERA_DELAY_FRACTION = 2.0, 0.03, 0.016


def _ego_pose(time: float) -> np.ndarray:
    """Ego -> global at `time` frames into the drive, 4 x 4."""
    yaw = DRIVE_YAW_RAD * time
    pose = np.eye(4)
    pose[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    pose[:3, 3] = (600.0 + DRIVE_STEP_M * time, 1600.0, 0.0)
    return pose


def nuscenes_like_drive(input_size: tuple[int, int], frames: int, seed: int = 0) -> list[CameraBatch]:
    """`frames` frames of the rig (`nuscenes_like_batch`'s cameras) driving ahead, batch 1. Each frame's
    `sensor2ego` is its cameras in its key ego (CAM_FRONT_LEFT's ego pose) and `history.sensor2keyego[:, 0]`
    the previous frame's cameras in that key ego (the frame's own on the first one), composed in float64 as
    occupancy.geometry.sensor_to_key_ego does; `history.images` is left empty."""
    from occupancy.geometry import sensor_to_key_ego
    from training.batch import FrameHistory

    rig = nuscenes_like_batch(input_size, 1, seed)
    mounts = rig.sensor2ego[0].double().numpy()
    poses = [np.stack([_ego_pose(f + CAMERA_DELAY_FRACTION * c) for c in range(NUM_CAMERAS)])
             for f in range(frames)]
    drive = []
    for f in range(frames):
        key = poses[f][0]
        current = sensor_to_key_ego(mounts, poses[f], key)
        previous = sensor_to_key_ego(mounts, poses[max(f - 1, 0)], key)
        history = FrameHistory(torch.zeros(1, 1, 0), torch.tensor(previous, dtype=torch.float32)[None, None])
        drive.append(CameraBatch(rig.images, rig.intrinsics, torch.tensor(current, dtype=torch.float32)[None],
                                 rig.post_rots, rig.post_trans, rig.bda, history))
    return drive
