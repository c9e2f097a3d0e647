"""Volume-rendering supervision: RenderOcc's NerfHead (pmj110119/RenderOcc mmdet3d/models/nerf/) in
standard torch ops.

The voxel outputs, density (raw, before the activation) and 17 semantic logits, are sampled
trilinearly along camera rays, composited front to back with DVGO's Raw2Alpha / Alphas2Weights, and
compared with per-pixel labels: SILog on the rendered depth, class-weighted cross-entropy on the
rendered semantics, the entropy of each ray's last transmittance and DVGO's distortion loss. The head
only holds buffers (the reference's `scene_center`, `scene_radius`, `xyz_min`, `xyz_max`,
`act_shift`), so it adds no parameters and reference checkpoints load key for key.

The reference runs three JIT-compiled CUDA extensions over a ragged list of points (torch_scatter's
segment_coo, cumdist_thres, alpha2weight, the efficient distloss); here every ray has the same
padded row of samples (rays x samples tensors, a mask for the samples the reference skips), the
sequential transmittance is an exclusive cumulative product and the early stop a mask, which gives
the reference's numbers and gradients on any device.

Coordinates: rays in the un-augmented ego frame of the key frame (metres); sample points in the
reference's normalised frame, (ego - scene_center) / radius, where the unit ball (39 m) holds the
uniform samples and everything beyond is contracted into the shell 1 .. 1 + bg_len (39 .. 40 m).
Where the reference looks wrong we differ, each place says why (rendering_design.md, section 8):
metric depth along the ray instead of 39 t / (1 + t), the grid's true z extent and voxel centres
(align_corners=False), the interval from step_size, and DVGO's per-ray distortion interval.
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

# pmj's Occ3D-nuScenes voxel counts (nerf_head.py, render_occ.py `nusc_class_frequencies`), label order
# with `free` last; not FlashOCC's table. Rendered semantics use the first 17.
RENDEROCC_CLASS_FREQUENCIES: tuple[int, ...] = (
    1163161, 2309034, 188743, 2997643, 20317180, 852476, 243808, 2457947, 497017, 2731022, 7224789,
    214411435, 5565043, 63191967, 76098082, 128860031, 141625221, 2307405309,
)
OUTER_SAMPLES_DIVISOR = 15  # N_outer = N_inner // 15 (sample_ray's hard-coded 15)
OUTER_T_END = 64.0  # outer samples at 2 / linspace(1, 1/64): t up to 128 radii
SKIP_DISTANCE_FACTOR = 0.95  # a contracted sample is kept once the path since the last one exceeds 0.95 steps
EARLY_STOP_TRANSMITTANCE = 1e-3  # alpha2weight_cuda_kernel: compositing stops below this transmittance
LOG_TRANSMITTANCE_FLOOR = 30.0  # optical depth beyond which T (< 1e-13, long past the stop) is floored
SILOG_VARIANCE_FOCUS = 0.85
DEPTH_EPS = 1e-7  # added to the rendered depth before its logarithm, as the reference


@dataclass(frozen=True)
class RenderConfig:
    """The reference's NerfHead arguments (configs/renderocc/renderocc-7frame*.py: radius 39, depth
    supervision on, loss weights 1.0 / 1.0 for pmj's 2D-only training and 0.1 / 0.1 with the 3D loss in
    the seed's UniOcc-style configs; the regularisers 0.01 each)."""

    radius: float = 39.0  # metres: the inner (uniformly sampled) ball around the grid's centre
    step_size: float = 0.5  # inner sample spacing in voxels; also the Raw2Alpha interval (DVGO's)
    use_depth_sup: bool = True
    balance_cls_weight: bool = True  # weight the semantic loss by 1 / log(frequency)
    weight_depth: float = 1.0
    weight_semantic: float = 1.0
    weight_entropy_last: float = 0.01
    weight_distortion: float = 0.01
    alpha_init: float = 1e-6  # the alpha of a zero raw density: act_shift = log(1 / (1 - a) - 1)
    fast_color_thres: float = 1e-7  # samples whose alpha, or weight, is at most this are dropped


@dataclass
class RenderedRays:
    """One grid's rendering of R rays; S = the samples of the longest ray after skipping.

    `weights`, `t` and `s` are padded: samples past a ray's own count have weight 0.
    """

    weights: Tensor  # R x S compositing weights (0 where skipped, early-stopped or below the threshold)
    t: Tensor  # R x S distance along the ray in radii (uncontracted)
    alphainv_last: Tensor  # R transmittance left after the last composited sample
    depth: Tensor  # R metres along the ray
    semantics: Tensor  # R x C weighted sums of the semantic logits


