"""BEVStereo's temporal stereo: a matching cost per depth hypothesis from the same camera's previous image.

BEVDet dev3.0's `DepthNet.gen_grid` / `calculate_cost_volumn` (FlashOCC
projects/mmdet3d_plugin/models/model_utils/depthnet.py), written in exportable ops (elementwise
multiply-adds, GridSample bilinear with align_corners and zero padding, softmax): every pixel of the
current frame's stride-4 stereo feature, placed at each of the D candidate depths, is projected into
the previous frame of the same camera; the L1 distance between the current feature and the bilinearly
sampled previous one, summed over channels, is the cost of that depth.

Frames: the frustum holds input-image pixels (u, v) and a metric depth d along the current camera's
z axis; `curr2prev` carries current-camera coordinates into the previous camera's (both cameras see
through the same intrinsics and image transform, as the reference's data pipeline copies them).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from training.batch import CameraBatch
from training.models.depth_net import DepthNet
from training.models.view_transformer import (
    DepthBins,
    LSSViewTransformer,
    VoxelGridConfig,
    depth_probabilities,
    inverse_3x3,
    matmul_3x3,
    transform,
)

GROUP_SIZE = 4  # channels sampled per grid_sample call, as the reference (memory, not arithmetic)
BEHIND_DEPTH = 1e-3  # m: points closer than this to the previous camera's plane count as outside
OUTSIDE = -2.0  # a normalised grid coordinate beyond [-1, 1]: zero padding samples 0 there


def sampling_grid(frustum: Tensor, curr2prev: Tensor, intrinsics: Tensor, post_rots: Tensor,
                  post_trans: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Where each (pixel, depth) of the current frame falls in the previous image, as a grid_sample grid.

    Args:
        frustum: D x h x w x 3 (u, v, d): input-image pixels of the stride-4 feature and candidate depths (m).
        curr2prev: B x N x 4 x 4, current camera -> previous camera.
        intrinsics: B x N x 3 x 3, source-image pixels.
        post_rots, post_trans: B x N x 3 x 3, B x N x 3, source pixels -> input pixels.
        image_size: (H, W) of the input image the grid normalises by (4 x the stereo feature's size).

    Returns:
        B*N x D*h x w x 2 normalised (x, y) for align_corners=True; points behind the previous camera
        get (-2, -2), outside the image.
    """
    b, n = curr2prev.shape[:2]
    depth_bins, h, w, _ = frustum.shape
    points = transform(inverse_3x3(post_rots), frustum - post_trans[:, :, None, None, None, :])
    points = torch.cat((points[..., :2] * points[..., 2:3], points[..., 2:3]), -1)  # (u d, v d, d)
    prev_T_pixel = matmul_3x3(curr2prev[..., :3, :3], inverse_3x3(intrinsics))
    points = transform(prev_T_pixel, points) + curr2prev[:, :, None, None, None, :3, 3]  # previous camera
    behind = points[..., 2] < BEHIND_DEPTH
    pixels = transform(intrinsics, points)
    pixels = pixels[..., :2] / pixels[..., 2:3]  # source pixels of the previous image
    rot, tran = post_rots[:, :, None, None, None], post_trans[:, :, None, None, None]
    u = rot[..., 0, 0] * pixels[..., 0] + rot[..., 0, 1] * pixels[..., 1] + tran[..., 0]
    v = rot[..., 1, 0] * pixels[..., 0] + rot[..., 1, 1] * pixels[..., 1] + tran[..., 1]
    height, width = image_size
    grid = torch.stack((u / (width - 1.0) * 2.0 - 1.0, v / (height - 1.0) * 2.0 - 1.0), -1)
    grid = torch.where(behind[..., None], torch.full_like(grid, OUTSIDE), grid)
    return grid.reshape(b * n, depth_bins * h, w, 2)


