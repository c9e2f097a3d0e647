"""Lift-Splat view transformer: image features -> per-pixel depth distribution -> BEV voxel features.

Follows BEVDet/FlashOCC's `LSSViewTransformer` (projects/mmdet3d_plugin/models/necks/view_transformer.py):
same parameter names (`depth_net`), the same frustum pixel coordinates, the same camera geometry
and the same integer voxel index, so reference checkpoints load and pool into the same cells.

Frames: frustum points start in input-image pixels (u, v) with a metric depth d along the camera's
z axis, are carried back to source-image pixels (inverse post_rot/post_tran), into the camera frame
(inverse intrinsics), into the ego frame (sensor2ego) and through the BEV augmentation (bda).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.batch import CameraBatch
from training.models.bev_pool import bev_pool

Axis = tuple[float, float, float]  # (lower, upper, step) in metres


@dataclass(frozen=True)
class VoxelGridConfig:
    """The grid the view transformer pools into, ego frame; the reference's `grid_config` x/y/z.

    FlashOcc pools into one 6.4 m tall slice (z step 6.4), BEVDetOcc into the 16 Occ3D slices.
    """

    x: Axis = (-40.0, 40.0, 0.4)
    y: Axis = (-40.0, 40.0, 0.4)
    z: Axis = (-1.0, 5.4, 0.4)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Cells along x, y, z."""
        return tuple(round((hi - lo) / step) for lo, hi, step in (self.x, self.y, self.z))


@dataclass(frozen=True)
class DepthBins:
    """Candidate depths along each pixel's ray, metres: torch.arange(lower, upper, step)."""

    lower: float = 1.0
    upper: float = 45.0
    step: float = 0.5

    @property
    def count(self) -> int:
        """D, the number of depth bins (88 for the default [1, 45) at 0.5 m)."""
        return len(torch.arange(self.lower, self.upper, self.step))


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """Cross product over the last axis, in elementwise ops (ONNX has no cross-product operator)."""
    a0, a1, a2 = a.unbind(-1)
    b0, b1, b2 = b.unbind(-1)
    return torch.stack((a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0), -1)


def inverse_3x3(matrix: Tensor) -> Tensor:
    """Inverse of ... x 3 x 3 matrices from cofactors: plain elementwise ops that export to any runtime
    (ONNX has no matrix inverse). The inverse's columns are cross products of the rows / determinant."""
    r0, r1, r2 = matrix.unbind(-2)
    cofactors = torch.stack((_cross(r1, r2), _cross(r2, r0), _cross(r0, r1)), -2)
    determinant = (r0 * cofactors[..., 0, :]).sum(-1)
    return cofactors.transpose(-1, -2) / determinant[..., None, None]


def _multiply_add_rows(matrix: Tensor, vector: Tensor) -> Tensor:
    """matrix @ vector over the last axes, written as explicit multiply-adds.

    A MatMul rounds differently in PyTorch and in ONNX Runtime, and a frustum point on a voxel boundary
    then lands in different voxels; separate Mul and Add ops round identically in both.
    """
    x, y, z = vector.unbind(-1)
    return torch.stack([row[..., 0] * x + row[..., 1] * y + row[..., 2] * z for row in matrix.unbind(-2)], -1)


def transform(matrix: Tensor, points: Tensor) -> Tensor:
    """Applies B x N x 3 x 3 matrices to B x N x D x H x W x 3 points."""
    return _multiply_add_rows(matrix[:, :, None, None, None], points)


