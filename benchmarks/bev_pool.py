"""BEV pooling formulations for the flashocc-r50 frustum: ONNX Runtime (1 and 2 threads) and PyTorch eager.

The frustum is flashocc-r50-256x704's (6 cameras x 88 depth bins x 16 x 44 feature pixels = 371,712
points, 64 channels) pooled into 200 x 200 x 1 cells, with voxel indices from the nuScenes-like rig
(training/export/rig.py) and random depth probabilities and features. Every formulation is a graph
from (depth, feat, voxel_index) to the B x C x Z x Y x X BEV feature, as in the exported model, and
is checked against a float64 sum. Run: `.venv/bin/python -m benchmarks.bev_pool [--repeats 5]`.
"""

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from training.export.rig import nuscenes_like_batch
from training.models.bev_pool import (
    bev_pool,
    flat_cells,
    sum_index_add,
    sum_scatter_elements,
    sum_sorted_prefix,
    weighted_rows,
)
from training.models.configs import build_model, get_config

CONFIG = "flashocc-r50-256x704"
Pool = Callable[[Tensor, Tensor, Tensor, tuple[int, int, int]], Tensor]


def _to_bev(pooled: Tensor, batch: int, grid: tuple[int, int, int]) -> Tensor:
    """batch*(cells+1) x C pooled rows (last row per frame: the spare cell) -> B x C x Z x Y x X."""
    size_x, size_y, size_z = grid
    channels = pooled.shape[1]
    pooled = pooled.view(batch, -1, channels)[:, :-1]
    return pooled.reshape(batch, size_z, size_y, size_x, channels).permute(0, 4, 1, 2, 3)


def _pool(sum_cells: Callable[..., Tensor]) -> Pool:
    """A bev_pool formulation from one of bev_pool.py's `(depth, feat, cell, num_cells)` sums."""
    def pool(depth: Tensor, feat: Tensor, voxel_index: Tensor, grid: tuple[int, int, int]) -> Tensor:
        cell, cells = flat_cells(voxel_index, grid)
        return _to_bev(sum_cells(depth, feat, cell, cells), depth.shape[0], grid)
    return pool


