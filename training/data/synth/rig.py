"""The sensor rig of the synthetic car: six cameras and a roof LiDAR placed like nuScenes' rig.

Poses are `sensor2ego` (the nuScenes calibrated_sensor convention). Cameras use the optical frame
(x right, y down, z forward); the LiDAR frame has x to the ego's right, as LIDAR_TOP has.
"""

from dataclasses import dataclass

import numpy as np

from occupancy.cameras import CAMERA_NAMES, SOURCE_IMAGE_SIZE
from occupancy.geometry import matrix_to_quaternion

# Camera optical axes -> ego axes: optical z (forward) -> ego x, optical x (right) -> ego -y,
# optical y (down) -> ego -z.
_OPTICAL_TO_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

# Approximate nuScenes calibration (log n015 values, rounded): name -> (translation m, yaw deg of
# the optical axis about ego z, focal px, principal point px at 1600 x 900).
_NUSCENES_CAMERAS: dict[str, tuple[tuple[float, float, float], float, float, tuple[float, float]]] = {
    "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 55.0, 1272.6, (826.6, 479.8)),
    "CAM_FRONT": ((1.70, 0.02, 1.51), 0.0, 1266.4, (816.3, 491.5)),
    "CAM_FRONT_RIGHT": ((1.55, -0.49, 1.50), -55.0, 1260.8, (808.0, 495.3)),
    "CAM_BACK_LEFT": ((1.04, 0.48, 1.59), 110.0, 1256.7, (792.1, 492.8)),
    "CAM_BACK": ((0.03, 0.00, 1.58), 180.0, 809.2, (829.2, 481.8)),
    "CAM_BACK_RIGHT": ((1.01, -0.48, 1.56), -110.0, 1259.5, (807.3, 501.2)),
}
LIDAR_TRANSLATION = (0.94, 0.0, 1.84)  # LIDAR_TOP on the roof
LIDAR_YAW_DEG = -90.0  # its x axis points to the ego's right


def rotation_z(angle_rad: float) -> np.ndarray:
    """3x3 rotation about z by `angle_rad` (counter-clockwise seen from above)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Sensor:
    """One calibrated sensor: `sensor2ego` pose and, for cameras, the intrinsic of its image."""

    name: str
    translation: tuple[float, float, float]  # metres, ego frame
    rotation: np.ndarray  # 3x3, sensor -> ego
    intrinsic: np.ndarray | None  # 3x3 pixels, None for the LiDAR
    image_size: tuple[int, int] | None  # (height, width), None for the LiDAR

    @property
    def quaternion(self) -> list[float]:
        """Rotation as (w, x, y, z)."""
        return [float(v) for v in matrix_to_quaternion(self.rotation)]

    @property
    def sensor2ego(self) -> np.ndarray:
        """4x4 sensor -> ego transform."""
        transform = np.eye(4)
        transform[:3, :3] = self.rotation
        transform[:3, 3] = self.translation
        return transform


def camera_rig(
    image_size: tuple[int, int] = SOURCE_IMAGE_SIZE, jitter: np.random.Generator | None = None
) -> list[Sensor]:
    """The six cameras in CAMERA_NAMES order, intrinsics scaled to `image_size` (height, width).

    `jitter` perturbs each camera slightly (±0.5 deg yaw/pitch, ±1 cm), as calibrations differ
    between nuScenes logs.
    """
    height, width = image_size
    scale_x, scale_y = width / SOURCE_IMAGE_SIZE[1], height / SOURCE_IMAGE_SIZE[0]
    sensors = []
    for name in CAMERA_NAMES:
        translation, yaw_deg, focal, (cx, cy) = _NUSCENES_CAMERAS[name]
        yaw, pitch = np.radians(yaw_deg), 0.0
        offset = np.zeros(3)
        if jitter is not None:
            yaw += np.radians(jitter.uniform(-0.5, 0.5))
            pitch = np.radians(jitter.uniform(-0.5, 0.5))
            offset = jitter.uniform(-0.01, 0.01, 3)
        # Pitch tilts the optical axis down about the optical x axis.
        c, s = np.cos(pitch), np.sin(pitch)
        tilt = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
        rotation = rotation_z(yaw) @ _OPTICAL_TO_EGO @ tilt
        intrinsic = np.array(
            [[focal * scale_x, 0.0, cx * scale_x], [0.0, focal * scale_y, cy * scale_y], [0.0, 0.0, 1.0]]
        )
        sensors.append(
            Sensor(
                name,
                tuple(float(v) for v in np.add(translation, offset)),
                rotation,
                intrinsic,
                (height, width),
            )
        )
    return sensors


def lidar_sensor() -> Sensor:
    """LIDAR_TOP: roof-mounted, x to the right of the car."""
    return Sensor("LIDAR_TOP", LIDAR_TRANSLATION, rotation_z(np.radians(LIDAR_YAW_DEG)), None, None)


def lidar_directions(beams: int = 32, azimuths: int = 1084) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions (beams * azimuths, 3) in the LiDAR frame of a 32-beam spinning LiDAR
    (elevations -30.7 to +10.7 deg, like nuScenes' HDL-32E), and each ray's ring (beam) index."""
    elevation = np.radians(np.linspace(-30.67, 10.67, beams))
    azimuth = np.linspace(-np.pi, np.pi, azimuths, endpoint=False)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    directions = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)
    return directions.reshape(-1, 3), np.repeat(np.arange(beams), azimuths)