def matmul_3x3(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for ... x 3 x 3 matrices, column by column in the same exportable multiply-adds."""
    return torch.stack([_multiply_add_rows(a, column) for column in b.unbind(-1)], -1)


def downsample_gt_depth(gt_depth: Tensor, downsample: int) -> Tensor:
    """The nearest depth of each downsample x downsample patch: B x N x H x W -> B x N x H/ds x W/ds
    metres, 0 where the patch has no point (0 marks "no point" in the input too). BEVDepth's
    `get_downsampled_gt_depth` before its binning."""
    b, n, height, width = gt_depth.shape
    patches = gt_depth.view(b, n, height // downsample, downsample, width // downsample, downsample)
    patches = torch.where(patches > 0, patches, torch.full_like(patches, torch.inf))
    nearest = patches.amin(dim=(3, 5))
    return torch.where(torch.isinf(nearest), torch.zeros_like(nearest), nearest)


def depth_bin_targets(depth: Tensor, depth_bins: DepthBins) -> Tensor:
    """One-hot depth bins ... x D (float) of depths ... in metres; all zeros where the depth is 0 or
    outside the bins. Bin i covers [d_i, d_i + step) with d_i the frustum's i-th depth, the
    reference's `(d - (lower - step)) / step` truncated, with bin 0 of its D + 1 dropped."""
    count = depth_bins.count
    position = (depth - (depth_bins.lower - depth_bins.step)) / depth_bins.step
    valid = (position >= 1) & (position < count + 1)
    index = torch.where(valid, position, torch.zeros_like(position)).long()
    return F.one_hot(index, count + 1)[..., 1:].float()


def depth_loss(depth: Tensor, gt_depth: Tensor, depth_bins: DepthBins, downsample: int) -> Tensor:
    """BEVDepth's `get_depth_loss` without its weight: binary cross-entropy between the predicted
    depth probabilities and the one-hot bins of the nearest point, summed over bins and averaged
    over the feature pixels that have a target (pixels without one give no gradient).

    Args:
        depth: B x N x D x fH x fW softmax probabilities (the view transformer's second output).
        gt_depth: B x N x H x W depths at input resolution, metres along the optical axis, 0 = no point.
    """
    target = depth_bin_targets(downsample_gt_depth(gt_depth, downsample), depth_bins)  # B N fH fW D
    prediction = depth.float().permute(0, 1, 3, 4, 2)
    foreground = target.amax(-1) > 0
    # BCE on probabilities is unsafe under autocast; it runs in fp32.
    with torch.autocast(depth.device.type, enabled=False):
        loss = F.binary_cross_entropy(prediction[foreground], target[foreground], reduction="sum")
    return loss / foreground.sum().clamp(min=1)


def depth_probabilities(logits: Tensor) -> Tensor:
    """Softmax over the depth bins (dim 1), in fp32 under autocast: bf16 rounds a confident bin to exactly
    1 (the others to 0), and the depth loss's BCE gradient then divides by its 1e-12 floor: a bf16 CPU
    run blew up at iteration 700."""
    return logits.float().softmax(dim=1)


class LSSViewTransformer(nn.Module):
    """Predicts a depth distribution and a context feature per image-feature pixel and splats
    their outer product into a voxel grid (BEVPoolv2's sum, through `bev_pool`).

    Args:
        grid: the voxel grid pooled into.
        depth_bins: candidate depths.
        input_size: (H, W) of the network's input images, pixels.
        downsample: input pixels per feature pixel (16).
        in_channels: channels of the image features.
        out_channels: C, channels of the BEV features per height slice.
        collapse_z: stack the Z slices into channels (B x Z*C x Y x X) instead of returning
            B x C x Z x Y x X.
    """

    def __init__(
        self,
        grid: VoxelGridConfig,
        depth_bins: DepthBins,
        input_size: tuple[int, int],
        downsample: int = 16,
        in_channels: int = 256,
        out_channels: int = 64,
        collapse_z: bool = True,
        depth_net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.grid_shape = grid.shape
        self.downsample = downsample
        self.out_channels = out_channels
        self.collapse_z = collapse_z
        self.depth_bins = depth_bins
        self.D = depth_bins.count
        # Not in the state dict: the reference keeps these as plain attributes.
        lower, interval = [[axis[i] for axis in (grid.x, grid.y, grid.z)] for i in (0, 2)]
        self.register_buffer("grid_lower_bound", torch.tensor(lower), persistent=False)
        self.register_buffer("grid_interval", torch.tensor(interval), persistent=False)
        frustum = self.create_frustum(depth_bins, input_size, downsample)
        self.register_buffer("frustum", frustum, persistent=False)
        # LSS: one 1x1 conv whose first D output channels are depth logits, the next C the context feature.
        self.depth_net = depth_net or nn.Conv2d(in_channels, self.D + out_channels, kernel_size=1, padding=0)

    def create_frustum(self, depth_bins: DepthBins, input_size: tuple[int, int], downsample: int) -> Tensor:
        """D x fH x fW x 3 points (u, v, d): input-image pixel coordinates and depth in metres.

        Feature pixel centres are spread evenly from pixel 0 to the last pixel (linspace), as the
        reference does, rather than at the centres of the 16 x 16 pixel blocks.
        """
        height, width = input_size
        feat_h, feat_w = height // downsample, width // downsample
        depths = torch.arange(depth_bins.lower, depth_bins.upper, depth_bins.step, dtype=torch.float)
        d = depths.view(-1, 1, 1).expand(-1, feat_h, feat_w)
        u = torch.linspace(0, width - 1, feat_w).view(1, 1, feat_w).expand_as(d)
        v = torch.linspace(0, height - 1, feat_h).view(1, feat_h, 1).expand_as(d)
        return torch.stack((u, v, d), -1)

    def ego_points(self, batch: CameraBatch) -> Tensor:
        """Frustum points in the (BEV-augmented) ego frame, B x N x D x fH x fW x 3 metres.

        The reference's `get_ego_coor`: input pixels -> source pixels -> camera -> ego -> bda.
        """
        # input pixels -> source pixels: undo resize/crop/flip/rotation; d is unchanged.
        points = self.frustum - batch.post_trans[:, :, None, None, None, :]
        points = transform(inverse_3x3(batch.post_rots), points)
        # (u, v, d) -> (u d, v d, d), then camera rays scaled by depth -> ego.
        points = torch.cat((points[..., :2] * points[..., 2:3], points[..., 2:3]), -1)
        ego_T_pixel = matmul_3x3(batch.sensor2ego[..., :3, :3], inverse_3x3(batch.intrinsics))
        points = transform(ego_T_pixel, points) + batch.sensor2ego[:, :, None, None, None, :3, 3]
        return transform(batch.bda[:, None].expand_as(batch.post_rots), points)

    def voxel_index(self, points: Tensor) -> Tensor:
        """Integer (x, y, z) cell of each ego point, ... x 3 int64.

        Truncation toward zero (`.long()`), as the reference: a point up to one cell below the
        lower bound still lands in cell 0; `bev_pool` drops the rest.
        """
        return ((points - self.grid_lower_bound) / self.grid_interval).long()

    def forward(self, image_feats: Tensor, batch: CameraBatch) -> tuple[Tensor, Tensor]:
        """Lift and splat.

        Args:
            image_feats: B x N x C_in x fH x fW, the image neck's output.
            batch: the camera geometry (images are not used here).

        Returns:
            bev_feat: B x Z*C x Y x X with `collapse_z` (Z-major channel order: slice z holds
                channels z*C .. z*C+C-1), else B x C x Z x Y x X.
            depth: B x N x D x fH x fW, softmax depth probabilities.
        """
        b, n, c_in, feat_h, feat_w = image_feats.shape
        x = self.depth_net(image_feats.reshape(b * n, c_in, feat_h, feat_w))
        depth = depth_probabilities(x[:, : self.D]).view(b, n, self.D, feat_h, feat_w)
        context = x[:, self.D : self.D + self.out_channels].view(b, n, self.out_channels, feat_h, feat_w)
        return self.splat(depth, context, batch), depth

    def splat(self, depth: Tensor, context: Tensor, geometry: CameraBatch) -> Tensor:
        """Pools depth (B x N x D x fH x fW) times context (B x N x C x fH x fW) into the grid, with the
        frustum placed by `geometry` (its `sensor2ego` says where the cameras sit in the BEV's ego frame).

        Returns B x Z*C x Y x X with `collapse_z` (Z-major channel order: slice z holds channels
        z*C .. z*C+C-1), else B x C x Z x Y x X.
        """
        voxel_index = self.voxel_index(self.ego_points(geometry))
        bev_feat = bev_pool(depth, context, voxel_index, self.grid_shape)  # B x C x Z x Y x X
        if self.collapse_z:
            bev_feat = bev_feat.permute(0, 2, 1, 3, 4).flatten(1, 2)
        return bev_feat

    def get_depth_loss(self, gt_depth: Tensor, depth: Tensor) -> Tensor:
        """`depth_loss` of `forward`'s depth against B x N x H x W input-resolution depths (0 = none)."""
        return depth_loss(depth, gt_depth, self.depth_bins, self.downsample)
