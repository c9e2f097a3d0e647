"""Generate a synthetic nuScenes + Occ3D dataset: images, LiDAR, Occ3D labels, 2D labels, tables.

Layout under the output root, as nuScenes + Occ3D have it:
  v1.0-trainval/*.json                      the nuScenes tables
  samples/CAM_*/<stem>.jpg                  six 1600 x 900 images per keyframe
  samples/LIDAR_TOP/<stem>.pcd.bin          simulated LiDAR, float32 (N, 5): x, y, z, intensity, ring
  samples_2d/CAM_*/<stem>.npz               2D labels for rendering losses: uv (K, 2) pixels,
                                            depth (K,) optical-axis depth in m, semantics (K,) uint8,
                                            sky_uv (S, 2) pixels that see no surface
  gts/<scene>/<sample token>/labels.npz     Occ3D: semantics, mask_lidar, mask_camera (200, 200, 16)
  maps/<token>.png                          a blank map mask (the devkit requires one)
  splits.json                               {"train": [...], "val": [...]}: the last scenes are val
"""

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from occupancy.cameras import SOURCE_IMAGE_SIZE
from occupancy.classes import CLASS_NAMES, FREE_CLASS, NUM_CLASSES
from occupancy.data_root import LABELS_2D_DIR, labels_path

from .files import write_bytes, write_json, write_npz
from .raycast import cast_rays
from .render import (
    MAX_GROUND_DEPTH_M,
    CameraCast,
    Textures,
    cast_camera,
    encode_jpeg,
    lowres_pixels,
    shade_image,
)
from .rig import Sensor, camera_rig, lidar_directions, lidar_sensor
from .tables import NuScenesTables, yaw_quaternion
from .voxelize import RENDER_GRID, ego_transform, label_block, voxelize
from .world import FRAME_INTERVAL_S, GROUND_TOP_Z, Scene, make_scene

