"""Index a nuScenes + Occ3D data root for training and evaluation (the JSON of `occ prepare`).

Reads the tables through nuscenes-devkit, takes the split from `splits.json` when the root has
one (synthetic roots do) and from the devkit's official splits otherwise, and checks that every
file the index names exists. Paths in the index are relative to the data root.
"""

import json
from pathlib import Path

from tqdm import tqdm

from occupancy.cameras import CAMERA_NAMES
from occupancy.data_root import LABELS_2D_DIR, SPLITS, SampleEntry, labels_path, write_index
from occupancy.errors import InputError
from training.data.lidarseg import occ3d_lookup

TABLES = (
    "attribute",
    "calibrated_sensor",
    "category",
    "ego_pose",
    "instance",
    "log",
    "map",
    "sample",
    "sample_annotation",
    "sample_data",
    "scene",
    "sensor",
    "visibility",
)

def load_nuscenes(root: Path, version: str):
    """nuscenes-devkit's NuScenes for `root`, with missing or malformed tables reported as InputError."""
    from nuscenes.nuscenes import NuScenes

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data root {root} is not a directory")
    table_root = root / version
    if not table_root.is_dir():
        raise InputError(f"{table_root} does not exist: no nuScenes tables of version {version} in {root}")
    missing = [str(table_root / f"{t}.json") for t in TABLES if not (table_root / f"{t}.json").is_file()]
    if missing:
        raise InputError(f"missing nuScenes tables: {', '.join(missing)}")
    try:
        return NuScenes(version=version, dataroot=str(root), verbose=False)
    except json.JSONDecodeError:
        raise InputError(f"{_first_bad_table(table_root)} is not valid JSON") from None
    except (AssertionError, KeyError, TypeError, IndexError, ValueError, AttributeError) as error:
        raise InputError(
            f"{table_root}: the nuScenes tables are malformed ({type(error).__name__}: {error})"
        ) from None


def _first_bad_table(table_root: Path) -> Path:
    for name in TABLES:
        path = table_root / f"{name}.json"
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError:
            return path
    return table_root


def load_splits(root: Path, version: str) -> dict[str, list[str]]:
    """Scene names per split: `root/splits.json` if present, else the devkit's official splits."""
    path = Path(root) / "splits.json"
    if path.exists():
        try:
            splits = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(splits, dict) or not all(
            isinstance(splits.get(s), list) and all(isinstance(n, str) for n in splits[s]) for s in SPLITS
        ):
            raise InputError(f'{path} must be {{"train": [scene names], "val": [scene names]}}')
        return {s: splits[s] for s in SPLITS}
    from nuscenes.utils.splits import create_splits_scenes

    official = create_splits_scenes()
    if "mini" in version:
        return {"train": official["mini_train"], "val": official["mini_val"]}
    if version == "v1.0-trainval":
        return {"train": official["train"], "val": official["val"]}
    raise InputError(f"no train/val split for version {version}: give the root a splits.json")


def _pose(record: dict) -> dict:
    return {
        "translation": [float(v) for v in record["translation"]],
        "rotation": [float(v) for v in record["rotation"]],
    }


