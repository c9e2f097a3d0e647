"""The prepared data root: where `occ prepare` writes its index, what an index entry holds, and the
Occ3D ground truth files, read by training, evaluation and the clients alike.

A data root holds nuScenes' `samples/` and tables, Occ3D's `gts/<scene>/<token>/labels.npz` and, once
`occ prepare` ran, `occ_index_<split>.json`: {"format": 1, "version", "split", "samples": [entry, ...]},
entries ordered by scene name then time. Paths inside an entry are relative to the root.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict

import numpy as np

from occupancy.errors import InputError

INDEX_FORMAT = 1
SPLITS = ("train", "val")
LABELS_FILE = "labels.npz"  # Occ3D: semantics, mask_lidar, mask_camera, each uint8 [200, 200, 16]
GTS_DIR = "gts"
LABELS_2D_DIR = "samples_2d"  # per-camera 2D labels of synthetic roots, beside samples/


class PoseEntry(TypedDict):
    translation: list[float]  # metres
    rotation: list[float]  # quaternion w, x, y, z


class CameraEntry(TypedDict):
    image_path: str
    timestamp: int  # microseconds
    intrinsic: list[list[float]]  # 3 x 3, source-image pixels
    sensor2ego: PoseEntry  # nuScenes calibrated_sensor
    ego2global: PoseEntry  # nuScenes ego_pose at the image's own timestamp


class LidarEntry(TypedDict):
    path: str  # a `.pcd.bin` sweep: float32 rows x, y, z, intensity, ring
    sensor2ego: PoseEntry
    ego2global: PoseEntry
    lidarseg_path: NotRequired[str]  # nuScenes-lidarseg labels of the sweep: one uint8 category per point
    lidarseg_classes: NotRequired[list[int]]  # Occ3D class per lidarseg category index, 255 = dropped


class SampleEntry(TypedDict, total=False):
    """One keyframe of the index. `lidar` where the sample has a LIDAR_TOP sweep, `labels_2d` (camera
    name -> .npz with uv, depth, semantics) on synthetic roots."""

    token: str
    scene_name: str
    scene_token: str
    timestamp: int  # microseconds
    frame_index: int  # position within its scene, 0 first
    prev: str | None  # the scene's previous keyframe token, None at the scene start
    next: str | None
    ego2global: PoseEntry  # the LiDAR's ego pose, as the reference converters take the frame's
    cameras: dict[str, CameraEntry]
    occ_path: str
    lidar: LidarEntry
    labels_2d: dict[str, str]


def index_path(data_root: str | Path, split: str) -> Path:
    """Where `occ prepare` writes a split's index: DATA_ROOT/occ_index_<split>.json."""
    return Path(data_root) / f"occ_index_{split}.json"


def labels_path(scene_name: str, token: str) -> str:
    """A sample's Occ3D ground truth relative to the data root (or, without `gts/`, to a gt root)."""
    return f"{GTS_DIR}/{scene_name}/{token}/{LABELS_FILE}"


def load_index(data_root: str | Path, split: str) -> list[SampleEntry]:
    """The samples of a split's index; InputError naming the file when it is missing, malformed or empty."""
    if split not in SPLITS:
        raise InputError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    path = index_path(data_root, split)
    if not path.is_file():
        raise InputError(f"{path}: no dataset index; run `occ prepare --data-root {data_root}` first")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable index JSON ({error})") from error
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or "samples" not in index:
        raise InputError(f"{path}: expected an index of format {INDEX_FORMAT} with `samples`; "
                         f"rerun `occ prepare --data-root {data_root}`")
    samples = index["samples"]
    if not isinstance(samples, list) or not samples:
        raise InputError(f"{path}: the index lists no samples")
    return samples


def write_index(data_root: str | Path, version: str, split: str, samples: list[SampleEntry]) -> Path:
    """Write one split's index; returns its path."""
    path = index_path(data_root, split)
    path.write_text(json.dumps({"format": INDEX_FORMAT, "version": version, "split": split,
                                "samples": samples}))
    return path


@dataclass(frozen=True)
class Occ3DLabels:
    """One frame's Occ3D ground truth, each uint8 X x Y x Z in the ego frame."""

    semantics: np.ndarray  # class indices, free = 17
    mask_camera: np.ndarray  # 1 where a camera sees the voxel: the evaluation's mask
    mask_lidar: np.ndarray | None  # 1 where the LiDAR sees it; None where the file has none


def read_labels(path: str | Path) -> Occ3DLabels:
    """An Occ3D labels.npz; InputError naming the file when it lacks semantics or mask_camera."""
    try:
        with np.load(path) as labels:
            semantics, mask_camera = labels["semantics"], labels["mask_camera"]
            mask_lidar = labels.get("mask_lidar")
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"{path}: no semantics and mask_camera in this {LABELS_FILE} ({error})") from error
    if semantics.ndim != 3 or mask_camera.shape != semantics.shape:
        raise InputError(f"{path}: semantics {list(semantics.shape)} and mask_camera "
                         f"{list(mask_camera.shape)} are not one X x Y x Z grid")
    as_uint8 = (semantics.astype(np.uint8), mask_camera.astype(np.uint8))
    return Occ3DLabels(*as_uint8, None if mask_lidar is None else mask_lidar.astype(np.uint8))

