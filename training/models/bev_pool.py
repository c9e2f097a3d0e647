"""BEV pooling: the sum over frustum points of depth probability x image feature into their voxel.

This is the computation of the reference BEVPoolv2 CUDA kernel, written with standard torch ops
so that it trains on any device and exports to plain ONNX. The cells come from each frame's
calibration inside the exported graph, so nothing about them can be precomputed at export time.

Three formulations of the same sum, each `(depth, feat, cell, num_cells) -> num_cells x C`:
- `sum_index_add`: training and eager inference. The ONNX exporter cannot export `index_add_`
  faithfully, and `index_put_(accumulate=True)` exports to ScatterND without a reduction, which
  silently drops duplicate indices.
- `sum_scatter_elements`, exported for TensorRT: one 1-D ScatterElements(reduction="add") over the
  P*C elements; exact on duplicates, imported by TensorRT 10 (its built-in plugin). ONNX Runtime's
  CPU kernel is single-threaded and slow on it (0.2-0.3 s for the flashocc-r50 frustum).
- `sum_sorted_prefix`, exported for ONNX Runtime: sort the points by cell (TopK), prefix-sum the
  sorted rows and take differences at the cell boundaries; 2-3x faster there, but TensorRT imports
  neither a TopK over 371k elements nor float64.
`export_target(runtime)` picks what `bev_pool` exports for a runtime (occupancy.model_repository.Runtime:
TensorRT, or ONNX Runtime in-process or in Triton's python backend), and `onnx_export_target()` tells
other runtime-specific formulations (the heads' Softplus) which one is in progress;
benchmarks/bev_pool_results.md has the numbers.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from occupancy.model_repository import Runtime

_export_target: ContextVar[Runtime] = ContextVar("bev_pool_export_target", default=Runtime.ONNXRUNTIME)
# Rows per block of the two-level prefix sum (see sum_sorted_prefix).
PREFIX_BLOCK = 128


@contextmanager
def export_target(runtime: Runtime) -> Iterator[None]:
    """Within this block, ONNX exports of `bev_pool` use the formulation suited to `runtime`."""
    token = _export_target.set(Runtime(runtime).graph)
    try:
        yield
    finally:
        _export_target.reset(token)


def onnx_export_target() -> Runtime | None:
    """The runtime the ONNX export in progress is for (its graph flavour); None outside an export."""
    return _export_target.get() if torch.onnx.is_in_onnx_export() else None


def flat_cells(voxel_index: Tensor, grid_shape: tuple[int, int, int]) -> tuple[Tensor, int | Tensor]:
    """Flat cell per frustum point, B*N*D*H*W int64, and the number of cells, B * (X*Y*Z + 1).

    Frame b's cells are b * (X*Y*Z + 1) + (z * Y + y) * X + x; each frame has one spare cell last,
    which takes its points outside the grid and is dropped after the sum.
    """
    batch = voxel_index.shape[0]
    size_x, size_y, size_z = grid_shape
    x, y, z = voxel_index.unbind(-1)
    inside = (x >= 0) & (x < size_x) & (y >= 0) & (y < size_y) & (z >= 0) & (z < size_z)
    spare = size_x * size_y * size_z
    cell = torch.where(inside, (z * size_y + y) * size_x + x, torch.full_like(x, spare))
    batch_offset = torch.arange(batch, device=voxel_index.device).view(batch, 1, 1, 1, 1) * (spare + 1)
    return (cell + batch_offset).reshape(-1), batch * (spare + 1)


def weighted_rows(depth: Tensor, feat: Tensor) -> Tensor:
    """P x C, P = B*N*D*H*W: each frustum point's feature times its depth probability."""
    channels = feat.shape[2]
    return (depth.unsqueeze(-1) * feat.permute(0, 1, 3, 4, 2).unsqueeze(2)).reshape(-1, channels)


