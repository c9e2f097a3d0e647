"""Camera rays with 2D labels, for rendering supervision: RenderOcc's `get_rays` and `generate_rays`
(pmj110119/RenderOcc mmdet3d/datasets/nuscenes_dataset_occ.py, datasets/ray.py) for one sample.

Labels per camera and frame, in source-image pixels: the synthetic world's `labels_2d` (uv, depth,
class per label), or on a real root the keyframe LiDAR sweep projected into the camera (BEVDet's
lidar2img, as the depth supervision does) with its nuScenes-lidarseg classes (depth only where the
root has no lidarseg). Frames: the key frame and its scene's neighbouring keyframes at the sampling's
offsets (-3 .. +3: RenderOcc's "7 frames"), each camera carried into the key frame's ego frame
through global: key_ego <- global <- that camera's ego at its own time <- camera. Rays start at the
camera centre through the label's exact pixel, from the raw full-resolution image and its raw
intrinsics, so the image augmentation never touches them (the BEV augmentation reaches them through
`bda` in the rendering head).

The budget (38,400 rays) is drawn without replacement with the reference's weights: a class weight
exp(0.005 (n_max / n_c - 1)) from nuScenes-lidarseg point counts, times 0.3 for auxiliary frames, times
0 for moving classes in auxiliary frames (they moved between the frames). A smaller recipe renders a
uniform subset of that budget (`rendered_rays`), which keeps its class composition.

Where we differ: rays beyond 52 m (the head's cut-off) are dropped before the draw rather than after it,
so the budget holds usable rays; a missing neighbour frame is left out rather than replaced by the key
frame; the moving classes are those that move (the reference's list has barrier and lacks bicycle and
motorcycle); one key ego for all cameras, the frame the grid is predicted in (the reference takes each
camera's own).
"""

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from occupancy.cameras import CAMERA_NAMES
from occupancy.classes import CLASS_NAMES, IGNORE_INDEX
from occupancy.data_root import SampleEntry
from occupancy.errors import InputError
from occupancy.geometry import camera_to_pixels
from training.batch import RayBatch
from training.data.lidarseg import read_lidarseg

# nuScenes-lidarseg points per Occ3D class 0..16 (the reference's `nusc_class_nums`).
LIDARSEG_CLASS_POINTS: tuple[int, ...] = (
    2854504, 7291443, 141614, 4239939, 32248552, 1583610, 364372, 2346381, 582961, 4829021, 14073691,
    191019309, 6249651, 55095657, 58484771, 193834360, 131378779,
)
CLASS_BALANCE_RATE = 0.005  # weight = exp(rate (n_max / n_c - 1)): 1 for manmade ... 933 for bicycle
MOVING_CLASSES: tuple[int, ...] = tuple(CLASS_NAMES.index(name) for name in (
    "others", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian", "trailer",
    "truck"))


@dataclass(frozen=True)
class RaySampling:
    """Which labelled pixels supervise rendering (the reference's dataset options, renderocc-7frame*.py)."""

    max_rays: int = 38400  # per sample, drawn from all frames' labels
    # Rays rendered per sample: a uniform subset of the drawn budget (None: all of it). The class balance
    # is a property of the budget: a draw without replacement takes the rare classes' pixels first and
    # then runs out of them, so 1,024 rays drawn directly from the synthetic world's 300,000 labelled
    # pixels were 86 % bicycle (weight 933), where 38,400 are 6 % bicycle and 17 % road. A uniform
    # subset keeps the reference budget's composition at a fraction of the rendering cost.
    rendered_rays: int | None = None
    aux_frames: tuple[int, ...] = (-3, -2, -1, 1, 2, 3)  # keyframe offsets within the scene
    aux_weight: float = 0.3  # draw weight of an auxiliary frame's ray relative to the key frame's
    moving_weight: float = 0.0  # ... and of a moving class's ray in an auxiliary frame
    max_depth_m: float = 52.0  # optical-axis depth beyond which a label is not used (the head's cut-off)
    # Also draw the pixels a 2D segmentation labels sky (the synthetic world's `sky_uv`), as rays with
    # infinite depth that the rendering head's `loss_render_sky` keeps transparent. Not the reference's:
    # its LiDAR labels have no points in the sky, so nothing supervises the space above the surfaces, and
    # its author suggests adding sky labels (pmj110119/RenderOcc issue 14). Weight: an unlabelled ray's.
    sky: bool = False

    def describe(self) -> str:
        drawn = f"{self.max_rays} rays drawn per sample" + (" (sky pixels among them)" if self.sky else "")
        return drawn if self.rendered_rays is None else f"{drawn}, {self.rendered_rays} of them rendered"


