"""The calibration schema of the HTTP API (API.md), and the arrays the model takes from it.

Poses follow nuScenes: `sensor2ego` (calibrated_sensor) maps camera coordinates into the ego
frame, `ego2global` (ego_pose) maps ego coordinates into the global frame; rotations are
quaternions (w, x, y, z), stored normalised. Intrinsics are in pixels of the source image.
Validation errors carry the field path (`cameras.CAM_FRONT.intrinsic`) in pydantic's `loc`;
`parse_calibration` turns them into one `InputError` message.
"""

import json
import math
from collections import Counter
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StrictInt, ValidationError, field_validator

from occupancy.cameras import CAMERA_NAMES
from occupancy.errors import InputError
from occupancy.geometry import matrix_to_quaternion, pose_matrix

Vector3 = tuple[FiniteFloat, FiniteFloat, FiniteFloat]
Quaternion = tuple[FiniteFloat, FiniteFloat, FiniteFloat, FiniteFloat]
Matrix3 = tuple[Vector3, Vector3, Vector3]

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
    """One camera: its pinhole `intrinsic` (3x3, pixels) and its `sensor2ego` pose."""

    intrinsic: Matrix3
    sensor2ego: Pose

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
    timestamp: Annotated[StrictInt, Field(ge=0)] | None = None  # microseconds
    sequence_id: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("cameras", mode="before")
    @classmethod
    def _every_camera_once(cls, cameras: Any) -> Any:
        # Before the per-camera validation, so a wrong camera set is reported with the cameras' own errors.
        if not isinstance(cameras, Mapping):
            return cameras  # the dict type check names the problem
        missing = [name for name in CAMERA_NAMES if name not in cameras]
        unknown = [name for name in cameras if name not in CAMERA_NAMES]
        if missing or unknown:
            problems = [f"missing {', '.join(missing)}"] if missing else []
            problems += [f"unknown {', '.join(map(str, unknown))}"] if unknown else []
            raise ValueError(f"{'; '.join(problems)} (expected exactly {', '.join(CAMERA_NAMES)})")
        return {name: cameras[name] for name in CAMERA_NAMES}

    def intrinsics_array(self) -> np.ndarray:
        """Intrinsics, float32 (6, 3, 3), in CAMERA_NAMES order."""
        return np.array([self.cameras[name].intrinsic for name in CAMERA_NAMES], dtype=np.float32)

    def sensor2ego_array(self) -> np.ndarray:
        """Camera -> ego transforms, float32 (6, 4, 4), in CAMERA_NAMES order."""
        return np.stack([self.cameras[name].sensor2ego.matrix() for name in CAMERA_NAMES]).astype(np.float32)

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


def parse_calibration(data: str | bytes | Mapping[str, Any], field: str = "calibration") -> FrameCalibration:
    """Validate a calibration given as JSON text or a parsed mapping; raise InputError naming the bad field.

    JSON text is parsed with duplicate keys rejected (a camera given twice is an error, not "last wins").
    """
    if isinstance(data, str | bytes):
        data = _loads_unique(data, field)
    try:
        return FrameCalibration.model_validate(data)
    except ValidationError as error:
        raise InputError(validation_message(error, field)) from error


def validation_message(error: ValidationError, prefix: str) -> str:
    """One line per pydantic error, each naming its field: `calibration.cameras.CAM_FRONT.intrinsic: ...`."""
    lines = []
    for detail in error.errors(include_url=False):
        path = ".".join([prefix, *(str(part) for part in detail["loc"])])
        lines.append(f"{path}: {detail['msg']}")
    return "; ".join(lines)


def _loads_unique(text: str | bytes, field: str) -> Any:
    def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        duplicates = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        if duplicates:
            raise InputError(f"{field}: duplicate key(s) {', '.join(duplicates)}")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=reject_duplicates)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{field}: not valid JSON ({error})") from error
