"""The buffers of RenderOcc's rendering head (`nerf_head`), under the reference's names.

The seed's and RenderOcc's `NerfHead` (mmdet3d/models/nerf/nerf_head.py) has no parameters; it
registers the scene normalisation (`scene_center`, `scene_radius`), the normalised bounds of the
contracted scene (`xyz_min`, `xyz_max`) and the density shift (`act_shift`), which therefore sit in
their checkpoints. The rendering itself (issue 15) is added to this module.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class NerfHeadConfig:
    """The reference configs' `nerf_head` (seed renderocc-7frame-256x704*.py, pmj renderocc-7frame.py)."""

    point_cloud_range: tuple[float, float, float, float, float, float] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
    voxel_size: float = 0.4
    radius: float = 39.0
    step_size: float = 0.5
    use_depth_sup: bool = True
    weight_depth: float = 1.0
    weight_semantic: float = 1.0
    weight_entropy_last: float = 0.01
    weight_distortion: float = 0.01
    alpha_init: float = 1e-6


class NerfHead(nn.Module):
    """Buffers as the reference computes them: with x range R and z range Rz, bg_len = (R // 2 - radius) /
    radius, xyz_min/max = -/+ [1 + bg_len, 1 + bg_len, Rz / R], scene_center = the range's centre (the
    reference ignores the configs' `scene_center`), act_shift = log(1 / (1 - alpha_init) - 1)."""

    def __init__(self, config: NerfHeadConfig) -> None:
        super().__init__()
        self.config = config
        low = torch.tensor(config.point_cloud_range[:3])
        high = torch.tensor(config.point_cloud_range[3:])
        extent = high - low
        bg_len = (extent[0] // 2 - config.radius) / config.radius
        z_ = extent[2] / extent[0]
        self.register_buffer("scene_center", (low + high) * 0.5)
        self.register_buffer("scene_radius", torch.full((3,), config.radius))
        self.register_buffer("xyz_min", torch.stack([-1 - bg_len, -1 - bg_len, -z_]))
        self.register_buffer("xyz_max", torch.stack([1 + bg_len, 1 + bg_len, z_]))
        self.register_buffer("act_shift", torch.tensor([math.log(1 / (1 - config.alpha_init) - 1)]))
