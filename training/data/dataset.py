"""The Occ3D training and evaluation dataset over the index JSON that `occ prepare` writes.

One sample is one frame: six camera images (B, G, R, the reference's channel order, see
occupancy.preprocess), their intrinsics and sensor2ego from the index, the image transform (BEVDet's
augmentation in training, the deterministic test-time transform otherwise) as post_rot/post_tran, the
BEV flip as `bda`, and the `labels.npz` ground truth flipped with it. Images stay uint8 until
`SampleBatch.camera_batch` normalises them (on the training device: four times less to move), so the
same samples feed the PyTorch model and the exported ONNX model, whose contract takes uint8 B, G, R.

Augmentation randomness comes from a generator seeded by (seed, epoch, sample index), never from
global state, so a sample is the same whichever worker loads it and a resumed run sees the same data.

Temporal (4D) models also get the frames before the key frame (`history_frames`): the same scene's
previous keyframes as BEVDet selects them (`history_indices`), each camera's image through the key
frame's transform of that camera, and every camera, of the key frame and of the history, carried into
the key frame's ego with its own ego pose (`occupancy.geometry.sensor_to_key_ego`).
"""

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from occupancy.cameras import CAMERA_NAMES, KEY_CAMERA
from occupancy.data_root import CameraEntry, LidarEntry, SampleEntry, index_path, load_index, read_labels
from occupancy.errors import InputError
from occupancy.geometry import (
    camera_to_pixels,
    invert_rigid,
    pose_matrix,
    sensor_to_key_ego,
    transform_points,
)
from occupancy.image_header import image_kind, image_size
from occupancy.model_contract import IMAGES, INTRINSICS, POST_ROTS, POST_TRANS, SENSOR2EGO
from occupancy.network_input import FAST, NORMALIZE_MEAN, NORMALIZE_STD, Resampling
from occupancy.preprocess import ImageTransform, Size, model_input_image
from training.batch import CameraBatch, FrameHistory, OccupancyTargets, RayBatch
from training.data.augment import (
    AugmentConfig,
    BevFlip,
    eval_image_transform,
    sample_bev_flip,
    sample_image_transform,
)
from training.data.rays import Rays, RaySampling, build_rays, collate_rays


@dataclass
class Sample:
    """One frame, ready for collation. N = 6 cameras in CAMERA_NAMES order, H x W the model input size."""

    token: str
    scene_name: str
    images: Tensor  # N x 3 x H x W uint8 B, G, R, not normalised
    intrinsics: Tensor  # N x 3 x 3 float32, source-image pixels
    sensor2ego: Tensor  # N x 4 x 4 float32, camera -> ego (with history: the key ego, see sensor_to_key_ego)
    post_rots: Tensor  # N x 3 x 3 float32, source pixels -> input pixels
    post_trans: Tensor  # N x 3 float32
    bda: Tensor  # 3 x 3 float32, ego -> flipped ego
    semantics: Tensor  # X x Y x Z uint8, in the flipped ego frame
    mask_camera: Tensor  # X x Y x Z bool
    gt_depth: Tensor | None = None  # N x H x W float32 metres at input pixels, 0 = no point; None: no labels
    history_images: Tensor | None = None  # T x N x 3 x H x W uint8: the T frames before, most recent first
    history_sensor2ego: Tensor | None = None  # T x N x 4 x 4 float32: their cameras -> the key frame's ego
    rays: Rays | None = None  # rendering supervision's rays (training/data/rays.py), where asked for


