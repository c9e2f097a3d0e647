"""RenderOcc's rendering head (`nerf_head`): the seed's and RenderOcc's `NerfHead`
(mmdet3d/models/nerf/nerf_head.py) in standard torch ops (the volume-rendering arithmetic is
training/models/rendering.py).

The head has no parameters. It registers the scene normalisation (`scene_center`, `scene_radius`), the
normalised bounds of the contracted scene (`xyz_min`, `xyz_max`) and the density shift (`act_shift`),
which therefore sit in the reference checkpoints; ours hold the reference's values, so those load key
for key. It turns voxel densities and semantic logits into the four rendering losses against rays with
2D labels (training only), and where its config turns them on into three of ours, which the reference
configs leave off: the sky rays' optical depth, the surface loss and the surface semantics.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from occupancy.classes import IGNORE_INDEX
from occupancy.grid import GridSpec
from training.batch import RayBatch
from training.models.losses import renderocc_class_weights
from training.models.rendering import (
    DEPTH_EPS,
    SKIP_DISTANCE_FACTOR,
    RenderedRays,
    alphas_to_weights,
    binary_entropy,
    distortion_loss,
    raw_to_thickness,
    sample_distances,
    silog_loss,
    surface_loss,
    trilinear,
)


@dataclass(frozen=True)
class NerfHeadConfig:
    """The reference configs' `nerf_head` (seed renderocc-7frame-256x704*.py, pmj renderocc-7frame.py):
    radius 39, depth supervision on, loss weights 1.0 / 1.0 for pmj's 2D-only training and 0.1 / 0.1
    with the 3D loss in the seed's UniOcc-style configs, the regularisers 0.01 each."""

    point_cloud_range: tuple[float, float, float, float, float, float] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
    voxel_size: float = 0.4
    radius: float = 39.0  # metres: the inner (uniformly sampled) ball around the grid's centre
    step_size: float = 0.5  # inner sample spacing in voxels; also the Raw2Alpha interval (DVGO's)
    use_depth_sup: bool = True
    balance_cls_weight: bool = True  # weight the semantic loss by 1 / log(frequency) (RenderOcc's table)
    weight_depth: float = 1.0
    weight_semantic: float = 1.0
    weight_entropy_last: float = 0.01
    weight_distortion: float = 0.01
    # `loss_render_sky`: rays through sky pixels (infinite depth) should cross the grid unstopped. Ours,
    # not the reference's (whose LiDAR labels have no sky); 0 leaves it out, as the reference configs do.
    weight_sky: float = 0.0
    # `loss_render_surface`: a surface ray's weight should lie within `surface_margin_m` of its labelled
    # range. Ours, not the reference's: SILog and the semantic loss are met by a diffuse density whose
    # mean depth is right, and the grid's occupancy is read from the density, so it has to be sharp. On
    # one demo frame, a free grid fitted to 8,192 rays a step for 200 steps scored 11.3 mIoU without it
    # and 30.0 with it (weight 1, margin 0.4 m). 0 leaves it out, as the reference configs do.
    weight_surface: float = 0.0
    surface_margin_m: float = 0.4  # one voxel either side of the labelled range
    # Rays whose labelled point lies above or below the grid's height range (a building's upper floors)
    # cross the grid free: they count as sky rays. Ours, not the reference's: nothing in the grid can stop
    # such a ray at its range, so the depth loss stops it at the grid's top face, and the top slice turned
    # opaque wherever these rays leave it (at 1,000 iterations: 8,959 of 10,281 false voxels on 6 frames).
    # Surfaces beyond the grid's sides stay: the contracted background shell stands for them.
    sky_outside_height: bool = False
    # `loss_surface_semantic`: class-weighted cross-entropy of the semantic logits half a voxel behind each
    # labelled range, where the label's class is. Ours, not the reference's: the rendered semantics are
    # the logits weighted along the ray, and a network's faint density in free space (each sample below
    # the test threshold, together stopping half the light over 10 m) takes their gradient away from the
    # surface voxels. With the geometry of the ground truth, a demo-tiny-2d checkpoint's classes scored
    # 11.6 mIoU; with its own geometry and the true classes, 27.5.
    weight_surface_semantic: float = 0.0
    alpha_init: float = 1e-6  # the alpha of a zero raw density: act_shift = log(1 / (1 - a) - 1)
    fast_color_thres: float = 1e-7  # samples whose alpha, or weight, is at most this are dropped


