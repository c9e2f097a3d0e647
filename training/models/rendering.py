"""Volume rendering in standard torch ops: the arithmetic of RenderOcc's NerfHead (pmj110119/RenderOcc
mmdet3d/models/nerf/; the head itself, with its buffers, is training/models/nerf_head.py).

The voxel outputs, density (raw, before the activation) and 17 semantic logits, are sampled
trilinearly along camera rays, composited front to back with DVGO's Raw2Alpha / Alphas2Weights, and
compared with per-pixel labels: SILog on the rendered depth, class-weighted cross-entropy on the
rendered semantics, the entropy of each ray's last transmittance and DVGO's distortion loss; and, ours,
the weight each ray composites near its labelled range (`surface_loss`).

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

import torch
import torch.nn.functional as F
from torch import Tensor

OUTER_SAMPLES_DIVISOR = 15  # N_outer = N_inner // 15 (sample_ray's hard-coded 15)
OUTER_T_END = 64.0  # outer samples at 2 / linspace(1, 1/64): t up to 128 radii
SKIP_DISTANCE_FACTOR = 0.95  # a contracted sample is kept once the path since the last one exceeds 0.95 steps
EARLY_STOP_TRANSMITTANCE = 1e-3  # alpha2weight_cuda_kernel: compositing stops below this transmittance
LOG_TRANSMITTANCE_FLOOR = 30.0  # optical depth beyond which T (< 1e-13, long past the stop) is floored
SILOG_VARIANCE_FOCUS = 0.85
DEPTH_EPS = 1e-7  # added to the rendered depth before its logarithm, as the reference
SURFACE_WEIGHT_FLOOR = 1e-4  # added to a ray's weight near its surface before the logarithm


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


def surface_loss(weights: Tensor, distance_m: Tensor, depth_m: Tensor, margin_m: float) -> Tensor:
    """Mean over R rays of -log(the weight each composites within `margin_m` of its labelled range): the
    ray should stop at its surface, neither in the free space before it nor behind it. The terminating
    part of DS-NeRF's and Urban Radiance Fields' line-of-sight losses, as a window's likelihood. Where the
    window holds no weight at all (a surface outside the grid), the loss saturates at -log of the floor.

    Args:
        weights: R x S compositing weights; distance_m: R x S their distances along the ray (metres);
        depth_m: R labelled ranges (finite)."""
    near = (distance_m - depth_m[:, None]).abs() <= margin_m
    return -torch.log((weights * near).sum(dim=-1) + SURFACE_WEIGHT_FLOOR).mean()


def binary_entropy(p: Tensor) -> Tensor:
    """Mean binary entropy of probabilities, clamped to [1e-6, 1 - 1e-6] as the reference does."""
    p = p.clamp(1e-6, 1.0 - 1e-6)
    return -(p * torch.log(p) + (1.0 - p) * torch.log(1.0 - p)).mean()


def sample_distances(n_inner: int) -> Tensor:
    """Distances along a unit ray in radii: n_inner midpoints over [0, 2] (the ball's diameter; half a
    voxel apart for the reference's step, 391 of them for Occ3D), then n_inner // 15 midpoints of
    2 / linspace(1, 1/64) out to 128 radii."""
    n_outer = n_inner // OUTER_SAMPLES_DIVISOR
    inner = torch.linspace(0, 2, n_inner + 1)
    outer = 2 / torch.linspace(1, 1 / OUTER_T_END, n_outer + 1)
    return torch.cat([(inner[1:] + inner[:-1]) * 0.5, (outer[1:] + outer[:-1]) * 0.5])


def density_at_voxel_opacity(opacity: float, alpha_init: float = 1e-6) -> float:
    """The raw density at which a voxel stops `opacity` of the light crossing it (Raw2Alpha over the voxel's
    length: 1 - (1 + exp(density + shift))^-1, whatever the step): logit(opacity) - shift. pmj RenderOcc's
    test threshold 8.5 is a voxel stopping 0.5 % of the light."""
    return math.log(opacity / (1 - opacity)) - math.log(1 / (1 - alpha_init) - 1)


def density_from_class_logits(logits: Tensor, shift: Tensor) -> Tensor:
    """A raw density for Raw2Alpha from K-class occupancy logits whose last class is `free`:
    log(p_occupied / p_free) - shift, so that alpha = 1 - p_free^interval: with samples half a voxel
    apart, the light crossing a whole voxel is p_free. Heads with one softmax over the classes and
    `free` (BEVDetOcc, FlashOcc) render through it, and their argmax stays the occupancy rule."""
    return torch.logsumexp(logits[..., :-1], dim=-1) - logits[..., -1] - shift