@dataclass
class CameraLabels:
    """One camera's labels in one frame, at source-image pixels."""

    uv: np.ndarray  # P x 2 continuous pixel coordinates (u right, v down)
    depth: np.ndarray  # P optical-axis depth in metres
    semantics: np.ndarray  # P uint8 Occ3D class, IGNORE_INDEX where the root has none
    sky_uv: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # S x 2 sky pixels


@dataclass
class Rays:
    """One sample's rays, R of them, in the un-augmented key ego frame (metres)."""

    origins: Tensor  # R x 3 float32 camera centres
    directions: Tensor  # R x 3 float32 unit directions
    depth: Tensor  # R float32 range along the ray to the labelled point; inf for a sky ray
    semantics: Tensor  # R int64 class, IGNORE_INDEX where unlabelled


def class_balance_weights() -> np.ndarray:
    """Draw weight per class 0..16, then 1.0 for unlabelled rays (index IGNORE_INDEX clipped to 17)."""
    points = np.asarray(LIDARSEG_CLASS_POINTS, dtype=np.float64)
    return np.append(np.exp(CLASS_BALANCE_RATE * (points.max() / points - 1)), 1.0)


def draw_weights(semantics: np.ndarray, auxiliary: bool, sampling: RaySampling) -> np.ndarray:
    """Each ray's weight in the budget's draw."""
    classes = np.minimum(semantics.astype(np.int64), len(LIDARSEG_CLASS_POINTS))
    weights = class_balance_weights()[classes]
    if auxiliary:
        weights = weights * np.where(np.isin(semantics, MOVING_CLASSES), sampling.moving_weight,
                                     sampling.aux_weight)
    return weights


def draw_without_replacement(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `count` items drawn without replacement with probabilities proportional to `weights`
    (torch's WeightedRandomSampler(replacement=False), by Efraimidis and Spirakis' keys u^(1/w)); all
    items of positive weight when there are no more than `count`."""
    candidates = np.flatnonzero(weights > 0)
    if len(candidates) <= count:
        return candidates
    keys = np.log(rng.uniform(size=len(candidates))) / weights[candidates]
    return np.sort(candidates[np.argpartition(-keys, count)[:count]])


def draw_rays(weights: np.ndarray, sampling: RaySampling, rng: np.random.Generator) -> np.ndarray:
    """Indices of the rays rendered: the budget drawn by `weights`, then a uniform subset of it where the
    sampling renders fewer."""
    chosen = draw_without_replacement(weights, sampling.max_rays, rng)
    if sampling.rendered_rays is not None and len(chosen) > sampling.rendered_rays:
        chosen = np.sort(rng.choice(chosen, sampling.rendered_rays, replace=False))
    return chosen


def camera_rays(labels: CameraLabels, intrinsic: np.ndarray, camera2key: np.ndarray, sampling: RaySampling,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Origins, unit directions (both key ego), ranges and classes of a camera's labels nearer than
    `max_depth_m` (optical depth), then its sky pixels (range inf, IGNORE_INDEX) where the sampling
    takes them. The label's depth is along the optical axis; the rendering head measures along the ray,
    so the range is depth x |K^-1 (u, v, 1)|."""
    keep = (labels.depth > 0) & (labels.depth <= sampling.max_depth_m)
    sky = labels.sky_uv if sampling.sky else labels.sky_uv[:0]
    uv = np.concatenate([labels.uv[keep], sky]).astype(np.float64)
    depth = np.concatenate([labels.depth[keep].astype(np.float64), np.full(len(sky), np.inf)])
    semantics = np.concatenate([labels.semantics[keep], np.full(len(sky), IGNORE_INDEX, np.uint8)])
    optical = np.c_[uv, np.ones(len(uv))] @ np.linalg.inv(np.asarray(intrinsic, dtype=np.float64)).T
    length = np.linalg.norm(optical, axis=-1)
    directions = (optical / length[:, None]) @ camera2key[:3, :3].T
    origins = np.broadcast_to(camera2key[:3, 3], directions.shape)
    return origins, directions, depth * length, semantics


def build_rays(data_root: Path, key: SampleEntry, neighbours: list[SampleEntry],
               image_sizes: dict[str, tuple[int, int]], sampling: RaySampling, rng: np.random.Generator,
               ) -> Rays:
    """The sample's rays: every labelled pixel of the key frame and its `neighbours` (auxiliary frames
    of the same scene), the budget drawn from them.

    Args:
        image_sizes: (H, W) of each camera's source image (labels outside it are dropped).
        rng: the sample's generator (so a resumed run draws the same rays).
    """
    from training.data.dataset import cameras_to_key_ego, key_ego2global  # (imports us)

    key_pose = key_ego2global(key)
    parts = []
    for entry in [key, *neighbours]:
        auxiliary = entry is not key
        cameras2key = dict(zip(CAMERA_NAMES, cameras_to_key_ego(entry, key_pose).astype(np.float64),
                               strict=True))
        for name, labels in frame_labels(data_root, entry, image_sizes).items():
            camera2key = cameras2key[name]
            origins, directions, ranges, semantics = camera_rays(
                labels, entry["cameras"][name]["intrinsic"], camera2key, sampling)
            weights = draw_weights(semantics, auxiliary, sampling)
            parts.append((origins, directions, ranges, semantics, weights))
    if not parts:
        return empty_rays()
    origins, directions, ranges, semantics, weights = (np.concatenate(column) for column in zip(*parts,
                                                                                               strict=True))
    chosen = draw_rays(weights, sampling, rng)
    return Rays(
        origins=torch.from_numpy(origins[chosen].astype(np.float32)),
        directions=torch.from_numpy(directions[chosen].astype(np.float32)),
        depth=torch.from_numpy(ranges[chosen].astype(np.float32)),
        semantics=torch.from_numpy(semantics[chosen].astype(np.int64)),
    )


def empty_rays() -> Rays:
    return Rays(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, dtype=torch.int64))