def scatter_2d(depth: Tensor, feat: Tensor, voxel_index: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """ScatterElements(add) of P x C rows with the cell index expanded to P x C (the first export)."""
    cell, cells = flat_cells(voxel_index, grid)
    weighted = weighted_rows(depth, feat)
    index = cell.unsqueeze(1).expand(-1, weighted.shape[1])
    pooled = weighted.new_zeros(cells, weighted.shape[1]).scatter_add(0, index, weighted)
    return _to_bev(pooled, depth.shape[0], grid)


def _scatter_flat(weighted: Tensor, cell: Tensor, cells: int | Tensor, dtype: torch.dtype) -> Tensor:
    """sum_scatter_elements on given rows, with an index of `dtype` (int32: half the index memory)."""
    channels = weighted.shape[1]
    index = (cell.to(dtype).unsqueeze(1) * channels + torch.arange(channels, dtype=dtype)).reshape(-1)
    return weighted.new_zeros(cells * channels).scatter_add(0, index, weighted.reshape(-1)).view(-1, channels)


def scatter_1d_int32(depth: Tensor, feat: Tensor, voxel_index: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """bev_pool's export (1-D ScatterElements over P*C elements) with an int32 index."""
    cell, cells = flat_cells(voxel_index, grid)
    return _to_bev(_scatter_flat(weighted_rows(depth, feat), cell, cells, torch.int32), depth.shape[0], grid)


def scatter_channels_first(depth: Tensor, feat: Tensor, voxel_index: Tensor,
                           grid: tuple[int, int, int]) -> Tensor:
    """ScatterElements(add) along axis 1 of a C x cells tensor: C x P updates, index expanded to C x P."""
    cell, cells = flat_cells(voxel_index, grid)
    weighted = weighted_rows(depth, feat).t()
    index = cell.unsqueeze(0).expand(weighted.shape[0], -1)
    pooled = weighted.new_zeros(weighted.shape[0], cells).scatter_add(1, index, weighted)
    return _to_bev(pooled.t(), depth.shape[0], grid)


def _compacted(depth: Tensor, feat: Tensor, voxel_index: Tensor, grid: tuple[int, int, int]
               ) -> tuple[Tensor, Tensor, int]:
    """Only the points inside the grid (NonZero + Gather): their cells K, weighted rows K x C, cells."""
    cell, cells = flat_cells(voxel_index, grid)
    batch, _, bins, height, width = depth.shape
    keep = (cell % (cells // batch) != cells // batch - 1).nonzero().squeeze(1)  # not the spare cell
    pixel = keep // (bins * height * width) * (height * width) + keep % (height * width)
    rows = feat.permute(0, 1, 3, 4, 2).reshape(-1, feat.shape[2])[pixel]
    return cell[keep], depth.reshape(-1)[keep].unsqueeze(1) * rows, cells


def compact_scatter_2d(depth: Tensor, feat: Tensor, voxel_index: Tensor,
                       grid: tuple[int, int, int]) -> Tensor:
    """As scatter_2d, on the in-grid points only; weights are formed after the gather."""
    cell, weighted, cells = _compacted(depth, feat, voxel_index, grid)
    index = cell.unsqueeze(1).expand(-1, weighted.shape[1])
    pooled = weighted.new_zeros(cells, weighted.shape[1]).scatter_add(0, index, weighted)
    return _to_bev(pooled, depth.shape[0], grid)


def compact_scatter_1d(depth: Tensor, feat: Tensor, voxel_index: Tensor,
                       grid: tuple[int, int, int]) -> Tensor:
    """sum_scatter_elements on the in-grid points only."""
    cell, weighted, cells = _compacted(depth, feat, voxel_index, grid)
    return _to_bev(_scatter_flat(weighted, cell, cells, torch.int64), depth.shape[0], grid)


def compact_scatter_1d_int32(depth: Tensor, feat: Tensor, voxel_index: Tensor,
                             grid: tuple[int, int, int]) -> Tensor:
    """As compact_scatter_1d with an int32 index."""
    cell, weighted, cells = _compacted(depth, feat, voxel_index, grid)
    return _to_bev(_scatter_flat(weighted, cell, cells, torch.int32), depth.shape[0], grid)


FORMULATIONS: dict[str, Pool] = {
    "sorted_prefix": _pool(sum_sorted_prefix),  # bev_pool's export for ONNX Runtime
    "scatter_1d": _pool(sum_scatter_elements),  # bev_pool's export for TensorRT
    "index_add": _pool(sum_index_add),  # bev_pool in training and eager inference; not exportable
    "scatter_2d": scatter_2d,
    "scatter_1d_int32": scatter_1d_int32,
    "scatter_channels_first": scatter_channels_first,
    "compact_scatter_2d": compact_scatter_2d,
    "compact_scatter_1d": compact_scatter_1d,
    "compact_scatter_1d_int32": compact_scatter_1d_int32,
}


EAGER_ONLY = {"index_add"}
POOL_OPS = {"ScatterElements", "ScatterND", "NonZero", "GatherND", "TopK", "CumSum"}


class _Graph(nn.Module):
    def __init__(self, pool: Pool, grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.pool, self.grid = pool, grid

    def forward(self, depth: Tensor, feat: Tensor, voxel_index: Tensor) -> Tensor:
        return self.pool(depth, feat, voxel_index, self.grid)


def frustum_inputs(seed: int = 0) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[int, int, int]]:
    """(depth 1x6x88x16x44 softmax probabilities, feat 1x6x64x16x44, voxel_index 1x6x88x16x44x3), grid."""
    config = get_config(CONFIG)
    view = build_model(config).img_view_transformer
    voxel_index = view.voxel_index(view.ego_points(nuscenes_like_batch(config.input_size, seed=seed)))
    generator = torch.Generator().manual_seed(seed)
    shape = voxel_index.shape[:-1]
    depth = torch.randn(shape, generator=generator).softmax(2)
    feat = torch.randn(shape[0], shape[1], config.bev_channels, *shape[3:], generator=generator)
    return (depth, feat, voxel_index), view.grid_shape


def export(pool: Pool, grid: tuple[int, int, int], inputs: tuple[Tensor, ...]) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(_Graph(pool, grid), inputs, buffer, input_names=["depth", "feat", "voxel_index"],
                          output_names=["bev"], opset_version=17, dynamo=False)
    return buffer.getvalue()


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def onnx_columns(pool: Pool, grid: tuple[int, int, int], inputs: tuple[Tensor, ...], reference: Tensor,
                 repeats: int) -> list[str]:
    """The scatter/sort operators of `pool`'s export, its ONNX Runtime seconds with 1 and 2 intra-op
    threads, and its error relative to the largest reference value."""
    graph = export(pool, grid, inputs)
    ops = sorted({n.op_type for n in onnx.load_from_string(graph).graph.node if n.op_type in POOL_OPS})
    feeds = dict(zip(("depth", "feat", "voxel_index"), (t.numpy() for t in inputs), strict=True))
    columns = [", ".join(ops)]
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        columns.append(f"{median_seconds(lambda s=session: s.run(None, feeds), repeats):.3f}")
    error = float(np.abs(session.run(None, feeds)[0] - reference.numpy()).max() / reference.abs().max())
    return [*columns, f"{error:.1e}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=list(FORMULATIONS), help="these formulations only")
    args = parser.parse_args()
    inputs, grid = frustum_inputs()
    depth, feat, voxel_index = inputs
    reference = bev_pool(depth.double(), feat.double(), voxel_index, grid)
    scale = float(reference.abs().max())
    inside = float(((voxel_index >= 0) & (voxel_index < torch.tensor(grid))).all(-1).float().mean())
    print(f"{CONFIG}: {depth.numel()} points ({inside:.1%} inside the grid), {feat.shape[2]} channels, "
          f"grid {grid}; torch {torch.__version__}, onnxruntime {ort.__version__}, {args.repeats} repeats, "
          f"median seconds; error = max |x - float64 reference| / max |reference| ({scale:.3g})")
    print(f"load average before the run (other processes on this machine): {os.getloadavg()[0]:.1f}")
    print("| formulation | ONNX ops of the sum | ORT 1 thread | ORT 2 threads | "
          "rel. error ORT | eager 1 thread | eager 2 threads | rel. error eager |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, pool in FORMULATIONS.items():
        if args.only and name not in args.only:
            continue
        row = [name] + (["-"] * 4 if name in EAGER_ONLY else onnx_columns(pool, grid, inputs, reference,
                                                                           args.repeats))
        with torch.no_grad():
            for threads in (1, 2):
                torch.set_num_threads(threads)
                seconds = median_seconds(lambda p=pool: p(depth, feat, voxel_index, grid), args.repeats)
                row.append(f"{seconds:.3f}")
            eager = pool(depth, feat, voxel_index, grid).double()
            eager_error = float((eager - reference).abs().max()) / scale
        row.append(f"{eager_error:.1e}")
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