@dataclass
class SampleBatch:
    """B samples stacked along a new first dimension (same fields as `Sample`, tokens as lists)."""

    tokens: list[str]
    scene_names: list[str]
    images: Tensor
    intrinsics: Tensor
    sensor2ego: Tensor
    post_rots: Tensor
    post_trans: Tensor
    bda: Tensor
    semantics: Tensor
    mask_camera: Tensor
    gt_depth: Tensor | None = None
    history_images: Tensor | None = None
    history_sensor2ego: Tensor | None = None
    rays: RayBatch | None = None

    def camera_batch(self, device: torch.device | str = "cpu") -> CameraBatch:
        """The model input on `device`, images normalised there with the ImageNet mean and std."""
        history = None
        if self.history_images is not None:
            history = FrameHistory(normalize_images(self.history_images.to(device, non_blocking=True)),
                                   self.history_sensor2ego.to(device, non_blocking=True))
        return CameraBatch(
            images=normalize_images(self.images.to(device, non_blocking=True)),
            intrinsics=self.intrinsics.to(device, non_blocking=True),
            sensor2ego=self.sensor2ego.to(device, non_blocking=True),
            post_rots=self.post_rots.to(device, non_blocking=True),
            post_trans=self.post_trans.to(device, non_blocking=True),
            bda=self.bda.to(device, non_blocking=True),
            history=history,
        )

    def targets(self, device: torch.device | str = "cpu") -> OccupancyTargets:
        """Labels as int64 class indices and a bool camera mask (and the depth maps if any), on `device`."""
        gt_depth = None if self.gt_depth is None else self.gt_depth.to(device, non_blocking=True)
        return OccupancyTargets(self.semantics.to(device, non_blocking=True).long(),
                                self.mask_camera.to(device, non_blocking=True), gt_depth)

    def contract_inputs(self) -> dict[str, np.ndarray]:
        """The exported model's inputs (occupancy.model_contract): uint8 RGB images and float32 geometry."""
        return {
            IMAGES: self.images.numpy(),
            INTRINSICS: self.intrinsics.numpy(),
            SENSOR2EGO: self.sensor2ego.numpy(),
            POST_ROTS: self.post_rots.numpy(),
            POST_TRANS: self.post_trans.numpy(),
        }

    def pin_memory(self) -> "SampleBatch":
        """Page-locked copies, so DataLoader(pin_memory=True) can overlap host-to-GPU copies."""
        return SampleBatch(**{f.name: _pin(getattr(self, f.name)) for f in fields(self)})


def _pin(value: Any) -> Any:
    return value.pin_memory() if isinstance(value, Tensor) else value


OPTIONAL_FIELDS = ("gt_depth", "history_images", "history_sensor2ego")


def collate(samples: list[Sample]) -> SampleBatch:
    """Stack samples into a batch (the DataLoader's collate_fn); an optional field (depth, history, rays)
    only if every sample has it."""
    tensors = {f.name: torch.stack([getattr(s, f.name) for s in samples])
               for f in fields(Sample) if f.name not in ("token", "scene_name", "rays", *OPTIONAL_FIELDS)}
    for name in OPTIONAL_FIELDS:
        if all(getattr(s, name) is not None for s in samples):
            tensors[name] = torch.stack([getattr(s, name) for s in samples])
    if all(s.rays is not None for s in samples):
        tensors["rays"] = collate_rays([s.rays for s in samples])
    return SampleBatch(tokens=[s.token for s in samples], scene_names=[s.scene_name for s in samples],
                       **tensors)


def normalize_images(images: Tensor) -> Tensor:
    """uint8 B, G, R ... x 3 x H x W -> the float32 network input, as mmcv's imnormalize computes it:
    (x - mean) * (1 / std), 1 / std taken in float64; the exported graph runs this same function."""
    mean = torch.tensor(NORMALIZE_MEAN, dtype=torch.float32, device=images.device).view(3, 1, 1)
    inverse_std = (1.0 / torch.tensor(NORMALIZE_STD, dtype=torch.float64)).float().to(images.device)
    return (images.float() - mean) * inverse_std.view(3, 1, 1)