def cost_volume(curr: Tensor, prev: Tensor, grid: Tensor, depth_bins: int, outside_bias: float) -> Tensor:
    """Depth probabilities from matching costs, B*N x D x h x w.

    Args:
        curr, prev: B*N x C x h x w stereo features of the current and the previous frame.
        grid: `sampling_grid`'s B*N x D*h x w x 2.
        depth_bins: D.
        outside_bias: added to the cost where the sample counts as outside (0: none).

    The cost sums |curr - warped prev| over the first 4 * (C // 4) channels in groups of 4, as the
    reference does (channels beyond the last full group are not used). The reference's test for
    "outside" is that the warped value of the **last group's first channel** is exactly 0, which zero
    padding gives outside the image, and which an in-image zero of that channel (common after a ReLU)
    gives too; we keep that test as it is, since the published checkpoints were trained with it.
    """
    bn, channels, h, w = curr.shape
    if channels < GROUP_SIZE:
        raise ValueError(f"stereo features need at least {GROUP_SIZE} channels, got {channels}")
    cost = curr.new_zeros(bn, depth_bins, h, w)
    for start in range(0, channels // GROUP_SIZE * GROUP_SIZE, GROUP_SIZE):
        group = slice(start, start + GROUP_SIZE)
        warped = F.grid_sample(prev[:, group], grid, mode="bilinear", padding_mode="zeros",
                               align_corners=True)
        warped = warped.view(bn, GROUP_SIZE, depth_bins, h, w)
        cost = cost + (curr[:, group, None] - warped).abs().sum(1)
    if outside_bias:
        cost = torch.where(warped[:, 0] == 0, cost + outside_bias, cost)
    return (-cost).softmax(1)


class LSSViewTransformerBEVStereo(LSSViewTransformer):
    """BEVDet's `LSSViewTransformerBEVStereo`: the LSS view transformer with BEVDepth's camera-aware
    `DepthNet` and BEVStereo's cost volume (`cv_frustum`: the stride-4 frustum the cost volume uses).

    Args (beyond LSSViewTransformer's):
        aspp_mid_channels: the depth net's ASPP branch width (the reference's 96).
        outside_bias: the cost added where a hypothesis falls outside the previous image (5).
        stereo_stride: input pixels per stereo-feature pixel (4: ResNet layer1, Swin stage 0).
    """

    def __init__(self, grid: VoxelGridConfig, depth_bins: DepthBins, input_size: tuple[int, int],
                 downsample: int = 16, in_channels: int = 256, out_channels: int = 80,
                 collapse_z: bool = True, aspp_mid_channels: int = 96, outside_bias: float = 5.0,
                 stereo_stride: int = 4) -> None:
        depth_net = DepthNet(in_channels, out_channels, depth_bins.count, aspp_mid_channels,
                             cost_volume_stride=stereo_stride, feature_stride=downsample)
        super().__init__(grid, depth_bins, input_size, downsample, in_channels, out_channels, collapse_z,
                         depth_net=depth_net)
        self.input_size = tuple(input_size)
        self.outside_bias = outside_bias
        self.stereo_stride = stereo_stride
        self.register_buffer("cv_frustum", self.create_frustum(depth_bins, input_size, stereo_stride),
                             persistent=False)

    def stereo_cost(self, curr: Tensor, prev: Tensor, curr2prev: Tensor, geometry: CameraBatch) -> Tensor:
        """The cost volume of `curr` against `prev` after `cost_volumn_net`, B*N x D x fH x fW.

        Args:
            curr, prev: B*N x C x h x w stereo features of the current and the previous frame.
            curr2prev: B x N x 4 x 4, each current camera -> the same camera in the previous frame.
            geometry: intrinsics and image transform (shared by both frames).
        """
        # As the reference (BEVDet issue 278): no gradient through the matching, and in float32.
        with torch.no_grad(), torch.autocast(curr.device.type, enabled=False):
            image_size = (curr.shape[2] * self.stereo_stride, curr.shape[3] * self.stereo_stride)
            grid = sampling_grid(self.cv_frustum, curr2prev, geometry.intrinsics, geometry.post_rots,
                                 geometry.post_trans, image_size)
            cost = cost_volume(curr.float(), prev.float(), grid, self.D, self.outside_bias)
        return self.depth_net.cost_volumn_net(cost)

    def depth_and_context(self, reduced: Tensor, mlp_input: Tensor, cost: Tensor) -> tuple[Tensor, Tensor]:
        """Depth probabilities B x N x D x fH x fW and context B x N x C x fH x fW of one frame."""
        logits, context = self.depth_net(reduced, mlp_input, cost)
        b, n = mlp_input.shape[:2]
        return (depth_probabilities(logits).view(b, n, *logits.shape[1:]),
                context.view(b, n, *context.shape[1:]))
