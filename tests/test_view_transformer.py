"""BEV pooling and the view transformer's geometry against brute-force references."""

import itertools

import numpy as np
import torch

from training.batch import CameraBatch
from training.models.bev_pool import bev_pool
from training.models.view_transformer import DepthBins, LSSViewTransformer, VoxelGridConfig, inverse_3x3


def test_bev_pool_matches_a_python_loop_with_duplicate_indices():
    gen = torch.Generator().manual_seed(0)
    b, n, d, h, w, c = 2, 2, 5, 3, 4, 3
    grid = (4, 3, 2)
    depth = torch.rand(b, n, d, h, w, generator=gen)
    feat = torch.randn(b, n, c, h, w, generator=gen)
    # A small grid and indices from one below to one above it: many points share a cell, some fall outside.
    index = torch.stack([torch.randint(-1, s + 1, (b, n, d, h, w), generator=gen) for s in grid], -1)

    expected = torch.zeros(b, c, grid[2], grid[1], grid[0], dtype=torch.float64)
    for bi, ni, di, hi, wi in itertools.product(range(b), range(n), range(d), range(h), range(w)):
        x, y, z = index[bi, ni, di, hi, wi].tolist()
        if 0 <= x < grid[0] and 0 <= y < grid[1] and 0 <= z < grid[2]:
            expected[bi, :, z, y, x] += depth[bi, ni, di, hi, wi].double() * feat[bi, ni, :, hi, wi].double()

    _, counts = torch.unique(index.reshape(-1, 3), dim=0, return_counts=True)
    assert counts.max() > 3, "the test needs cells shared by several points"
    torch.testing.assert_close(bev_pool(depth, feat, index, grid), expected.float(), rtol=1e-5, atol=1e-5)


def test_inverse_3x3_matches_linalg_inv():
    matrices = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(1)) + 2 * torch.eye(3)
    torch.testing.assert_close(inverse_3x3(matrices), torch.linalg.inv(matrices), rtol=1e-4, atol=1e-5)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


def _camera_batch() -> CameraBatch:
    """Two cameras of one frame: nuScenes-like optical axes (camera z forward, x right, y down),
    a resize + crop + flip as post_rot/post_tran, and a BEV flip in y as bda."""
    optical_to_ego = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)  # camera axes in ego
    sensor2ego = np.zeros((1, 2, 4, 4))
    for i, yaw in enumerate((0.3, 2.5)):
        sensor2ego[0, i, :3, :3] = _rotation(yaw, 0.05, -0.02) @ optical_to_ego
        sensor2ego[0, i, :3, 3] = (1.5 - i, 0.2 * i, 1.6)
        sensor2ego[0, i, 3, 3] = 1
    intrinsics = np.array([[[1260.0, 0, 810], [0, 1255, 495], [0, 0, 1]],
                           [[800, 0, 790], [0, 810, 460], [0, 0, 1]]])
    post_rots = np.array([[[0.44, 0, 0], [0, 0.44, 0], [0, 0, 1]], [[-0.5, 0, 0], [0, 0.5, 0], [0, 0, 1]]])
    post_trans = np.array([[0.0, -140, 0], [800, -200, 0]])
    bda = np.diag([1.0, -1.0, 1.0])
    as_t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return CameraBatch(
        images=torch.zeros(1, 2, 3, 64, 176),
        intrinsics=as_t(intrinsics[None]),
        sensor2ego=as_t(sensor2ego),
        post_rots=as_t(post_rots[None]),
        post_trans=as_t(post_trans[None]),
        bda=as_t(bda[None]),
    )