class OccupancyDataset(Dataset):
    """Frames of one split of a data root, as `Sample`s.

    Args:
        data_root: the folder holding `occ_index_<split>.json` and the files it names.
        split: "train" or "val".
        input_size: the model's input (H, W), e.g. (256, 704).
        augment: the augmentation ranges, or None for the deterministic test-time transform and no flip.
        seed: base seed of the augmentation; call `set_epoch` so each epoch draws new augmentations.
        depth: also load sparse per-camera depth as `Sample.gt_depth`: the entry's `labels_2d` where
            it has them (synthetic roots), else its LiDAR sweep projected into each camera (real
            nuScenes roots, as BEVDet supervises depth); entries with neither get none.
        history_frames: frames before the key frame to load (2 for BEVStereo4D), most recent first.
        resampling: how images become model inputs (occupancy.preprocess: the gateway's fast path by
            default, or the reference's PIL resize).
        rays: also draw rays with 2D labels for rendering supervision (`Sample.rays`), from the key frame
            and its scene's neighbouring keyframes (training/data/rays.py).
    """

    def __init__(self, data_root: str | Path, split: str, input_size: tuple[int, int],
                 augment: AugmentConfig | None = None, seed: int = 0, depth: bool = False,
                 history_frames: int = 0, resampling: Resampling = FAST, rays: RaySampling | None = None,
                 ) -> None:
        self.data_root = Path(data_root)
        self.split = split
        self.input_size = tuple(input_size)
        self.augment = augment
        self.seed = seed
        self.depth = depth
        self.resampling = resampling
        self.rays = rays
        self.epoch = 0
        self.samples = load_index(self.data_root, split)
        self.history = history_indices(self.samples, history_frames)
        self._positions = {(e["scene_name"], e["frame_index"]): i for i, e in enumerate(self.samples)}
        self._check_files()

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's augmentations (DataLoader workers copy the dataset when an epoch starts)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        entry = self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        images, transforms, source_sizes = [], [], {}
        for name in CAMERA_NAMES:
            data, source_size, path = self._camera_image(entry, name)
            source_sizes[name] = source_size
            if self.augment:
                transform = sample_image_transform(rng, source_size, self.input_size, self.augment)
            else:
                transform = eval_image_transform(source_size, self.input_size, AugmentConfig())
            images.append(self._model_input(data, transform, path))
            transforms.append(transform)
        flip = sample_bev_flip(rng, self.augment) if self.augment else BevFlip()
        semantics, mask_camera = read_flipped_labels(self.data_root / entry["occ_path"], flip)
        cameras = [entry["cameras"][name] for name in CAMERA_NAMES]
        sample = Sample(
            token=entry["token"],
            scene_name=entry["scene_name"],
            images=torch.from_numpy(np.stack(images)),
            intrinsics=torch.tensor([c["intrinsic"] for c in cameras], dtype=torch.float32),
            sensor2ego=torch.from_numpy(cameras_to_key_ego(entry, key_ego2global(entry))),
            post_rots=torch.from_numpy(np.stack([t.post_rot for t in transforms])),
            post_trans=torch.from_numpy(np.stack([t.post_tran for t in transforms])),
            bda=torch.from_numpy(flip.matrix),
            semantics=torch.from_numpy(semantics),
            mask_camera=torch.from_numpy(mask_camera.astype(bool)),
            gt_depth=self._depth_maps(entry, transforms) if self.depth and has_depth(entry) else None,
            rays=build_rays(self.data_root, entry, self._neighbours(entry), source_sizes, self.rays, rng)
            if self.rays else None,
        )
        if self.history[index]:
            history = [self.samples[i] for i in self.history[index]]
            sample = self._with_history(sample, entry, history, transforms)
        return sample

    def _camera_image(self, entry: SampleEntry, name: str) -> tuple[bytes, tuple[int, int], Path]:
        path = self.data_root / entry["cameras"][name]["image_path"]
        data, source_size = self._read_image_file(path)
        return data, source_size, path

    def _with_history(self, sample: Sample, entry: SampleEntry, history: list[SampleEntry],
                      transforms: list[ImageTransform]) -> Sample:
        """The sample with its history frames' images (each camera through the key frame's transform of
        that camera, as the reference's `img_transform_core` on the adjacent images) and every camera,
        the key frame's included, in the key frame's ego."""
        key = key_ego2global(entry)
        # A scene's first frames repeat the key frame: its images are decoded already.
        images = [sample.images if frame is entry else self._frame_images(frame, transforms)
                  for frame in history]
        poses = [cameras_to_key_ego(frame, key) for frame in history]
        return replace(sample, history_images=torch.stack(images),
                       history_sensor2ego=torch.from_numpy(np.stack(poses)))

    def _frame_images(self, entry: SampleEntry, transforms: list[ImageTransform]) -> Tensor:
        """N x 3 x H x W uint8: a frame's images, each through the given camera's transform."""
        images = []
        for name, transform in zip(CAMERA_NAMES, transforms, strict=True):
            data, _, path = self._camera_image(entry, name)
            images.append(self._model_input(data, transform, path))
        return torch.from_numpy(np.stack(images))

    def _model_input(self, data: bytes, transform: ImageTransform, path: Path) -> np.ndarray:
        """3 x H x W uint8 B, G, R, as the gateway makes it (fast: a JPEG decoded only to the pixels the
        transform keeps)."""
        return model_input_image(data, image_kind(data), transform, self.resampling, field=str(path)
                                 ).transpose(2, 0, 1)

    def _neighbours(self, entry: SampleEntry) -> list[SampleEntry]:
        """The scene's keyframes at the ray sampling's offsets from `entry` that this split holds."""
        positions = [self._positions.get((entry["scene_name"], entry["frame_index"] + offset))
                     for offset in self.rays.aux_frames]
        return [self.samples[p] for p in positions if p is not None]

    def _depth_maps(self, entry: SampleEntry, transforms: list[ImageTransform]) -> Tensor:
        """N x H x W depth maps at input pixels, each camera's depth points through its transform."""
        maps = [depth_map(uv, depth, transform, self.input_size)
                for (uv, depth), transform in zip(self._depth_points(entry), transforms, strict=True)]
        return torch.from_numpy(np.stack(maps))

    def _depth_points(self, entry: SampleEntry) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per camera: source-image pixels (P x 2) and depths (P) of the labels_2d, else of the LiDAR."""
        if "labels_2d" in entry:
            return [read_labels_2d(self.data_root / entry["labels_2d"][name])[:2] for name in CAMERA_NAMES]
        points = read_lidar_points(self.data_root / entry["lidar"]["path"])
        return [lidar_in_camera(points, entry["lidar"], entry["cameras"][name]) for name in CAMERA_NAMES]

    def _check_files(self) -> None:
        """Fail before training starts, naming the first missing file, rather than inside a worker."""
        for entry in self.samples:
            unposed = [name for name in CAMERA_NAMES if "ego2global" not in entry["cameras"][name]]
            if unposed:
                raise InputError(f"sample {entry['token']} of {index_path(self.data_root, self.split).name}: "
                                 f"no ego2global for {', '.join(unposed)}, which carries each camera into "
                                 f"the key ego frame; rerun `occ prepare --data-root {self.data_root}`")
            paths = [entry["cameras"][name]["image_path"] for name in CAMERA_NAMES] + [entry["occ_path"]]
            labelled = self.depth or self.rays
            if labelled and "labels_2d" in entry:
                paths += list(entry["labels_2d"].values())
            elif labelled and "lidar" in entry:
                paths.append(entry["lidar"]["path"])
                if self.rays and "lidarseg_path" in entry["lidar"]:
                    paths.append(entry["lidar"]["lidarseg_path"])
            for relative in paths:
                if not (self.data_root / relative).is_file():
                    raise InputError(f"{self.data_root / relative}: file missing (sample {entry['token']} "
                                     f"of {index_path(self.data_root, self.split).name})")

    @staticmethod
    def _read_image_file(path: Path) -> tuple[bytes, tuple[int, int]]:
        """An image file's bytes and its (height, width) from the JPEG/PNG header."""
        try:
            data = path.read_bytes()
        except OSError as error:
            raise InputError(f"{path}: unreadable image ({error.strerror})") from error
        size = image_size(data)
        if size is None:
            raise InputError(f"{path}: not a JPEG or PNG image with a readable size")
        return data, size


