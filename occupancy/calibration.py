"""The calibration schema of the HTTP API (API.md), and the arrays the model takes from it.

Poses follow nuScenes: `sensor2ego` (calibrated_sensor) maps camera coordinates into the ego
frame, `ego2global` (ego_pose) maps ego coordinates into the global frame; rotations are
quaternions (w, x, y, z), stored normalised. Intrinsics are in pixels of the source image.
Validation errors carry the field path (`cameras.CAM_FRONT.intrinsic`) in pydantic's `loc`;
`parse_calibration` turns them into one `InputError` message.
"""

import math
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from occupancy.cameras import CAMERA_NAMES
from occupancy.errors import InputError
from occupancy.geometry import matrix_to_quaternion, pose_matrix, sensor_to_key_ego
from occupancy.json_input import load_json

Vector3 = tuple[FiniteFloat, FiniteFloat, FiniteFloat]
Quaternion = tuple[FiniteFloat, FiniteFloat, FiniteFloat, FiniteFloat]
Matrix3 = tuple[Vector3, Vector3, Vector3]
Timestamp = Annotated[StrictInt, Field(ge=0, lt=2**63)]  # microseconds, int64 like nuScenes'

# How far from orthonormal a rotation block may be (float32 round trips reach ~1e-7).
_ROTATION_TOLERANCE = 1e-4


class _Schema(BaseModel):
    # Unknown fields are rejected so a typo ("intrinsics", "ego2Global") is an error, not a silent default.
    model_config = ConfigDict(frozen=True, extra="forbid")


class Pose(_Schema):
    """A rigid transform: `translation` in metres, `rotation` a quaternion (w, x, y, z)."""

    translation: Vector3
    rotation: Quaternion

    @field_validator("rotation")
    @classmethod
    def _normalised(cls, rotation: Quaternion) -> Quaternion:
        norm = math.hypot(*rotation)  # hypot: no overflow for huge components
        if norm == 0.0:
            raise ValueError("the quaternion (w, x, y, z) is all zeros, which is no rotation")
        return tuple(component / norm for component in rotation)

    def matrix(self) -> np.ndarray:
        """The 4x4 homogeneous transform, float64."""
        return pose_matrix(self.translation, self.rotation)

    @classmethod
    def from_matrix(cls, transform: np.ndarray, field: str = "pose") -> "Pose":
        """The pose of a 4x4 rigid transform; `field` names it in the InputError for a non-rigid one."""
        transform = np.asarray(transform, dtype=np.float64)
        if transform.shape != (4, 4) or not np.all(np.isfinite(transform)):
            raise InputError(f"{field}: needs a finite 4x4 matrix, got shape {transform.shape}")
        rotation = transform[:3, :3]
        rigid = (
            np.allclose(transform[3], [0.0, 0.0, 0.0, 1.0])
            and np.allclose(rotation @ rotation.T, np.eye(3), atol=_ROTATION_TOLERANCE)
            and np.linalg.det(rotation) > 0
        )
        if not rigid:
            raise InputError(f"{field}: not a rigid transform (rotation block not orthonormal or last row "
                             "not [0, 0, 0, 1])")
        return cls(translation=tuple(transform[:3, 3]), rotation=tuple(matrix_to_quaternion(rotation)))


class CameraCalibration(_Schema):
    """One camera: its pinhole `intrinsic` (3x3, pixels), its `sensor2ego` pose, and optionally the ego
    pose and time at which it exposed (nuScenes gives every camera image its own ego_pose)."""

    intrinsic: Matrix3
    sensor2ego: Pose
    ego2global: Pose | None = None
    timestamp: Timestamp | None = None

    @field_validator("intrinsic")
    @classmethod
    def _pinhole(cls, intrinsic: Matrix3) -> Matrix3:
        (fx, _, _), (_, fy, _), last_row = intrinsic
        if fx <= 0 or fy <= 0:
            raise ValueError(f"focal lengths must be positive, got fx={fx}, fy={fy}")
        if tuple(last_row) != (0.0, 0.0, 1.0):
            raise ValueError(f"the last row must be [0, 0, 1], got {list(last_row)}")
        return intrinsic


