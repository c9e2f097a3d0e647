"""Typed batches that flow from the data pipeline into the models and losses.

Shapes: B frames, N cameras (CAMERA_NAMES order), H x W the model's input size, and the
occupancy grid X x Y x Z = 200 x 200 x 16.
"""

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class FrameHistory:
    """The frames before the key frame that temporal (4D) models see, most recent first.

    The reference takes them as the same scene's previous keyframes (0.5 s apart in nuScenes) and,
    where a scene has fewer, repeats the key frame (see training.data.dataset.history_indices).
    """

    images: Tensor  # B x T x N x 3 x H x W, normalised as CameraBatch.images, with the key frame's transform
    sensor2keyego: Tensor  # B x T x N x 4 x 4: each history camera -> the **key frame's** ego

    def to(self, device: torch.device | str) -> "FrameHistory":
        return FrameHistory(self.images.to(device), self.sensor2keyego.to(device))


@dataclass
class CameraBatch:
    """What a single-frame model sees: normalised images and the camera geometry."""

    images: Tensor  # B x N x 3 x H x W, float: B, G, R normalised as the reference (dataset.normalize_images)
    intrinsics: Tensor  # B x N x 3 x 3, pixels of the source image
    sensor2ego: Tensor  # B x N x 4 x 4, camera -> ego
    post_rots: Tensor  # B x N x 3 x 3, source pixels -> input pixels (resize, crop, rotate, flip)
    post_trans: Tensor  # B x N x 3
    bda: Tensor  # B x 3 x 3, BEV data augmentation (flips) applied to ego coordinates; identity at test
    history: FrameHistory | None = None  # temporal models: the frames before this one (same intrinsics
    # and image transform), their cameras in this frame's ego

    def to(self, device: torch.device | str) -> "CameraBatch":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return CameraBatch(**{name: None if v is None else v.to(device) for name, v in values.items()})


@dataclass
class OccupancyTargets:
    """Occ3D ground truth for a batch, and sparse depth for depth supervision where the data has it."""

    semantics: Tensor  # B x X x Y x Z, int64 class indices
    mask_camera: Tensor  # B x X x Y x Z, bool: voxels visible from the cameras
    gt_depth: Tensor | None = None  # B x N x H x W float metres along the optical axis, 0 = no point

    def to(self, device: torch.device | str) -> "OccupancyTargets":
        gt_depth = None if self.gt_depth is None else self.gt_depth.to(device)
        return OccupancyTargets(self.semantics.to(device), self.mask_camera.to(device), gt_depth)


@dataclass
class RayBatch:
    """Camera rays with 2D labels for rendering supervision, R per sample (padded: depth 0 = no ray).

    Rays live in the un-augmented ego frame of the key frame; the BEV augmentation reaches them through
    the camera batch's `bda`.
    """

    origins: Tensor  # B x R x 3 metres
    directions: Tensor  # B x R x 3 unit vectors
    depth: Tensor  # B x R metres along the ray to the labelled surface (range, not optical z); 0 = padding
    semantics: Tensor  # B x R int64 Occ3D class of the surface, IGNORE_INDEX where unlabelled

    def to(self, device: torch.device | str) -> "RayBatch":
        return RayBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})
