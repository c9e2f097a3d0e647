"""BEV pooling as exported, for ONNX Runtime (sort + prefix sums) and TensorRT (ScatterElements, reduction
add), against a brute-force loop on indices with many duplicates: a real frustum sends hundreds of points
into one cell, and a scatter without a reduction (ScatterND) keeps only one of them."""

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from occupancy.model_repository import Runtime
from training.export.rig import nuscenes_like_batch
from training.models.bev_pool import bev_pool, export_target
from training.models.configs import build_model, get_config

GRAPH_RUNTIMES = (Runtime.ONNXRUNTIME, Runtime.TENSORRT)  # the two pooling formulations


class Pool(nn.Module):
    def __init__(self, grid_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.grid_shape = grid_shape

    def forward(self, depth: Tensor, feat: Tensor, voxel_index: Tensor) -> Tensor:
        return bev_pool(depth, feat, voxel_index, self.grid_shape)


def loop_pool(depth: Tensor, feat: Tensor, voxel_index: Tensor, grid_shape: tuple[int, int, int]
              ) -> np.ndarray:
    """B x C x Z x Y x X in float64, one frustum point at a time."""
    depth, feat, index = depth.double().numpy(), feat.double().numpy(), voxel_index.numpy()
    batch, cams, bins, height, width = depth.shape
    size_x, size_y, size_z = grid_shape
    out = np.zeros((batch, feat.shape[2], size_z, size_y, size_x))
    for b, n, d, h, w in np.ndindex(batch, cams, bins, height, width):
        x, y, z = index[b, n, d, h, w]
        if 0 <= x < size_x and 0 <= y < size_y and 0 <= z < size_z:
            out[b, :, z, y, x] += depth[b, n, d, h, w] * feat[b, n, :, h, w]
    return out


def export_pool(grid_shape: tuple[int, int, int], example: tuple[Tensor, ...],
                target: Runtime) -> onnx.ModelProto:
    buffer = io.BytesIO()
    names = ["depth", "feat", "voxel_index"]
    with export_target(target):
        torch.onnx.export(Pool(grid_shape), example, buffer, input_names=names, output_names=["bev"],
                          dynamic_axes={name: {0: "batch"} for name in (*names, "bev")}, opset_version=17,
                          dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    ops = [node.op_type for node in model.graph.node]
    assert "ScatterND" not in ops
    if target is Runtime.TENSORRT:
        assert ops.count("ScatterElements") == 1 and "TopK" not in ops
    return model


def run_onnx(model: onnx.ModelProto, depth: Tensor, feat: Tensor, voxel_index: Tensor) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"depth": depth.numpy(), "feat": feat.numpy(), "voxel_index": voxel_index.numpy()}
    return session.run(["bev"], feeds)[0]


@pytest.mark.parametrize("target", GRAPH_RUNTIMES)
def test_exported_pooling_sums_duplicate_indices_exactly(target):
    generator = torch.Generator().manual_seed(0)
    grid = (4, 3, 2)  # 24 cells for 2 x 2 x 6 x 3 x 5 = 360 points: 15 per cell on average
    depth = torch.rand(2, 2, 6, 3, 5, generator=generator)
    feat = torch.randn(2, 2, 7, 3, 5, generator=generator)
    # One in six points lies outside the grid, on every side.
    index = torch.stack([torch.randint(-1, size + 1, depth.shape, generator=generator) for size in grid], -1)
    model = export_pool(grid, (depth, feat, index), target)
    expected = loop_pool(depth, feat, index, grid)
    for b in range(2):  # per frame and as a batch: the batch offset keeps frames apart
        np.testing.assert_allclose(run_onnx(model, depth[b : b + 1], feat[b : b + 1], index[b : b + 1]),
                                   expected[b : b + 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_onnx(model, depth, feat, index), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bev_pool(depth, feat, index, grid).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", GRAPH_RUNTIMES)
def test_exported_pooling_on_the_rig_frustum(target):
    """The demo model's frustum (6 x 44 x 8 x 22 points) with the nuScenes-like rig's voxel indices."""
    view = build_model(get_config("demo-tiny")).img_view_transformer
    batch = nuscenes_like_batch(get_config("demo-tiny").input_size)
    index = view.voxel_index(view.ego_points(batch))
    generator = torch.Generator().manual_seed(1)
    depth = torch.rand(index.shape[:-1], generator=generator)
    feat = torch.randn(1, 6, 4, *index.shape[3:5], generator=generator)
    grid = view.grid_shape
    cells = index[..., 0] + grid[0] * index[..., 1]
    inside = (index >= 0).all(-1) & (index < torch.tensor(grid)).all(-1)
    counts = torch.bincount(cells[inside].flatten())
    assert counts.max() >= 100  # the duplicate-heavy case this test is about
    model = export_pool(grid, (depth, feat, index), target)
    np.testing.assert_allclose(run_onnx(model, depth, feat, index), loop_pool(depth, feat, index, grid),
                               rtol=1e-5, atol=1e-4)