def history_indices(samples: list[SampleEntry], frames: int) -> list[tuple[int, ...]]:
    """For each sample, the indices of the `frames` keyframes before it, most recent first, as BEVDet's
    `get_adj_info` selects them (FlashOCC nuscenes_dataset_bevdet.py:280-296): frame k - j of the same
    scene, or the sample itself where the scene has no such frame (k < j). So a scene's second frame gets
    (itself, the first frame, **itself**), not the first frame twice. Follows the index's `prev` links;
    an entry without them (or whose previous keyframe is not in this split) starts its scene.
    """
    position = {entry["token"]: i for i, entry in enumerate(samples)}
    result = []
    for i, entry in enumerate(samples):
        chain, current = [], entry
        for _ in range(frames):
            previous = position.get(current.get("prev")) if current is not None else None
            current = samples[previous] if previous is not None else None
            chain.append(i if previous is None else previous)
        result.append(tuple(chain))
    return result


def key_ego2global(entry: SampleEntry) -> np.ndarray:
    """The key ego pose of a frame: its first camera's (CAM_FRONT_LEFT), as the reference takes it."""
    return pose_matrix(**entry["cameras"][KEY_CAMERA]["ego2global"])


def cameras_to_key_ego(entry: SampleEntry, key_ego2global: np.ndarray) -> np.ndarray:
    """N x 4 x 4 float32: each camera of a frame -> the key frame's ego, with the camera's own ego pose."""
    cameras = [entry["cameras"][name] for name in CAMERA_NAMES]
    return np.stack([sensor_to_key_ego(pose_matrix(**c["sensor2ego"]), pose_matrix(**c["ego2global"]),
                                       key_ego2global) for c in cameras]).astype(np.float32)