def sample_entry(nusc, sample: dict, scene: dict, frame_index: int, with_labels_2d: bool,
                 lidarseg_classes: list[int] | None = None) -> SampleEntry:
    """The index entry of one keyframe: cameras, poses, the LiDAR sweep (where the sample has one, with
    its lidarseg labels where the root has them: `lidarseg_classes` maps their categories to Occ3D) and
    label paths."""
    cameras = {}
    for name in CAMERA_NAMES:
        if name not in sample["data"]:
            raise InputError(f"sample {sample['token']} of {scene['name']} has no {name} image")
        data = nusc.get("sample_data", sample["data"][name])
        calibration = nusc.get("calibrated_sensor", data["calibrated_sensor_token"])
        intrinsic = calibration["camera_intrinsic"]
        if len(intrinsic) != 3 or any(len(row) != 3 for row in intrinsic):
            raise InputError(f"calibrated_sensor {calibration['token']} ({name}) has no 3x3 camera_intrinsic")
        cameras[name] = {
            "image_path": data["filename"],
            "timestamp": int(data["timestamp"]),
            "intrinsic": [[float(v) for v in row] for row in intrinsic],
            "sensor2ego": _pose(calibration),
            "ego2global": _pose(nusc.get("ego_pose", data["ego_pose_token"])),
        }
    # The frame's ego pose is the LiDAR's, as the reference converters take it.
    reference = sample["data"].get("LIDAR_TOP", sample["data"]["CAM_FRONT"])
    entry = {
        "token": sample["token"],
        "scene_name": scene["name"],
        "scene_token": scene["token"],
        "timestamp": int(sample["timestamp"]),
        "frame_index": frame_index,
        "prev": sample["prev"] or None,
        "next": sample["next"] or None,
        "ego2global": _pose(nusc.get("ego_pose", nusc.get("sample_data", reference)["ego_pose_token"])),
        "cameras": cameras,
        "occ_path": labels_path(scene["name"], sample["token"]),
    }
    if "LIDAR_TOP" in sample["data"]:
        # The sweep that supervises depth on real data (BEVDet's PointToMultiViewDepth), with the poses
        # that carry its points into each camera across the sensors' different timestamps.
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        entry["lidar"] = {
            "path": lidar["filename"],
            "sensor2ego": _pose(nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])),
            "ego2global": _pose(nusc.get("ego_pose", lidar["ego_pose_token"])),
        }
        if lidarseg_classes is not None:
            entry["lidar"]["lidarseg_path"] = nusc.get("lidarseg", lidar["token"])["filename"]
            entry["lidar"]["lidarseg_classes"] = lidarseg_classes
    if with_labels_2d:
        entry["labels_2d"] = {
            name: f"{LABELS_2D_DIR}/{name}/{Path(cam['image_path']).name.rsplit('.', 1)[0]}.npz"
            for name, cam in cameras.items()
        }
    return entry


def referenced_files(entry: dict) -> list[str]:
    """Every file an index entry names, relative to the data root."""
    files = [camera["image_path"] for camera in entry["cameras"].values()] + [entry["occ_path"]]
    files += [entry["lidar"]["path"]] if "lidar" in entry else []
    files += [entry["lidar"]["lidarseg_path"]] if "lidarseg_path" in entry.get("lidar", {}) else []
    return files + list(entry.get("labels_2d", {}).values())


def _scene_entries(nusc, scene: dict, with_labels_2d: bool, lidarseg_classes: list[int] | None) -> list[dict]:
    """Index entries of a scene's keyframes, following the samples' next links."""
    entries, token = [], scene["first_sample_token"]
    while token:
        sample = nusc.get("sample", token)
        entries.append(sample_entry(nusc, sample, scene, len(entries), with_labels_2d, lidarseg_classes))
        token = sample["next"]
    return entries


def build_index(root: Path, version: str = "v1.0-trainval", progress: bool = True) -> dict[str, list[dict]]:
    """Index entries per split, ordered by scene name then time; raises InputError on missing files."""
    root = Path(root)
    nusc = load_nuscenes(root, version)
    splits = load_splits(root, version)
    split_of = {name: split for split in SPLITS for name in splits[split]}
    with_labels_2d = (root / LABELS_2D_DIR).is_dir()
    # nuScenes-lidarseg (lidarseg.json beside the tables): the devkit loads it and its category indices.
    lidarseg_classes = occ3d_lookup(nusc.lidarseg_idx2name_mapping) if hasattr(nusc, "lidarseg") else None
    index: dict[str, list[dict]] = {split: [] for split in SPLITS}
    missing: list[str] = []
    for scene in tqdm(
        sorted(nusc.scene, key=lambda s: s["name"]), desc="occ prepare", unit="scene", disable=not progress
    ):
        split = split_of.get(scene["name"])
        if split is None:
            continue
        try:
            entries = _scene_entries(nusc, scene, with_labels_2d, lidarseg_classes)
        except KeyError as error:
            raise InputError(
                f"{root / version}: scene {scene['name']} links to a record missing from the tables ({error})"
            ) from None
        for entry in entries:
            missing += [f for f in referenced_files(entry) if not (root / f).is_file()]
        index[split] += entries
    if missing:
        raise InputError(
            f"{len(missing)} file(s) the index needs are missing under {root}: "
            + ", ".join(missing[:5])
            + (", ..." if len(missing) > 5 else "")
        )
    if not any(index.values()):
        raise InputError(f"{root} holds none of the scenes of the train/val splits")
    return index


def write_indexes(root: Path, version: str, index: dict[str, list[SampleEntry]]) -> list[Path]:
    """Write `occ_index_<split>.json` for each split; returns the paths."""
    return [write_index(root, version, split, samples) for split, samples in index.items()]