class FrameCalibration(_Schema):
    """All six cameras of one frame, and the optional fields temporal models need."""

    cameras: dict[str, CameraCalibration]
    ego2global: Pose | None = None
    timestamp: Timestamp | None = None
    # Visible ASCII: it also travels in the X-Sequence-Id header, which a load balancer may hash.
    sequence_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[!-~]+$")] | None = None

    @field_validator("cameras", mode="before")
    @classmethod
    def _every_camera_once(cls, cameras: Any) -> Any:
        # Before the per-camera validation, so a wrong camera set is reported with the cameras' own errors.
        if not isinstance(cameras, Mapping):
            return cameras  # the dict type check names the problem
        missing = [name for name in CAMERA_NAMES if name not in cameras]
        unknown = [str(name)[:64] for name in cameras if name not in CAMERA_NAMES]
        if missing or unknown:
            problems = [f"missing {', '.join(missing)}"] if missing else []
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""  # the message stays short
            problems += [f"unknown {', '.join(unknown[:5])}{more}"] if unknown else []
            raise ValueError(f"{'; '.join(problems)} (expected exactly {', '.join(CAMERA_NAMES)})")
        return {name: cameras[name] for name in CAMERA_NAMES}

    @model_validator(mode="after")
    def _every_camera_posed(self) -> "FrameCalibration":
        # Once one camera has its own ego pose, every camera needs one (its own or the frame's).
        if self.camera_poses_given():
            unposed = [name for name in CAMERA_NAMES if self._camera_ego2global(name) is None]
            if unposed:
                raise ValueError(f"cameras carry their own ego2global, but {', '.join(unposed)} has none "
                                 "and the frame has no ego2global to fall back on")
        return self

    def camera_poses_given(self) -> bool:
        """Whether any camera carries its own ego2global."""
        return any(camera.ego2global is not None for camera in self.cameras.values())

    def _camera_ego2global(self, name: str) -> Pose | None:
        return self.cameras[name].ego2global or self.ego2global

    def intrinsics_array(self) -> np.ndarray:
        """Intrinsics, float32 (6, 3, 3), in CAMERA_NAMES order."""
        return np.array([self.cameras[name].intrinsic for name in CAMERA_NAMES], dtype=np.float32)

    def sensor2ego_array(self) -> np.ndarray:
        """Camera -> ego transforms, float32 (6, 4, 4), in CAMERA_NAMES order.

        Where cameras carry their own ego poses, the ego is the key camera's (CAM_FRONT_LEFT), as the
        reference composes it (`geometry.sensor_to_key_ego`); a camera without its own pose has the
        frame's. Without per-camera poses these are the cameras' `sensor2ego` as given.
        """
        sensor2ego = self.mounts_array()
        if self.camera_poses_given():
            ego2global = self.camera_ego2global_array()
            sensor2ego = sensor_to_key_ego(sensor2ego, ego2global, ego2global[0])
        return sensor2ego.astype(np.float32)

    def mounts_array(self) -> np.ndarray:
        """The cameras' `sensor2ego` as given (camera -> its own ego), float64 (6, 4, 4)."""
        return np.stack([self.cameras[name].sensor2ego.matrix() for name in CAMERA_NAMES])

    def camera_ego2global_array(self) -> np.ndarray:
        """Each camera's ego pose (its own, else the frame's), float64 (6, 4, 4); InputError without any."""
        poses = [self._camera_ego2global(name) for name in CAMERA_NAMES]
        if any(pose is None for pose in poses):
            raise InputError("calibration: no ego2global, for the frame or its cameras")
        return np.stack([pose.matrix() for pose in poses])

    def ego2global_array(self) -> np.ndarray | None:
        """Ego -> global transform, float32 (4, 4), or None when the frame has no ego2global."""
        return None if self.ego2global is None else self.ego2global.matrix().astype(np.float32)

    def require_temporal(self) -> None:
        """Raise InputError naming the fields a temporal model needs and this frame lacks."""
        missing = [name for name in ("ego2global", "timestamp", "sequence_id") if getattr(self, name) is None]
        if missing:
            raise InputError(f"calibration: temporal models need {', '.join(missing)}, which are missing")

    @classmethod
    def from_arrays(
        cls,
        intrinsics: np.ndarray,
        sensor2ego: np.ndarray,
        ego2global: np.ndarray | None = None,
        timestamp: int | None = None,
        sequence_id: str | None = None,
    ) -> "FrameCalibration":
        """A validated calibration from intrinsics (6, 3, 3) and sensor2ego (6, 4, 4), CAMERA_NAMES order.

        Raises InputError naming the camera and field of a bad array.
        """
        intrinsics = np.asarray(intrinsics, dtype=np.float64)
        sensor2ego = np.asarray(sensor2ego, dtype=np.float64)
        count = len(CAMERA_NAMES)
        if intrinsics.shape != (count, 3, 3):
            raise InputError(f"intrinsics: expected shape ({count}, 3, 3), got {intrinsics.shape}")
        if sensor2ego.shape != (count, 4, 4):
            raise InputError(f"sensor2ego: expected shape ({count}, 4, 4), got {sensor2ego.shape}")
        cameras = {
            name: {
                "intrinsic": intrinsics[index].tolist(),
                "sensor2ego": Pose.from_matrix(sensor2ego[index], f"cameras.{name}.sensor2ego"),
            }
            for index, name in enumerate(CAMERA_NAMES)
        }
        data: dict[str, Any] = {"cameras": cameras, "sequence_id": sequence_id}
        if timestamp is not None:
            data["timestamp"] = int(timestamp)  # numpy integers too
        if ego2global is not None:
            data["ego2global"] = Pose.from_matrix(ego2global, "ego2global")
        return parse_calibration(data)


def parse_calibration(
    data: str | bytes | memoryview | Mapping[str, Any], field: str = "calibration"
) -> FrameCalibration:
    """Validate a calibration given as JSON text or a parsed mapping; raise InputError naming the bad field.

    JSON text is parsed within bounds (`occupancy.json_input`: nesting depth, integer length) and with
    duplicate keys rejected (a camera given twice is an error, not "last wins"); text that is not JSON
    raises MalformedInput.
    """
    if isinstance(data, str | bytes | bytearray | memoryview):
        data = load_json(data, field)
    try:
        return FrameCalibration.model_validate(data)
    except ValidationError as error:
        raise InputError(validation_message(error, field)) from error


def validation_message(error: ValidationError, prefix: str, limit: int = 10) -> str:
    """One line per pydantic error, each naming its field: `calibration.cameras.CAM_FRONT.intrinsic: ...`.

    At most `limit` of them, with field names cut to 64 characters: a body of a million unknown keys
    gets a short answer.
    """
    details = error.errors(include_url=False)
    lines = [f"{'.'.join([prefix, *(str(part)[:64] for part in detail['loc'])])}: {detail['msg']}"
             for detail in details[:limit]]
    if len(details) > limit:
        lines.append(f"and {len(details) - limit} more")
    return "; ".join(lines)
