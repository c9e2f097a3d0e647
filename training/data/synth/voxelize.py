"""Voxelise a scene at one instant into the ego frame: the ground layer plus every object box."""

import numpy as np

from occupancy.classes import FREE_CLASS
from occupancy.grid import OCC3D_GRID, GridSpec

from .world import GROUND_TOP_Z, Scene

# The grid the cameras and the LiDAR see: wider and taller than Occ3D's, so that views do not end
# at the label grid's border. Same voxels, so the Occ3D labels are a sub-block of it.
RENDER_GRID = GridSpec(x_range=(-60.0, 60.0), y_range=(-60.0, 60.0), z_range=(-1.0, 9.4))
GROUND_LAYER = round((GROUND_TOP_Z - RENDER_GRID.z_range[0]) / RENDER_GRID.voxel_size) - 1


def label_block(render_grid: GridSpec = RENDER_GRID, label_grid: GridSpec = OCC3D_GRID) -> tuple[slice, ...]:
    """Slices of `render_grid` arrays that cover `label_grid` (same voxel size, aligned)."""
    start = np.round((label_grid.lower - render_grid.lower) / render_grid.voxel_size).astype(int)
    return tuple(slice(int(s), int(s) + n) for s, n in zip(start, label_grid.shape, strict=True))


def ego_transform(position: np.ndarray, yaw: float) -> np.ndarray:
    """4x4 ego -> global transform of a planar pose."""
    c, s = np.cos(yaw), np.sin(yaw)
    transform = np.eye(4)
    transform[:2, :2] = [[c, -s], [s, c]]
    transform[:3, 3] = position
    return transform


def voxelize(
    scene: Scene, time_s: float, ego2global: np.ndarray, grid: GridSpec = RENDER_GRID
) -> tuple[np.ndarray, np.ndarray]:
    """Class (uint8, free = 17) and tint (uint8) grids (X, Y, Z) of the scene at `time_s` in the ego frame."""
    classes = np.full(grid.shape, FREE_CLASS, np.uint8)
    tint = np.zeros(grid.shape, np.uint8)
    centres = grid.voxel_centers()[:, :, 0, :2]
    column_global = centres @ ego2global[:2, :2].T + ego2global[:2, 3]
    classes[:, :, GROUND_LAYER] = scene.road.ground_class(column_global)

    centre_global, yaw_global = scene.objects.boxes_at(scene.road, time_s)
    global2ego = np.linalg.inv(ego2global)
    centre_ego = centre_global[:, :2] @ global2ego[:2, :2].T + global2ego[:2, 3]
    yaw_ego = yaw_global - np.arctan2(ego2global[1, 0], ego2global[0, 0])
    size = scene.objects.size
    reach = 0.5 * np.hypot(size[:, 0], size[:, 1])
    lower, upper = grid.lower, grid.lower + np.array(grid.shape) * grid.voxel_size
    near = np.all(
        (centre_ego + reach[:, None] > lower[:2]) & (centre_ego - reach[:, None] < upper[:2]), axis=1
    )
    for k in np.flatnonzero(near):
        bottom = GROUND_TOP_Z + centre_global[k, 2] - size[k, 2] / 2
        _fill_box(
            classes,
            tint,
            grid,
            centre_ego[k],
            yaw_ego[k],
            size[k],
            bottom,
            scene.objects.class_id[k],
            scene.objects.tint[k],
        )
    return classes, tint


def _fill_box(
    classes: np.ndarray,
    tint: np.ndarray,
    grid: GridSpec,
    centre: np.ndarray,
    yaw: float,
    size: np.ndarray,
    bottom: float,
    class_id: int,
    tint_value: int,
) -> None:
    """Set the voxels whose centres lie in an upright box. Boxes thinner than a voxel (poles, cones)
    count as one voxel thick, so that they keep their height instead of vanishing."""
    vs = grid.voxel_size
    size = np.maximum(size, vs)
    reach = 0.5 * np.hypot(size[0], size[1])
    lo = np.floor((np.r_[centre - reach, bottom] - grid.lower) / vs).astype(int)
    hi = np.ceil((np.r_[centre + reach, bottom + size[2]] - grid.lower) / vs).astype(int)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, grid.shape)
    if np.any(hi <= lo):
        return
    axes = [grid.lower[i] + (np.arange(lo[i], hi[i]) + 0.5) * vs for i in range(3)]
    dx, dy = axes[0][:, None] - centre[0], axes[1][None, :] - centre[1]
    c, s = np.cos(yaw), np.sin(yaw)
    footprint = (np.abs(c * dx + s * dy) <= size[0] / 2) & (np.abs(-s * dx + c * dy) <= size[1] / 2)
    cell = np.floor((centre - grid.lower[:2]) / vs).astype(int) - lo[:2]
    if not footprint.any() and np.all((cell >= 0) & (cell < footprint.shape)):
        footprint[tuple(cell)] = True  # a rotated thin box can miss every centre: take the cell under it
    column = (axes[2] >= bottom) & (axes[2] <= bottom + size[2])
    inside = footprint[:, :, None] & column[None, None, :]
    block = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    classes[block][inside] = class_id
    tint[block][inside] = tint_value