def read_flipped_labels(path: Path, flip: BevFlip) -> tuple[np.ndarray, np.ndarray]:
    """`semantics` and `mask_camera` (X x Y x Z uint8) of an Occ3D labels.npz, mirrored by `flip`."""
    labels = read_labels(path)
    return flip.apply_to_grid(labels.semantics), flip.apply_to_grid(labels.mask_camera)


def has_depth(entry: SampleEntry) -> bool:
    """Whether an index entry carries depth labels: synthetic 2D labels or a LiDAR sweep."""
    return "labels_2d" in entry or "lidar" in entry


def read_labels_2d(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source-image pixels (P x 2), depths (P) and classes (P uint8) of a synthetic root's per-camera 2D
    labels .npz, and its sky pixels (S x 2; none in roots written before it had them)."""
    try:
        with np.load(path) as labels:
            sky = labels["sky_uv"] if "sky_uv" in labels.files else np.zeros((0, 2), np.float32)
            return labels["uv"], labels["depth"], labels["semantics"], sky
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"{path}: no uv, depth and semantics in this 2D labels .npz ({error})") from error


def read_lidar_points(path: Path) -> np.ndarray:
    """P x 3 points (LiDAR frame, metres) of a nuScenes `.pcd.bin` sweep: float32 rows x, y, z,
    intensity, ring index."""
    try:
        data = np.fromfile(path, dtype=np.float32)
    except OSError as error:
        raise InputError(f"{path}: unreadable LiDAR sweep ({error.strerror})") from error
    if data.size % 5:
        raise InputError(f"{path}: not a nuScenes LiDAR sweep ({data.size * 4} bytes is not a whole number "
                         "of 5-float32 points)")
    return data.reshape(-1, 5)[:, :3]


def lidar_in_camera(points: np.ndarray, lidar: LidarEntry, camera: CameraEntry,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Source-image pixels (P x 2) and depths (P) of the LiDAR points in front of a camera."""
    points_camera = lidar_to_camera(points, lidar, camera)
    in_front = points_camera[:, 2] > 0
    return camera_to_pixels(points_camera[in_front], np.asarray(camera["intrinsic"]))


def lidar_to_camera(points: np.ndarray, lidar: LidarEntry, camera: CameraEntry) -> np.ndarray:
    """P x 3 LiDAR points in a camera's frame. LiDAR and camera fire at different times on a moving car,
    so the points go LiDAR -> ego at the sweep's time -> global -> ego at the image's time -> camera
    (BEVDet's lidar2img)."""
    lidar2global = pose_matrix(**lidar["ego2global"]) @ pose_matrix(**lidar["sensor2ego"])
    camera2global = pose_matrix(**camera["ego2global"]) @ pose_matrix(**camera["sensor2ego"])
    return transform_points(invert_rigid(camera2global) @ lidar2global, points)


def depth_map(uv: np.ndarray, depth: np.ndarray, transform: ImageTransform, input_size: Size) -> np.ndarray:
    """H x W float32 map of sparse depths (BEVDet's `PointToMultiViewDepth`): each point's source pixel
    `uv` (P x 2, continuous (u, v)) goes through the image transform; the pixel it falls in (pixel
    [i, j] covers [j, j + 1) x [i, i + 1)) keeps the nearest depth. 0 = no point.

    Depth along the optical axis is unchanged by resize, crop, flip and in-plane rotation.
    """
    height, width = input_size
    pixels = np.floor(transform.apply_to_points(uv)).astype(np.int64)
    keep = ((depth > 0) & (pixels[:, 0] >= 0) & (pixels[:, 0] < width)
            & (pixels[:, 1] >= 0) & (pixels[:, 1] < height))
    nearest = np.full((height, width), np.inf, np.float32)
    np.minimum.at(nearest, (pixels[keep, 1], pixels[keep, 0]), depth[keep].astype(np.float32))
    return np.where(np.isinf(nearest), 0.0, nearest).astype(np.float32)
