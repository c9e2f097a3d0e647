"""Frames of a prepared data root (`occ prepare` / `occ synth`), ready to send to the gateway.

The index format is `occupancy.data_root`'s; calibrations follow nuScenes (see occupancy.calibration).
"""

from dataclasses import dataclass
from pathlib import Path

from occupancy.calibration import FrameCalibration, parse_calibration
from occupancy.cameras import CAMERA_NAMES
from occupancy.data_root import SampleEntry, index_path, load_index
from occupancy.errors import InputError


@dataclass(frozen=True)
class DatasetFrame:
    """One sample: its six image files (CAMERA_NAMES keys), calibration and ground truth, if any."""

    token: str
    images: dict[str, Path]
    calibration: FrameCalibration
    labels: Path | None  # gts/<scene>/<token>/labels.npz: semantics, mask_lidar, mask_camera


def dataset_frame(data_root: Path, split: str = "val", token: str | None = None,
                  index: int | None = None) -> DatasetFrame:
    """The sample with `token`, or the `index`-th one (default: the first) of a split."""
    samples = load_index(data_root, split)
    if token is not None:
        matches = [sample for sample in samples if sample.get("token") == token]
        if not matches:
            raise InputError(f"--sample {token}: no such sample in {index_path(data_root, split)}")
        return frame_of_sample(data_root, matches[0])
    position = 0 if index is None else index
    if not -len(samples) <= position < len(samples):
        raise InputError(f"--index {position}: the {split} split has {len(samples)} samples")
    return frame_of_sample(data_root, samples[position])


def scene_frames(data_root: Path, split: str, scene: str) -> list[DatasetFrame]:
    """The frames of one scene of a split, in time order (the index's): a temporal model's sequence."""
    samples = load_index(data_root, split)
    frames = [frame_of_sample(data_root, sample) for sample in samples if sample.get("scene_name") == scene]
    if not frames:
        scenes = sorted({str(sample.get("scene_name")) for sample in samples})
        listed = ", ".join(scenes[:5]) + (f" and {len(scenes) - 5} more" if len(scenes) > 5 else "")
        raise InputError(f"--scene {scene[:64]}: no such scene in {index_path(data_root, split)} ({listed})")
    return frames


def frame_of_sample(data_root: Path, sample: SampleEntry) -> DatasetFrame:
    """A DatasetFrame from one index entry; paths are resolved against `data_root`."""
    root = Path(data_root)
    token = str(sample.get("token", "?"))
    try:
        cameras = {name: sample["cameras"][name] for name in CAMERA_NAMES}
        calibration = {
            "cameras": {name: _camera_calibration(cam) for name, cam in cameras.items()},
            "ego2global": sample.get("ego2global"),
            "timestamp": sample.get("timestamp"),
            "sequence_id": sample.get("scene_name"),
        }
        images = {name: root / cam["image_path"] for name, cam in cameras.items()}
    except (KeyError, TypeError) as error:
        raise InputError(f"sample {token}: the index entry lacks {error}") from error
    labels = root / sample["occ_path"] if sample.get("occ_path") else None
    return DatasetFrame(token, images, parse_calibration(calibration, f"sample {token}"), labels)


def _camera_calibration(camera: dict) -> dict:
    """A camera's calibration as the API takes it: with its own ego pose and time where the index has them
    (nuScenes' cameras expose tens of milliseconds apart; the reference uses each camera's own pose)."""
    fields = ("intrinsic", "sensor2ego", "ego2global", "timestamp")
    return {key: camera[key] for key in fields if camera.get(key) is not None}


def camera_paths(items: list[str], flag: str) -> dict[str, Path]:
    """`CAM_FRONT=path.jpg` command-line items -> {camera: path}; InputError for a bad or unknown camera."""
    paths = {}
    for item in items:
        camera, separator, path = item.partition("=")
        if not separator or not path:
            raise InputError(f"{flag} {item!r}: expected CAMERA=PATH, e.g. CAM_FRONT=front.jpg")
        if camera not in CAMERA_NAMES:
            raise InputError(f"{flag} {item!r}: unknown camera {camera!r} "
                             f"(cameras: {', '.join(CAMERA_NAMES)})")
        if camera in paths:
            raise InputError(f"{flag}: {camera} given twice")
        paths[camera] = Path(path)
    return paths