def frame_labels(data_root: Path, entry: SampleEntry, image_sizes: dict[str, tuple[int, int]],
                 ) -> dict[str, CameraLabels]:
    """Each camera's labels in one frame: its labels_2d, else the frame's LiDAR sweep projected into it
    (classes from lidarseg where the index names it; labels outside the (H, W) image are dropped), else
    none."""
    from training.data.dataset import lidar_to_camera, read_labels_2d, read_lidar_points  # (imports us)

    if "labels_2d" in entry:
        paths = entry["labels_2d"]
        return {name: CameraLabels(*read_labels_2d(data_root / paths[name])) for name in CAMERA_NAMES}
    if "lidar" not in entry:
        return {}
    lidar = entry["lidar"]
    points = read_lidar_points(data_root / lidar["path"])
    if "lidarseg_path" in lidar:
        semantics = read_lidarseg(data_root / lidar["lidarseg_path"], lidar["lidarseg_classes"], len(points))
    else:
        semantics = np.full(len(points), IGNORE_INDEX, np.uint8)
    labels = {}
    for name in CAMERA_NAMES:
        camera = entry["cameras"][name]
        uv, depth = camera_to_pixels(lidar_to_camera(points, lidar, camera), np.asarray(camera["intrinsic"]))
        height, width = image_sizes[name]
        seen = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
        if "lidarseg_path" in lidar:
            seen &= semantics != IGNORE_INDEX  # points lidarseg drops (noise, the ego car's body)
        labels[name] = CameraLabels(uv[seen], depth[seen], semantics[seen])
    return labels


def collate_rays(rays: list[Rays]) -> RayBatch:
    """Pad the samples' rays to the longest (padding rows: depth 0, class IGNORE_INDEX) and stack them."""
    count = max(1, max(len(r.depth) for r in rays))
    padded = {}
    for f in fields(Rays):
        rows = [getattr(r, f.name) for r in rays]
        fill = IGNORE_INDEX if f.name == "semantics" else 0
        padded[f.name] = torch.stack([torch.cat([row, row.new_full((count - len(row), *row.shape[1:]), fill)])
                                      for row in rows])
    return RayBatch(**padded)


def label_source(samples: list[SampleEntry]) -> str:
    """What the rays' labels come from on this root, for the training log (a root without lidarseg says
    that its rendering supervision is depth only)."""
    if all("labels_2d" in entry for entry in samples):
        return "2D labels (samples_2d): depth and class per pixel"
    if all("lidarseg_path" in entry.get("lidar", {}) for entry in samples):
        return "LiDAR projected into the cameras, classes from nuScenes-lidarseg"
    if all("lidar" in entry or "labels_2d" in entry for entry in samples):
        return ("LiDAR projected into the cameras; no lidarseg for some or all frames: those rays supervise "
                "depth only (no rendered-semantics loss)")
    raise InputError("rendering supervision needs 2D labels (samples_2d) or LiDAR sweeps for every frame; "
                     "some frames of this root have neither")