BASE_TIMESTAMP_US = 1533151603547590
ANNOTATION_RANGE_M = 50.0  # objects within this distance of the ego get sample_annotation records
# LiDAR return intensity per class (roughly: retro-reflective signs bright, vegetation dim).
_INTENSITY = np.linspace(5.0, 60.0, NUM_CLASSES).astype(np.float32)


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; `image_size` and `ray_scale` shrink the work for tests (defaults: nuScenes')."""

    scenes: int
    frames: int  # keyframes per scene, 0.5 s apart
    seed: int = 0
    val_scenes: int = 1  # the last scenes form the val split
    version: str = "v1.0-trainval"
    image_size: tuple[int, int] = SOURCE_IMAGE_SIZE  # (height, width)
    ray_scale: int = 4  # one camera ray per ray_scale x ray_scale pixel block
    label_stride: int = 2  # 2D labels at every label_stride-th ray in each direction
    jpeg_quality: int = 90


@dataclass
class Frame:
    """Everything one keyframe produces, before it is written."""

    semantics: np.ndarray  # uint8 (200, 200, 16), ego frame, free = 17
    mask_lidar: np.ndarray  # uint8 (200, 200, 16)
    mask_camera: np.ndarray  # uint8 (200, 200, 16)
    images: dict[str, bytes]  # camera name -> JPEG
    labels_2d: dict[str, dict[str, np.ndarray]]  # camera name -> uv, depth, semantics
    lidar_points: np.ndarray  # float32 (N, 5) in the LiDAR frame
    points_ego: np.ndarray  # float64 (N, 3) the same points in the ego frame


@dataclass
class GenerationReport:
    frames: int
    seconds: float
    class_voxels: np.ndarray = field(default_factory=lambda: np.zeros(NUM_CLASSES, np.int64))

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def render_frame(
    scene: Scene,
    time_s: float,
    ego2global: np.ndarray,
    cameras: list[Sensor],
    lidar: Sensor,
    textures: Textures,
    rng: np.random.Generator,
    config: SynthConfig,
) -> Frame:
    """Voxelise the scene at `time_s`, render the six cameras, cast the LiDAR, and cut out the labels."""
    classes, tint = voxelize(scene, time_s, ego2global)
    visible_camera = np.zeros(RENDER_GRID.shape, bool)
    images, labels_2d = {}, {}
    for camera in cameras:
        cast = cast_camera(
            classes, tint, RENDER_GRID, camera, scene.road, ego2global, config.ray_scale, visible_camera
        )
        images[camera.name] = encode_jpeg(
            shade_image(cast, camera, scene.road, ego2global, textures, rng), config.jpeg_quality
        )
        labels_2d[camera.name] = sparse_labels(cast, camera.image_size, config.label_stride)

    lidar_points, points_ego, visible_lidar = cast_lidar(classes, lidar)
    block = label_block()
    return Frame(
        semantics=classes[block].copy(),
        mask_lidar=visible_lidar[block].astype(np.uint8),
        mask_camera=visible_camera[block].astype(np.uint8),
        images=images,
        labels_2d=labels_2d,
        lidar_points=lidar_points,
        points_ego=points_ego,
    )


def cast_lidar(classes: np.ndarray, lidar: Sensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One LiDAR sweep through the ego-frame class grid: points (N, 5) float32 in the LiDAR frame
    (x, y, z, intensity, ring), the same points (N, 3) in the ego frame, and the voxels it observed."""
    visible = np.zeros(RENDER_GRID.shape, bool)
    directions, ring = lidar_directions()
    origin = np.asarray(lidar.translation)
    hits = cast_rays(classes != FREE_CLASS, RENDER_GRID, origin, directions @ lidar.rotation.T, visible)
    hit = hits.hit
    points = directions[hit] * hits.t[hit, None]  # unit directions: t is the range in metres
    intensity = _INTENSITY[classes[tuple(hits.voxel[hit].T)]]
    sweep = np.c_[points, intensity, ring[hit]].astype(np.float32)
    return sweep, points @ lidar.rotation.T + origin, visible


def sparse_labels(cast: CameraCast, image_size: tuple[int, int], stride: int) -> dict[str, np.ndarray]:
    """Depth and class at every `stride`-th cast ray that met a surface, and the pixels of the others
    (`sky_uv`: no surface nearer than MAX_GROUND_DEPTH_M), which a 2D segmentation labels as sky."""
    u, v = lowres_pixels(image_size, cast.scale)
    pick = (slice(None, None, stride), slice(None, None, stride))
    depth, semantics = cast.t[pick], cast.semantics[pick]
    valid = np.isfinite(depth) & (semantics != FREE_CLASS) & (depth < MAX_GROUND_DEPTH_M)
    uv = np.stack([u[pick], v[pick]], axis=-1).astype(np.float32)
    return {
        "uv": uv[valid],
        "depth": depth[valid].astype(np.float32),
        "semantics": semantics[valid].astype(np.uint8),
        "sky_uv": uv[~valid],
    }


def generate(out: Path, config: SynthConfig, progress: bool = True) -> GenerationReport:
    """Write the whole dataset under `out`; returns timing and class statistics."""
    if config.scenes < 1 or config.frames < 1 or not 0 <= config.val_scenes <= config.scenes:
        raise ValueError(f"need scenes >= 1, frames >= 1, 0 <= val_scenes <= scenes: got {config}")
    out = Path(out)
    tables = NuScenesTables(config.seed)
    textures = Textures(np.random.default_rng([config.seed, 1]))
    report = GenerationReport(0, 0.0)
    start = time.perf_counter()
    names = [f"scene-{i + 1:04d}" for i in range(config.scenes)]
    with tqdm(
        total=config.scenes * config.frames, desc="occ synth", unit="frame", disable=not progress
    ) as bar:
        for index, name in enumerate(names):
            _generate_scene(out, config, index, name, tables, textures, report, bar)
    tables.write(out, config.version)
    split = config.scenes - config.val_scenes
    write_json(out / "splits.json", {"train": names[:split], "val": names[split:]})
    report.seconds = time.perf_counter() - start
    return report


def _generate_scene(
    out: Path,
    config: SynthConfig,
    index: int,
    name: str,
    tables: NuScenesTables,
    textures: Textures,
    report: GenerationReport,
    bar: tqdm,
) -> None:
    rng = np.random.default_rng([config.seed, index])
    scene = make_scene(rng, config.frames)
    sensors = [*camera_rig(config.image_size, jitter=rng), lidar_sensor()]
    calibrated = {s.name: tables.add_calibrated_sensor(name, s) for s in sensors}
    sample_tokens = [tables.token("sample", name, f) for f in range(config.frames)]
    timestamps = [
        BASE_TIMESTAMP_US + index * 100_000_000 + round(f * FRAME_INTERVAL_S * 1e6)
        for f in range(config.frames)
    ]
    tracks: dict[int, list[dict]] = {}
    for f in range(config.frames):
        time_s = f * FRAME_INTERVAL_S
        ego2global = ego_transform(*scene.ego_pose(time_s))
        frame_rng = np.random.default_rng([config.seed, index, f, 2])
        frame = render_frame(
            scene, time_s, ego2global, sensors[:-1], sensors[-1], textures, frame_rng, config
        )
        stems = {s.name: f"synth-{config.seed}-{name}__{s.name}__{timestamps[f]}" for s in sensors}
        _write_frame(out, labels_path(name, sample_tokens[f]), stems, frame)
        for sensor in sensors:
            suffix = ".pcd.bin" if sensor.intrinsic is None else ".jpg"
            neighbour = [
                tables.token("sample_data", name, g, sensor.name) if 0 <= g < config.frames else ""
                for g in (f - 1, f + 1)
            ]
            tables.add_sample_data(
                tables.token("sample_data", name, f, sensor.name),
                sample_tokens[f],
                calibrated[sensor.name],
                timestamps[f],
                ego2global,
                f"samples/{sensor.name}/{stems[sensor.name]}{suffix}",
                sensor.image_size,
                *neighbour,
            )
        _annotate(
            tables,
            scene,
            time_s,
            frame.points_ego @ ego2global[:3, :3].T + ego2global[:3, 3],
            sample_tokens[f],
            ego2global,
            tracks,
        )
        report.class_voxels += np.bincount(frame.semantics.ravel(), minlength=NUM_CLASSES)
        report.frames += 1
        bar.update(1)
    for k, annotations in tracks.items():
        category = CLASS_NAMES[scene.objects.class_id[k]]
        tables.add_instance(tables.token("instance", name, k), category, annotations)
    tables.add_scene(name, sample_tokens, timestamps)


def _write_frame(out: Path, occ_path: str, stems: dict[str, str], frame: Frame) -> None:
    for camera, jpeg in frame.images.items():
        write_bytes(out / "samples" / camera / f"{stems[camera]}.jpg", jpeg)
        write_npz(out / LABELS_2D_DIR / camera / f"{stems[camera]}.npz", **frame.labels_2d[camera])
    write_bytes(out / "samples" / "LIDAR_TOP" / f"{stems['LIDAR_TOP']}.pcd.bin", frame.lidar_points.tobytes())
    write_npz(
        out / occ_path, semantics=frame.semantics, mask_lidar=frame.mask_lidar, mask_camera=frame.mask_camera
    )


def _annotate(
    tables: NuScenesTables,
    scene: Scene,
    time_s: float,
    points_global: np.ndarray,
    sample_token: str,
    ego2global: np.ndarray,
    tracks: dict[int, list[dict]],
) -> None:
    """sample_annotation records (global boxes) of the moving-object classes near the ego."""
    objects = scene.objects
    centres, yaws = objects.boxes_at(scene.road, time_s)
    centres[:, 2] += GROUND_TOP_Z  # global z: the ego pose is at z = 0, the ground top at GROUND_TOP_Z
    near = objects.annotated & (
        np.linalg.norm(centres[:, :2] - ego2global[:2, 3], axis=1) < ANNOTATION_RANGE_M
    )
    for k in np.flatnonzero(near):
        length, width, height = objects.size[k]
        offset = points_global - centres[k]
        c, s = np.cos(yaws[k]), np.sin(yaws[k])
        inside = (
            (np.abs(c * offset[:, 0] + s * offset[:, 1]) <= length / 2)
            & (np.abs(-s * offset[:, 0] + c * offset[:, 1]) <= width / 2)
            & (np.abs(offset[:, 2]) <= height / 2)
        )
        category = CLASS_NAMES[objects.class_id[k]]
        moving = abs(objects.speed[k]) > 0.1
        if category == "pedestrian":
            attribute = "pedestrian.moving" if moving else "pedestrian.standing"
        elif category in ("bicycle", "motorcycle"):
            attribute = "cycle.with_rider"
        else:
            attribute = "vehicle.moving" if moving else "vehicle.parked"
        tracks.setdefault(int(k), []).append(
            {
                "token": tables.token("sample_annotation", sample_token, int(k)),
                "sample_token": sample_token,
                "visibility_token": "4",
                "attribute_tokens": [tables.attribute_token(attribute)],
                "translation": [float(v) for v in centres[k]],
                "size": [float(width), float(length), float(height)],
                "rotation": yaw_quaternion(float(yaws[k])),
                "num_lidar_pts": int(inside.sum()),
                "num_radar_pts": 0,
            }
        )