def test_voxel_indices_match_a_per_point_projection():
    grid = VoxelGridConfig(x=(-40.0, 40.0, 0.4), y=(-40.0, 40.0, 0.4), z=(-1.0, 5.4, 0.4))
    vt = LSSViewTransformer(grid, DepthBins(1.0, 45.0, 0.5), input_size=(64, 176), downsample=16,
                            in_channels=8, out_channels=4, collapse_z=False)
    batch = _camera_batch()
    points = vt.ego_points(batch)[0].double().numpy()  # N x D x fH x fW x 3
    index = vt.voxel_index(vt.ego_points(batch))[0].numpy()
    assert points.shape == (2, 88, 4, 11, 3)

    lower, step = np.array([-40.0, -40.0, -1.0]), np.array([0.4, 0.4, 0.4])
    checked = 0
    samples = [(0, 0, 0, 0), (0, 10, 3, 10), (0, 87, 1, 5), (1, 40, 2, 7), (1, 5, 3, 0), (1, 60, 0, 10)]
    for cam, d, v, u in samples:  # camera, depth bin, feature row, feature column
        # The frustum's input pixel: columns spread from 0 to W-1, rows from 0 to H-1.
        pixel = np.array([u * 175 / 10, v * 63 / 3])
        depth = 1.0 + 0.5 * d
        post_rot = batch.post_rots[0, cam].double().numpy()
        post_tran = batch.post_trans[0, cam].double().numpy()
        source = np.linalg.solve(post_rot[:2, :2], pixel - post_tran[:2])
        ray = np.linalg.solve(batch.intrinsics[0, cam].double().numpy(), np.append(source, 1.0))
        sensor2ego = batch.sensor2ego[0, cam].double().numpy()
        ego = batch.bda[0].double().numpy() @ (sensor2ego[:3, :3] @ (ray * depth) + sensor2ego[:3, 3])
        np.testing.assert_allclose(points[cam, d, v, u], ego, atol=2e-3)

        # Forward check: the ego point projects back to the same input pixel at the same depth.
        unaugmented = np.linalg.inv(batch.bda[0].double().numpy()) @ ego
        in_camera = np.linalg.inv(sensor2ego[:3, :3]) @ (unaugmented - sensor2ego[:3, 3])
        assert abs(in_camera[2] - depth) < 1e-6
        projected = batch.intrinsics[0, cam].double().numpy() @ (in_camera / in_camera[2])
        np.testing.assert_allclose(post_rot[:2, :2] @ projected[:2] + post_tran[:2], pixel, atol=1e-6)

        cell = (ego - lower) / step
        if np.all(np.abs(cell - np.round(cell)) > 1e-2):  # not on a cell boundary: float32 agrees
            np.testing.assert_array_equal(index[cam, d, v, u], np.trunc(cell).astype(np.int64))
            checked += 1
    assert checked >= 4


def test_index_truncates_toward_zero_like_the_reference():
    vt = LSSViewTransformer(VoxelGridConfig(), DepthBins(), input_size=(32, 32), in_channels=4,
                            out_channels=2)
    points = torch.tensor([[-40.3, -39.9, -1.5], [39.9, 40.1, 5.3]])
    assert vt.voxel_index(points).tolist() == [[0, 0, -1], [199, 200, 15]]


def test_collapse_z_stacks_height_slices_slice_major():
    grid = VoxelGridConfig(x=(-20.0, 20.0, 2.0), y=(-20.0, 20.0, 2.0), z=(-1.0, 5.4, 1.6))
    kwargs = dict(grid=grid, depth_bins=DepthBins(1.0, 30.0, 1.0), input_size=(64, 176), in_channels=8,
                  out_channels=3)
    stacked = LSSViewTransformer(**kwargs, collapse_z=True)
    voxels = LSSViewTransformer(**kwargs, collapse_z=False)
    voxels.load_state_dict(stacked.state_dict())
    feats = torch.randn(1, 2, 8, 4, 11)
    batch = _camera_batch()
    collapsed, depth = stacked(feats, batch)
    full, _ = voxels(feats, batch)
    assert full.shape == (1, 3, 4, 20, 20) and collapsed.shape == (1, 12, 20, 20)
    assert full.abs().sum() > 0
    for z, c in itertools.product(range(4), range(3)):
        torch.testing.assert_close(collapsed[:, z * 3 + c], full[:, c, z])
    assert depth.shape == (1, 2, 29, 4, 11)
    torch.testing.assert_close(depth.sum(2), torch.ones(1, 2, 4, 11))