def raw_to_thickness(density: Tensor, shift: Tensor, interval: float) -> Tensor:
    """DVGO's Raw2Alpha in optical thickness: a sample stops alpha = 1 - (1 + exp(density + shift))^-interval
    of the light, i.e. alpha = 1 - exp(-thickness) with thickness = interval softplus(density + shift).

    softplus keeps it finite for any density (the CUDA kernel's exp may overflow to inf; its clamp at
    1e10 in the backward only avoids inf * 0); autograd's gradient of alpha is the kernel's,
    interval sigmoid(density + shift) (1 - alpha).
    """
    return interval * F.softplus(density + shift)


def alphas_to_weights(thickness: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """DVGO's Alphas2Weights over R x S sample thicknesses (samples in ray order, 0 for samples that
    leave the ray), returning what its kernel returns: weights T_i alpha_i, the transmittances
    T_i = prod_{j<i} (1 - alpha_j) (R x S), and the transmittance left after the last composited sample
    (R).

    The CUDA kernel walks each ray and stops after the sample that brings T below 1e-3; since T only
    falls, sample i is composited exactly when T_i >= 1e-3. The stop is a mask held constant in the
    backward, as the kernel's backward treats it, so the gradients are the kernel's. T is exp of an
    exclusive cumulative sum of thicknesses rather than a cumulative product of (1 - alpha): the product
    runs on past the stop into subnormal floats (~1e-40), which slow every op that touches them tenfold
    (and so do their products with small alphas: T is floored at 1e-13, long past the stop).
    """
    alpha = -torch.expm1(-thickness)
    before = torch.cumsum(thickness, dim=-1) - thickness  # optical depth in front of each sample
    transmittance = torch.exp(-before.clamp(max=LOG_TRANSMITTANCE_FLOOR))
    composited = before.detach() <= -math.log(EARLY_STOP_TRANSMITTANCE)
    weights = torch.where(composited, transmittance * alpha, 0.0)
    alphainv_last = torch.exp(-torch.where(composited, thickness, 0.0).sum(dim=-1))
    return weights, transmittance, alphainv_last


def trilinear(grid: Tensor, coords: Tensor) -> Tensor:
    """Trilinear interpolation of an X x Y x Z x C grid at P grid_sample coordinates (x, y, z) in [-1, 1]
    between the grid's outer faces (align_corners=False: voxel centres at their true positions), zero
    beyond the grid (padding "zeros"): P x C. grid_sample reads D x H x W = Z x Y x X, so the grid is
    handed over transposed rather than every point's coordinates reversed."""
    volume = grid.permute(3, 2, 1, 0)[None]  # 1 x C x Z x Y x X
    values = F.grid_sample(volume, coords.view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return values.view(grid.shape[-1], -1).T


def silog_loss(estimate: Tensor, target: Tensor) -> Tensor:
    """Scale-invariant log loss of positive depths: sqrt(mean d^2 - 0.85 mean(d)^2), d = log est - log gt."""
    d = torch.log(estimate) - torch.log(target)
    return torch.sqrt((d**2).mean() - SILOG_VARIANCE_FOCUS * d.mean() ** 2)


def distortion_loss(weights: Tensor, s: Tensor, interval: float) -> Tensor:
    """Mip-NeRF 360's distortion loss in its O(S) form (torch_efficient_distloss), over R x S weights at
    normalised distances s (ascending along each ray), averaged over the rays:
    sum_{i,j} w_i w_j |s_i - s_j| + sum_i w_i^2 interval / 3. The prefix sums run along each padded row;
    padded samples have weight 0 and add nothing. Like the reference's, its gradient reaches the weights
    only (s is geometry)."""
    ws = weights * s
    w_before = torch.cumsum(weights, dim=-1) - weights
    ws_before = torch.cumsum(ws, dim=-1) - ws
    pairs = 2.0 * weights * (s * w_before - ws_before)
    own = weights.pow(2) * (interval / 3.0)
    return (pairs + own).sum() / weights.shape[0]


def binary_entropy(p: Tensor) -> Tensor:
    """Mean binary entropy of probabilities, clamped to [1e-6, 1 - 1e-6] as the reference does."""
    p = p.clamp(1e-6, 1.0 - 1e-6)
    return -(p * torch.log(p) + (1.0 - p) * torch.log(1.0 - p)).mean()


def renderocc_class_weights(num_classes: int = 17) -> Tensor:
    """1 / log(frequency + 0.001) of pmj's table, float32 (the NerfHead's `class_weights`)."""
    frequencies = torch.tensor(RENDEROCC_CLASS_FREQUENCIES[:num_classes], dtype=torch.float64)
    return (1.0 / torch.log(frequencies + 0.001)).float()


def sample_distances(n_inner: int) -> Tensor:
    """Distances along a unit ray in radii: n_inner midpoints over [0, 2] (the ball's diameter; half a
    voxel apart for the reference's step, 391 of them for Occ3D), then n_inner // 15 midpoints of
    2 / linspace(1, 1/64) out to 128 radii."""
    n_outer = n_inner // OUTER_SAMPLES_DIVISOR
    inner = torch.linspace(0, 2, n_inner + 1)
    outer = 2 / torch.linspace(1, 1 / OUTER_T_END, n_outer + 1)
    return torch.cat([(inner[1:] + inner[:-1]) * 0.5, (outer[1:] + outer[:-1]) * 0.5])


class NerfHead(nn.Module):
    """The rendering head: voxel density and semantics along rays -> the four rendering losses.

    Args:
        grid: the output grid the voxels fill (Occ3D: [-40, 40) x [-40, 40) x [-1, 5.4) m, 0.4 m).
        config: radius, step and the loss weights.
        num_classes: semantic channels rendered (17: the classes without `free`).
    """

    def __init__(self, grid: GridSpec, config: RenderConfig = RenderConfig(), num_classes: int = 17) -> None:
        super().__init__()
        self.config = config
        lower = torch.tensor(grid.range_m[:3], dtype=torch.float32)
        upper = torch.tensor(grid.range_m[3:], dtype=torch.float32)
        # Scalars in numpy float32, the reference's tensor arithmetic (and no tensor reads, so the head
        # also builds on the meta device): bg_len = (80 // 2 - 39) / 39 = 1/39, the shell's width.
        extent_x, radius_f32 = np.float32(grid.x_range[1] - grid.x_range[0]), np.float32(config.radius)
        self.bg_len = float((extent_x // 2 - radius_f32) / radius_f32)
        self.world_len = round(float(extent_x) / grid.voxel_size)  # the reference hard-codes 200
        two, bg_len, step = np.float32(2), np.float32(self.bg_len), np.float32(config.step_size)
        n_inner = int(two / (two + two * bg_len) * np.float32(self.world_len) / step) + 1
        centre = (lower + upper) * 0.5
        radius = torch.full((3,), config.radius)
        self.register_buffer("scene_center", centre)
        self.register_buffer("scene_radius", radius)
        # The grid's outer faces in normalised coordinates, sampled with align_corners=False so voxel
        # centres sit where the labels put them. The reference stores z as +-6.4/80 = +-0.08 (3.12 m, not
        # the grid's 3.2 m) and samples with align_corners=True (voxel 0's centre at -40 m): 0.1-0.2 m off.
        self.register_buffer("xyz_min", (lower - centre) / radius)
        self.register_buffer("xyz_max", (upper - centre) / radius)
        shift = np.log(1 / (1 - config.alpha_init) - 1)
        self.register_buffer("act_shift", torch.tensor([shift], dtype=torch.float32))
        # Not persistent (the reference keeps them out of its state_dict): sample distances and weights.
        self.register_buffer("t_samples", sample_distances(n_inner), persistent=False)
        weights = renderocc_class_weights(num_classes) if config.balance_cls_weight \
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
        points = origin[:, None, :] + unit[:, None, :] * self.t_samples[None, :, None]
        norm = points.norm(dim=-1, keepdim=True)
        inner = norm <= 1
        points = torch.where(inner, points, points / norm * ((1 + self.bg_len) - self.bg_len / norm))
        keep = inner[..., 0].clone()
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
        return (points - self.xyz_min) / (self.xyz_max - self.xyz_min) * 2 - 1

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
        """The four rendering losses of one grid's rays against their labels (range along the ray in
        metres, class or IGNORE_INDEX), weighted, under the reference's names."""
        config = self.config
        losses = {}
        if config.use_depth_sup:
            losses["loss_render_depth"] = config.weight_depth * silog_loss(rendered.depth + DEPTH_EPS, depth)
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
        return losses

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
                rendered = self.render(density[b].float(), semantic[b].float(), rays.origins[b][valid],
                                       rays.directions[b][valid], bda[b])
                losses = self.losses(rendered, rays.depth[b][valid], rays.semantics[b][valid])
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + value / batch
        return totals


def density_at_voxel_opacity(opacity: float, config: RenderConfig = RenderConfig()) -> float:
    """The raw density at which a voxel stops `opacity` of the light crossing it (Raw2Alpha over the voxel's
    length: 1 - (1 + exp(density + shift))^-1, whatever the step): logit(opacity) - shift. pmj RenderOcc's
    test threshold 8.5 is a voxel stopping 0.5 % of the light."""
    return math.log(opacity / (1 - opacity)) - math.log(1 / (1 - config.alpha_init) - 1)


def density_from_class_logits(logits: Tensor, shift: Tensor) -> Tensor:
    """A raw density for Raw2Alpha from K-class occupancy logits whose last class is `free`:
    log(p_occupied / p_free) - shift, so that alpha = 1 - p_free^interval: with samples half a voxel
    apart, the light crossing a whole voxel is p_free. Heads with one softmax over the classes and
    `free` (BEVDetOcc, FlashOcc) render through it, and their argmax stays the occupancy rule."""
    return torch.logsumexp(logits[..., :-1], dim=-1) - logits[..., -1] - shift
