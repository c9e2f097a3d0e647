"""Camera geometry: quaternions, rigid transforms, projections.

Transforms are named by the frames they map: `sensor2ego` takes camera coordinates to ego
coordinates. Quaternions are (w, x, y, z), as nuScenes stores them.
"""

import numpy as np


def quaternion_to_matrix(quaternion) -> np.ndarray:
    """3x3 rotation matrix of a quaternion (w, x, y, z); the quaternion is normalised first."""
    q = np.asarray(quaternion, dtype=np.float64)
    norm = np.linalg.norm(q)
    if q.shape != (4,) or not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"a quaternion needs 4 finite numbers, not all zero: got {q.tolist()}")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Quaternion (w, x, y, z) with w >= 0 of a 3x3 rotation matrix."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    return q if q[0] >= 0 else -q


def pose_matrix(translation, rotation) -> np.ndarray:
    """4x4 homogeneous transform from a translation (m) and a quaternion (w, x, y, z)."""
    transform = np.eye(4)
    transform[:3, :3] = quaternion_to_matrix(rotation)
    transform[:3, 3] = np.asarray(translation, dtype=np.float64)
    return transform


def transform_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points (..., 3)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ transform[:3, :3].T + transform[:3, 3]


def invert_rigid(transform: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform (rotation + translation): `ego2sensor = invert_rigid(sensor2ego)`."""
    transform = np.asarray(transform, dtype=np.float64)
    inverse = np.eye(4)
    inverse[:3, :3] = transform[:3, :3].T
    inverse[:3, 3] = -transform[:3, :3].T @ transform[:3, 3]
    return inverse


def camera_to_pixels(points_cam: np.ndarray, intrinsic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of camera-frame points (..., 3) (x right, y down, z forward, metres).

    Returns pixels (..., 2) as (u, v) and depth (..., ) = z in metres. Points with depth <= 0 are
    behind the camera: their pixels are meaningless (inf or mirrored), so callers mask on depth.
    """
    points_cam = np.asarray(points_cam, dtype=np.float64)
    homogeneous = points_cam @ np.asarray(intrinsic, dtype=np.float64).T
    depth = points_cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        pixels = homogeneous[..., :2] / depth[..., None]
    return pixels, depth


def pixels_to_camera(pixels: np.ndarray, depth: np.ndarray, intrinsic: np.ndarray) -> np.ndarray:
    """Camera-frame points (..., 3) of pixels (..., 2) as (u, v) at depth (..., ) = z in metres."""
    pixels = np.asarray(pixels, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float64)
    scaled = np.concatenate([pixels * depth[..., None], depth[..., None]], axis=-1)
    return scaled @ np.linalg.inv(np.asarray(intrinsic, dtype=np.float64)).T


def ego_to_pixels(
    points_ego: np.ndarray, intrinsic: np.ndarray, sensor2ego: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Project ego-frame points (..., 3) into a camera: pixels (..., 2) as (u, v) and depth (..., ) in metres.

    `sensor2ego` (4x4) maps camera to ego coordinates (nuScenes calibrated_sensor), so the points go
    through its inverse first; `intrinsic` (3x3) is in pixels of the source image.
    """
    points_cam = transform_points(invert_rigid(sensor2ego), points_ego)
    return camera_to_pixels(points_cam, intrinsic)


def pixels_to_ego(
    pixels: np.ndarray, depth: np.ndarray, intrinsic: np.ndarray, sensor2ego: np.ndarray
) -> np.ndarray:
    """Ego-frame points (..., 3) of pixels (..., 2) at depth (..., ) metres; inverse of `ego_to_pixels`."""
    return transform_points(sensor2ego, pixels_to_camera(pixels, depth, intrinsic))


def sensor_to_key_ego(
    sensor2ego: np.ndarray, ego2global: np.ndarray, key_ego2global: np.ndarray
) -> np.ndarray:
    """Camera -> key ego transforms (... x 4 x 4, float64): inv(key_ego2global) @ ego2global @ sensor2ego.

    Each camera of a nuScenes sample has its own ego pose (they expose tens of milliseconds apart);
    the reference (BEVDet `prepare_inputs`) carries every camera into the ego frame of the key camera,
    the first in CAMERA_NAMES order (CAM_FRONT_LEFT), through the global frame, in float64. `sensor2ego`
    and `ego2global` are per camera (... x 4 x 4); `key_ego2global` broadcasts against them.
    """
    sensor2ego, ego2global, key_ego2global = (np.asarray(matrix, dtype=np.float64)
                                              for matrix in (sensor2ego, ego2global, key_ego2global))
    return np.linalg.inv(key_ego2global) @ ego2global @ sensor2ego
