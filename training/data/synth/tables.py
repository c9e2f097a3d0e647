"""The nuScenes tables (v1.0 schema) of a synthetic dataset, as nuscenes-devkit reads them.

Tokens are 32 hex digits like nuScenes', derived from the seed and the record's place, so the
same seed gives the same tokens. Empty links are "" as in nuScenes.
"""

import hashlib
from pathlib import Path

import cv2
import numpy as np

from occupancy.geometry import matrix_to_quaternion

from ..prepare import TABLES
from .files import write_bytes, write_json
from .rig import Sensor, rotation_z

# Occ3D class name -> nuScenes category of the annotated objects.
CATEGORIES = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "bus": "vehicle.bus.rigid",
    "trailer": "vehicle.trailer",
    "construction_vehicle": "vehicle.construction",
    "motorcycle": "vehicle.motorcycle",
    "bicycle": "vehicle.bicycle",
    "pedestrian": "human.pedestrian.adult",
}
ATTRIBUTES = (
    "vehicle.moving",
    "vehicle.parked",
    "cycle.with_rider",
    "pedestrian.moving",
    "pedestrian.standing",
)


def make_token(seed: int, *parts: object) -> str:
    """Deterministic 32-hex-digit token of a record."""
    return hashlib.md5("/".join(str(p) for p in (seed, *parts)).encode()).hexdigest()


def yaw_quaternion(yaw: float) -> list[float]:
    return [float(v) for v in matrix_to_quaternion(rotation_z(yaw))]


class NuScenesTables:
    """Accumulates the records of all scenes; `write` saves them under `root/version/`."""

    def __init__(self, seed: int):
        self.seed = seed
        self.records: dict[str, list[dict]] = {name: [] for name in TABLES}
        self.records["attribute"] = [
            {"token": make_token(seed, "attribute", n), "name": n, "description": n} for n in ATTRIBUTES
        ]
        self.records["category"] = [
            {"token": make_token(seed, "category", n), "name": n, "description": n}
            for n in CATEGORIES.values()
        ]
        self.records["visibility"] = [
            {"token": str(i + 1), "level": level, "description": f"visibility {level}"}
            for i, level in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"))
        ]

    def token(self, *parts: object) -> str:
        return make_token(self.seed, *parts)

    def add_sensor(self, sensor: Sensor) -> str:
        token = self.token("sensor", sensor.name)
        if all(r["token"] != token for r in self.records["sensor"]):
            modality = "lidar" if sensor.intrinsic is None else "camera"
            self.records["sensor"].append({"token": token, "channel": sensor.name, "modality": modality})
        return token

    def add_calibrated_sensor(self, scene_name: str, sensor: Sensor) -> str:
        token = self.token("calibrated_sensor", scene_name, sensor.name)
        self.records["calibrated_sensor"].append(
            {
                "token": token,
                "sensor_token": self.add_sensor(sensor),
                "translation": [float(v) for v in sensor.translation],
                "rotation": sensor.quaternion,
                "camera_intrinsic": [] if sensor.intrinsic is None else sensor.intrinsic.tolist(),
            }
        )
        return token

    def add_scene(self, scene_name: str, sample_tokens: list[str], timestamps: list[int]) -> str:
        """The log, scene and sample records of one scene (samples chained by prev/next)."""
        log_token = self.token("log", scene_name)
        self.records["log"].append(
            {
                "token": log_token,
                "logfile": f"synth-{self.seed}-{scene_name}",
                "vehicle": "synth",
                "date_captured": "2018-08-01",
                "location": "synthetic-city",
            }
        )
        scene_token = self.token("scene", scene_name)
        self.records["scene"].append(
            {
                "token": scene_token,
                "log_token": log_token,
                "nbr_samples": len(sample_tokens),
                "first_sample_token": sample_tokens[0],
                "last_sample_token": sample_tokens[-1],
                "name": scene_name,
                "description": "synthetic street",
            }
        )
        for i, (token, timestamp) in enumerate(zip(sample_tokens, timestamps, strict=True)):
            self.records["sample"].append(
                {
                    "token": token,
                    "timestamp": timestamp,
                    "scene_token": scene_token,
                    "prev": sample_tokens[i - 1] if i > 0 else "",
                    "next": sample_tokens[i + 1] if i + 1 < len(sample_tokens) else "",
                }
            )
        return scene_token

    def add_sample_data(
        self,
        token: str,
        sample_token: str,
        calibrated_sensor_token: str,
        timestamp: int,
        ego2global: np.ndarray,
        filename: str,
        image_size: tuple[int, int] | None,
        prev: str,
        next_: str,
    ) -> None:
        """One sensor reading and its own ego pose record, as nuScenes stores them."""
        ego_pose_token = self.token("ego_pose", token)
        self.records["ego_pose"].append(
            {
                "token": ego_pose_token,
                "timestamp": timestamp,
                "rotation": [float(v) for v in matrix_to_quaternion(ego2global[:3, :3])],
                "translation": [float(v) for v in ego2global[:3, 3]],
            }
        )
        height, width = image_size or (0, 0)
        self.records["sample_data"].append(
            {
                "token": token,
                "sample_token": sample_token,
                "ego_pose_token": ego_pose_token,
                "calibrated_sensor_token": calibrated_sensor_token,
                "timestamp": timestamp,
                "fileformat": "pcd" if image_size is None else "jpg",
                "is_key_frame": True,
                "height": height,
                "width": width,
                "filename": filename,
                "prev": prev,
                "next": next_,
            }
        )

    def add_instance(self, token: str, category: str, annotations: list[dict]) -> None:
        """An object track: its sample_annotation records (in time order) chained by prev/next."""
        for i, record in enumerate(annotations):
            record["prev"] = annotations[i - 1]["token"] if i > 0 else ""
            record["next"] = annotations[i + 1]["token"] if i + 1 < len(annotations) else ""
            record["instance_token"] = token
        self.records["sample_annotation"].extend(annotations)
        self.records["instance"].append(
            {
                "token": token,
                "category_token": self.token("category", CATEGORIES[category]),
                "nbr_annotations": len(annotations),
                "first_annotation_token": annotations[0]["token"],
                "last_annotation_token": annotations[-1]["token"],
            }
        )

    def attribute_token(self, name: str) -> str:
        return self.token("attribute", name)

    def write(self, root: Path, version: str) -> None:
        """All tables as `root/version/<table>.json`, plus the map mask file they name."""
        map_token = self.token("map", "synthetic-city")
        filename = f"maps/{map_token}.png"
        self.records["map"] = [
            {
                "token": map_token,
                "category": "semantic_prior",
                "filename": filename,
                "log_tokens": [r["token"] for r in self.records["log"]],
            }
        ]
        # The devkit only checks that the map mask exists: a blank one will do.
        write_bytes(root / filename, cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
        for name in TABLES:
            write_json(root / version / f"{name}.json", self.records[name])