def nerf_head_config(grid: GridSpec, **options) -> NerfHeadConfig:
    """The rendering head over `grid` (its range and voxel size), with the reference's other defaults."""
    return NerfHeadConfig(point_cloud_range=tuple(grid.range_m), voxel_size=grid.voxel_size, **options)


class NerfHead(nn.Module):
    """The rendering head: voxel density and semantics along rays -> the four rendering losses.

    Buffers as the reference computes them: with x range R and z range Rz, bg_len = (R // 2 - radius) /
    radius, xyz_min/max = -/+ [1 + bg_len, 1 + bg_len, Rz / R], scene_center = the range's centre (the
    reference ignores the configs' `scene_center`), act_shift = log(1 / (1 - alpha_init) - 1).

    Args:
        config: the grid's range and voxel size, radius, step and the loss weights.
        num_classes: semantic channels rendered (17: the classes without `free`).
    """

    def __init__(self, config: NerfHeadConfig, num_classes: int = 17) -> None:
        super().__init__()
        self.config = config
        low = torch.tensor(config.point_cloud_range[:3])
        high = torch.tensor(config.point_cloud_range[3:])
        extent = high - low
        bg_len = (extent[0] // 2 - config.radius) / config.radius
        z_ = extent[2] / extent[0]
        centre = (low + high) * 0.5
        self.register_buffer("scene_center", centre)
        self.register_buffer("scene_radius", torch.full((3,), config.radius))
        self.register_buffer("xyz_min", torch.stack([-1 - bg_len, -1 - bg_len, -z_]))
        self.register_buffer("xyz_max", torch.stack([1 + bg_len, 1 + bg_len, z_]))
        self.register_buffer("act_shift", torch.tensor([math.log(1 / (1 - config.alpha_init) - 1)]))
        # The scalars of the sampling in numpy float32, the reference's tensor arithmetic (no tensor reads,
        # so the head also builds on the meta device): bg_len = (80 // 2 - 39) / 39 = 1/39, the shell.
        range_ = np.asarray(config.point_cloud_range, dtype=np.float32)
        extent_x, radius_f32 = range_[3] - range_[0], np.float32(config.radius)
        self.bg_len = float((extent_x // 2 - radius_f32) / radius_f32)
        self.world_len = round(float(extent_x) / config.voxel_size)  # the reference hard-codes 200
        two, bg_len_f32, step = np.float32(2), np.float32(self.bg_len), np.float32(config.step_size)
        n_inner = int(two / (two + two * bg_len_f32) * np.float32(self.world_len) / step) + 1
        # Where the samples read the grid: its outer faces in normalised coordinates, with
        # align_corners=False, so voxel centres sit where the labels put them. The reference samples
        # between xyz_min and xyz_max with align_corners=True, whose z is +-6.4/80 = +-0.08 (3.12 m, not the
        # grid's 3.2 m) and which puts voxel 0's centre at -40 m: 0.1-0.2 m off. The buffers keep the
        # reference's values (its checkpoints hold them); x and y of both agree.
        faces = (range_.reshape(2, 3) - range_.reshape(2, 3).mean(0)) / radius_f32
        self.register_buffer("grid_min", torch.from_numpy(faces[0]), persistent=False)
        self.register_buffer("grid_max", torch.from_numpy(faces[1]), persistent=False)
        # Not persistent (the reference keeps them out of its state_dict): sample distances and weights.
        self.register_buffer("t_samples", sample_distances(n_inner), persistent=False)
        weights = renderocc_class_weights(normalised=False)[:num_classes] if config.balance_cls_weight \
            else torch.full((num_classes,), 1.0 / num_classes)
        self.register_buffer("class_weights", weights, persistent=False)
        # Raw2Alpha's interval: the sample step in voxels (DVGO's stepsize x voxel_size_ratio 1); the
        # reference passes a literal 0.5, its configs' step_size.
        self.interval = config.step_size
        self.skip_distance = (2 + 2 * self.bg_len) / self.world_len * config.step_size * SKIP_DISTANCE_FACTOR
        # Whether each inner step resets the skip scan by itself (true for the Occ3D grid: 0.00512 > 0.00487).
        self._inner_steps_reset = 2 / n_inner > self.skip_distance

    @property
    def samples_per_ray(self) -> int:
        return len(self.t_samples)

    @torch.no_grad()
    def sample_points(self, origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        """Points along R rays (ego metres, any direction length): R x S x 3 in normalised, contracted
        coordinates, and R x S `keep`: the samples inside the ball and, beyond it, those the reference's
        cumdist_thres keeps (a contracted sample once the path since the last kept one exceeds 0.95 steps:
        the contraction packs many samples into a sliver of the shell)."""
        origin = (origins - self.scene_center) / self.scene_radius
        unit = directions / directions.norm(dim=-1, keepdim=True)
        points, inner = self._contract(origin[:, None, :] + unit[:, None, :] * self.t_samples[None, :, None])
        keep = inner.clone()
        step = (points[:, 1:] - points[:, :-1]).norm(dim=-1)
        # A running sum that resets whenever it passes the threshold: sequential along the ray. Where inner
        # steps exceed the threshold by themselves, the sum is 0 until the first ray leaves the ball, and
        # the scan starts there.
        start = 0
        if self._inner_steps_reset:
            start = max(int(inner[..., 0].all(dim=0).long().cumprod(dim=0).sum()) - 1, 0)
        path = torch.zeros_like(step[:, 0])
        for k in range(start, step.shape[1]):
            path = path + step[:, k]
            over = path > self.skip_distance
            path = torch.where(over, 0.0, path)
            keep[:, k + 1] |= over
        return points, keep

    def _contract(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised points with those outside the unit ball contracted into the shell (DVGO's), and
        whether each was inside."""
        norm = points.norm(dim=-1, keepdim=True)
        inner = norm <= 1
        contracted = points / norm * ((1 + self.bg_len) - self.bg_len / norm)
        return torch.where(inner, points, contracted), inner[..., 0]

    def surface_logits(self, semantic: Tensor, origins: Tensor, directions: Tensor, depth: Tensor,
                       bda: Tensor) -> Tensor:
        """The semantic logits (R x C, trilinear) half a voxel behind each ray's labelled range: inside the
        voxel the label's surface bounds."""
        unit = directions / directions.norm(dim=-1, keepdim=True)
        behind = origins + unit * (depth + self.config.voxel_size / 2)[:, None]
        points, _ = self._contract((behind - self.scene_center) / self.scene_radius)
        return trilinear(semantic, self._grid_coordinates(points @ bda.to(points.dtype).T))

    def render(self, density: Tensor, semantic: Tensor, origins: Tensor, directions: Tensor, bda: Tensor,
               ) -> RenderedRays:
        """Render one grid along R rays.

        Args:
            density: X x Y x Z raw densities (before Raw2Alpha), indexed [x, y, z] in the augmented ego frame.
            semantic: X x Y x Z x C semantic logits.
            origins, directions: R x 3 rays in the un-augmented key ego frame (metres).
            bda: 3 x 3 BEV augmentation taking ego coordinates to the grid's (flips), applied to the points.
        """
        points, keep = self.sample_points(origins, directions)
        points, keep, t = self._compact(points, keep)
        points = points @ bda.to(points.dtype).T
        grid_coords = self._grid_coordinates(points)  # R x S x 3
        rays, samples = keep.shape
        raw = trilinear(density[..., None], grid_coords.view(-1, 3)).view(rays, samples)
        thickness = raw_to_thickness(raw, self.act_shift, self.interval)
        threshold = self.config.fast_color_thres
        # Skipped samples and those with alpha <= threshold leave the ray: they neither attenuate nor learn.
        alpha_kept = -torch.expm1(-thickness) > threshold
        weights, _, alphainv_last = alphas_to_weights(torch.where(keep & alpha_kept, thickness, 0.0))
        weights = torch.where(weights > threshold, weights, 0.0)
        # Metric depth along the ray. The reference renders radius * sum(w s), s = t / (1 + t), and
        # compares it with metric depth: 39 t / (1 + t) m is 7.9 m for a surface at 10 m and never
        # exceeds 39 m, so SILog pushes surfaces outwards.
        depth = ((weights * t).sum(dim=-1) + DEPTH_EPS) * self.config.radius
        return RenderedRays(weights, t, alphainv_last, depth,
                            self._render_semantics(semantic, grid_coords, weights))

    def _compact(self, points: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The kept samples moved to the front of each row, in ray order, and the rows cut to the longest
        ray's count (about half of the S samples survive the skip)."""
        order = torch.argsort((~keep).to(torch.uint8), dim=-1, stable=True)
        length = int(keep.sum(dim=-1).max().clamp(min=1))
        order = order[:, :length]
        t = self.t_samples[order]
        points = torch.gather(points, 1, order[..., None].expand(-1, -1, 3))
        return points, torch.gather(keep, 1, order), t

    def _grid_coordinates(self, points: Tensor) -> Tensor:
        """grid_sample coordinates (x, y, z) of normalised points: [-1, 1] between the outer faces."""
        return (points - self.grid_min) / (self.grid_max - self.grid_min) * 2 - 1

    @staticmethod
    def _render_semantics(semantic: Tensor, grid_coords: Tensor, weights: Tensor) -> Tensor:
        """sum over samples of weight x trilinear semantic logits, R x C. Looked up only where the weight
        is non-zero (the samples before a ray's early stop), which changes nothing but the cost."""
        rays = weights.shape[0]
        used = weights > 0
        ray_of_sample = torch.arange(rays, device=weights.device)[:, None].expand_as(weights)[used]
        logits = trilinear(semantic, grid_coords[used])
        out = logits.new_zeros(rays, semantic.shape[-1])
        return out.index_add(0, ray_of_sample, weights[used][:, None] * logits)

    def losses(self, rendered: RenderedRays, depth: Tensor, semantics: Tensor) -> dict[str, Tensor]:
        """The rendering losses of one grid's rays against their labels (range along the ray in metres,
        inf for a sky ray; class or IGNORE_INDEX), weighted, under the reference's names, and the sky's."""
        config = self.config
        losses = {}
        surface = torch.isfinite(depth)
        if config.use_depth_sup:
            losses["loss_render_depth"] = config.weight_depth * (
                silog_loss(rendered.depth[surface] + DEPTH_EPS, depth[surface]) if surface.any()
                else rendered.depth.sum() * 0.0)
        labelled = semantics != IGNORE_INDEX
        if labelled.any():
            semantic_loss = F.cross_entropy(rendered.semantics[labelled], semantics[labelled],
                                            weight=self.class_weights)
        else:  # a root without lidarseg: depth only
            semantic_loss = rendered.semantics.sum() * 0.0
        losses["loss_render_semantic"] = config.weight_semantic * semantic_loss
        if config.weight_entropy_last > 0:
            losses["loss_sdf_entropy"] = config.weight_entropy_last * binary_entropy(rendered.alphainv_last)
        if config.weight_distortion > 0:
            s = 1.0 - 1.0 / (1.0 + rendered.t)  # [0, inf) radii -> [0, 1)
            # DVGO's interval 1 / (samples per ray); the reference's 1 / (all points of all rays) makes the
            # w^2 term vanish (it took len(t) after flattening).
            interval = 1.0 / self.samples_per_ray
            losses["loss_sdf_distortion"] = config.weight_distortion * distortion_loss(
                rendered.weights, s, interval)
        if config.weight_surface > 0:
            losses["loss_render_surface"] = config.weight_surface * (
                surface_loss(rendered.weights[surface], rendered.t[surface] * config.radius, depth[surface],
                             config.surface_margin_m) if surface.any() else rendered.weights.sum() * 0.0)
        if config.weight_sky > 0:
            # The optical depth a sky ray crosses (up to the early stop): -log of the light that gets through.
            # Past ~87 (one absurdly dense last sample) that light underflows to 0: the floor keeps the loss
            # finite there, at 87.3.
            light = rendered.alphainv_last[~surface].clamp_min(torch.finfo(torch.float32).tiny)
            optical_depth = -torch.log(light)
            losses["loss_render_sky"] = config.weight_sky * (
                optical_depth.mean() if len(optical_depth) else rendered.alphainv_last.sum() * 0.0)
        return losses

    def surface_semantic_loss(self, semantic: Tensor, origins: Tensor, directions: Tensor, depth: Tensor,
                              semantics: Tensor, bda: Tensor) -> Tensor:
        """Class-weighted cross-entropy of the logits behind the labelled surfaces (rays with a class)."""
        labelled = torch.isfinite(depth) & (semantics != IGNORE_INDEX)
        if not labelled.any():
            return semantic.sum() * 0.0
        logits = self.surface_logits(semantic, origins[labelled], directions[labelled], depth[labelled], bda)
        return F.cross_entropy(logits, semantics[labelled], weight=self.class_weights)

    def outside_height_as_sky(self, origins: Tensor, directions: Tensor, depth: Tensor, semantics: Tensor,
                              ) -> tuple[Tensor, Tensor]:
        """The rays' ranges and classes with those whose labelled point lies outside the grid's height
        range turned into sky rays (range inf, IGNORE_INDEX)."""
        unit = directions / directions.norm(dim=-1, keepdim=True)
        height = origins[:, 2] + unit[:, 2] * depth
        low, high = self.config.point_cloud_range[2], self.config.point_cloud_range[5]
        outside = torch.isfinite(depth) & ((height < low) | (height > high))
        return (torch.where(outside, torch.inf, depth),
                torch.where(outside, torch.full_like(semantics, IGNORE_INDEX), semantics))

    def forward(self, density: Tensor, semantic: Tensor, rays: RayBatch, bda: Tensor) -> dict[str, Tensor]:
        """Rendering losses averaged over the batch, as the reference's forward.

        Args:
            density: B x X x Y x Z raw densities; semantic: B x X x Y x Z x C logits (augmented ego frame).
            rays: the batch's rays (padding rows have depth 0 and are left out).
            bda: B x 3 x 3 BEV augmentation of each sample.
        """
        totals: dict[str, Tensor] = {}
        batch = density.shape[0]
        with torch.autocast(density.device.type, enabled=False):
            for b in range(batch):
                valid = rays.depth[b] > 0
                origins, directions = rays.origins[b][valid], rays.directions[b][valid]
                depth, semantics = rays.depth[b][valid], rays.semantics[b][valid]
                if self.config.sky_outside_height:
                    depth, semantics = self.outside_height_as_sky(origins, directions, depth, semantics)
                grid_semantic = semantic[b].float()  # one float32 copy of the bf16 logits, read twice
                rendered = self.render(density[b].float(), grid_semantic, origins, directions, bda[b])
                losses = self.losses(rendered, depth, semantics)
                if self.config.weight_surface_semantic > 0:
                    losses["loss_surface_semantic"] = self.config.weight_surface_semantic * \
                        self.surface_semantic_loss(grid_semantic, origins, directions, depth, semantics,
                                                   bda[b])
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + value / batch
        return totals
