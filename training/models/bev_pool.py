"""BEV pooling: the sum over frustum points of depth probability x image feature into their voxel.

This is the computation of the reference BEVPoolv2 CUDA kernel, written with standard torch ops
so that it trains on any device and exports to plain ONNX.
"""

import torch
from torch import Tensor


def bev_pool(depth: Tensor, feat: Tensor, voxel_index: Tensor, grid_shape: tuple[int, int, int]) -> Tensor:
    """Pool frustum features into a voxel grid.

    Args:
        depth: B x N x D x H x W depth probabilities per camera, depth bin and feature pixel.
        feat: B x N x C x H x W image features.
        voxel_index: B x N x D x H x W x 3 integer voxel coordinates (x, y, z) of each frustum
            point; points outside the grid are dropped.
        grid_shape: (X, Y, Z) voxels.

    Returns:
        B x C x Z x Y x X, the reference layout (BEVPoolv2 returns it before `collapse_z`).
    """
    batch = depth.shape[0]
    channels = feat.shape[2]
    size_x, size_y, size_z = grid_shape
    x, y, z = voxel_index.unbind(-1)
    inside = (x >= 0) & (x < size_x) & (y >= 0) & (y < size_y) & (z >= 0) & (z < size_z)
    # Flat cell index per point; points outside go to one spare cell that is dropped at the end.
    spare = size_x * size_y * size_z
    cell = torch.where(inside, (z * size_y + y) * size_x + x, torch.full_like(x, spare))
    batch_offset = torch.arange(batch, device=depth.device).view(batch, 1, 1, 1, 1) * (spare + 1)
    cell = (cell + batch_offset).reshape(-1)
    # B x N x D x H x W x C: every frustum point's feature weighted by its depth probability.
    weighted = depth.unsqueeze(-1) * feat.permute(0, 1, 3, 4, 2).unsqueeze(2)
    pooled = weighted.new_zeros(batch * (spare + 1), channels)
    pooled.index_add_(0, cell, weighted.reshape(-1, channels))
    pooled = pooled.view(batch, spare + 1, channels)[:, :spare]
    return pooled.view(batch, size_z, size_y, size_x, channels).permute(0, 4, 1, 2, 3).contiguous()
