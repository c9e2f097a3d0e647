"""Typed batches that flow from the data pipeline into the models and losses.

Shapes: B frames, N cameras (CAMERA_NAMES order), H x W the model's input size, and the
occupancy grid X x Y x Z = 200 x 200 x 16.
"""

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class CameraBatch:
    """What a single-frame model sees: normalised images and the camera geometry."""

    images: Tensor  # B x N x 3 x H x W, float, RGB normalised with the ImageNet mean and std
    intrinsics: Tensor  # B x N x 3 x 3, pixels of the source image
    sensor2ego: Tensor  # B x N x 4 x 4, camera -> ego
    post_rots: Tensor  # B x N x 3 x 3, source pixels -> input pixels (resize, crop, rotate, flip)
    post_trans: Tensor  # B x N x 3
    bda: Tensor  # B x 3 x 3, BEV data augmentation (flips) applied to ego coordinates; identity at test

    def to(self, device: torch.device | str) -> "CameraBatch":
        return CameraBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


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