def sum_index_add(depth: Tensor, feat: Tensor, cell: Tensor, num_cells: int | Tensor) -> Tensor:
    """num_cells x C sums with `index_add_` (training; not exportable)."""
    rows = weighted_rows(depth, feat)
    return rows.new_zeros(num_cells, rows.shape[1]).index_add_(0, cell, rows)


def sum_scatter_elements(depth: Tensor, feat: Tensor, cell: Tensor, num_cells: int | Tensor) -> Tensor:
    """num_cells x C sums as one 1-D ScatterElements(add): element (p, c) goes to cell[p] * C + c.

    The flat form runs 1.7-2.5x faster in ONNX Runtime than a P x C scatter along axis 0.
    """
    rows = weighted_rows(depth, feat)
    channels = rows.shape[1]
    index = cell.unsqueeze(1) * channels + torch.arange(channels, device=cell.device)
    pooled = rows.new_zeros(num_cells * channels)
    return pooled.scatter_add(0, index.reshape(-1), rows.reshape(-1)).view(-1, channels)


def sum_sorted_prefix(depth: Tensor, feat: Tensor, cell: Tensor, num_cells: int | Tensor) -> Tensor:
    """num_cells x C sums from prefix sums over the points sorted by cell.

    Cell c's points occupy sorted slots [start_c, end_c) (counts by a scalar scatter, exact in int64),
    and its sum is prefix(end_c) - prefix(start_c). A float32 prefix over 371k rows would cancel
    catastrophically (error ~1e-3), so the prefix is two-level: float32 within blocks of PREFIX_BLOCK
    rows, float64 over the block totals. The error is then that of summing PREFIX_BLOCK float32 rows.
    Rows are gathered from the small N*H*W x C feature table after sorting, so the P x C tensor is
    written once.
    """
    batch, cams, bins, height, width = depth.shape
    channels = feat.shape[2]
    points = cell.shape[0]
    blocks = points // PREFIX_BLOCK + 1
    table = feat.permute(0, 1, 3, 4, 2).reshape(-1, channels)
    table = torch.cat((table, table.new_zeros(1, channels)))  # last row: zero, for padding slots
    pixel = torch.arange(batch * cams * height * width, device=cell.device)
    pixel = pixel.view(batch, cams, 1, height, width)
    pixel = pixel.expand(batch, cams, bins, height, width).reshape(-1)  # each point's row of `table`
    order = torch.argsort(cell)
    # Slot j holds sorted point j - 1, so an inclusive prefix at slot j sums the points before j;
    # slot 0 and the tail that fills the last block are zero rows.
    pad = torch.full((1,), table.shape[0] - 1, dtype=torch.int64, device=cell.device)
    tail = blocks * PREFIX_BLOCK - points - 1
    slot_pixel = torch.cat((pad, pixel[order], pad.expand(tail)))
    slot_depth = torch.cat((depth.new_zeros(1), depth.reshape(-1)[order], depth.new_zeros(1).expand(tail)))
    slots = (table[slot_pixel] * slot_depth.unsqueeze(1)).view(blocks, PREFIX_BLOCK, channels)
    within = slots.cumsum(1)
    totals = within[:, -1].double()
    before = totals.cumsum(0) - totals  # float64 sum of all blocks before each block
    within = within.view(-1, channels)
    counts = torch.zeros(num_cells, dtype=torch.int64, device=cell.device)
    counts = counts.scatter_add(0, cell, torch.ones_like(cell))
    ends = counts.cumsum(0)
    starts = ends - counts
    across = before[ends // PREFIX_BLOCK] - before[starts // PREFIX_BLOCK]
    return across.to(feat.dtype) + (within[ends] - within[starts])


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
    cell, cells = flat_cells(voxel_index, grid_shape)
    pool = {None: sum_index_add, Runtime.TENSORRT: sum_scatter_elements,
            Runtime.ONNXRUNTIME: sum_sorted_prefix}[onnx_export_target()]
    pooled = pool(depth, feat, cell, cells).view(batch, -1, channels)[:, :-1]
    return pooled.reshape(batch, size_z, size_y, size_x, channels).permute(0, 4, 1, 2, 3).contiguous()
