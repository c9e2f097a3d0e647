"""Vectorised voxel ray casting (Amanatides-Woo DDA) in numpy.

One routine serves the camera images, the camera visibility mask and the LiDAR: every ray walks
voxel by voxel from its origin until it enters an occupied voxel or leaves the grid. As Occ3D
defines visibility, the voxels a ray traverses up to and including the first occupied one are
observed; everything behind it is not.
"""

from dataclasses import dataclass

import numpy as np

from occupancy.grid import GridSpec


@dataclass
class RayHits:
    """Where N rays stopped. Rays that left the grid have t = inf, voxel = -1 and axis = -1."""

    t: np.ndarray  # (N,) float64: ray parameter at which the ray entered its hit voxel
    voxel: np.ndarray  # (N, 3) int64: [x, y, z] index of the hit voxel
    axis: (
        np.ndarray
    )  # (N,) int64: axis whose voxel face the ray crossed into the hit voxel (-1: started inside)

    @property
    def hit(self) -> np.ndarray:
        """(N,) bool: the ray stopped at an occupied voxel inside the grid."""
        return np.isfinite(self.t)


def cast_rays(
    occupied: np.ndarray,
    grid: GridSpec,
    origins: np.ndarray,
    directions: np.ndarray,
    visible: np.ndarray | None = None,
) -> RayHits:
    """Walk rays `origins + t * directions` through `grid` until the first occupied voxel.

    occupied: (X, Y, Z) bool in `grid`'s frame. origins: (3,) or (N, 3), inside the grid.
    directions: (N, 3), any non-zero length (t is in units of that length). visible: optional
    (X, Y, Z) bool, C-contiguous; every voxel a ray traverses, including the hit one, is set True.
    """
    directions = np.asarray(directions, dtype=np.float64)
    origins = np.broadcast_to(np.asarray(origins, dtype=np.float64), directions.shape)
    shape = np.array(occupied.shape)
    if occupied.shape != grid.shape:
        raise ValueError(f"occupied has shape {occupied.shape}, the grid {grid.shape}")
    index = np.floor((origins - grid.lower) / grid.voxel_size).astype(np.int64)
    if not np.all((index >= 0) & (index < shape)):
        raise ValueError("every ray must start inside the grid")

    step = np.sign(directions).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(directions != 0, 1.0 / directions, np.inf)
        t_delta = np.where(directions != 0, grid.voxel_size * np.abs(inverse), np.inf)
        boundary = grid.lower + (index + (step > 0)) * grid.voxel_size
        t_max = np.where(directions != 0, (boundary - origins) * inverse, np.inf)

    count = len(directions)
    result = RayHits(np.full(count, np.inf), np.full((count, 3), -1, np.int64), np.full(count, -1, np.int64))
    occupied_flat = np.ascontiguousarray(occupied, dtype=bool).reshape(-1)
    visible_flat = None if visible is None else visible.reshape(-1)  # a view: raises if not contiguous
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    rays = np.arange(count)
    t_now = np.zeros(count)
    axis = np.full(count, -1, np.int64)
    while rays.size:
        flat = index @ strides
        if visible_flat is not None:
            visible_flat[flat] = True
        hit = occupied_flat[flat]
        if hit.any():
            result.t[rays[hit]] = t_now[hit]
            result.voxel[rays[hit]] = index[hit]
            result.axis[rays[hit]] = axis[hit]
            keep = ~hit
            rays, index, t_max, t_delta, step, t_now = (
                a[keep] for a in (rays, index, t_max, t_delta, step, t_now)
            )
        # Step every ray across the nearest voxel face.
        rows = np.arange(rays.size)
        axis = np.argmin(t_max, axis=1)
        t_now = t_max[rows, axis]
        index[rows, axis] += step[rows, axis]
        t_max[rows, axis] += t_delta[rows, axis]
        moved = index[rows, axis]
        inside = (moved >= 0) & (moved < shape[axis])
        if not inside.all():
            rays, index, t_max, t_delta, step, t_now, axis = (
                a[inside] for a in (rays, index, t_max, t_delta, step, t_now, axis)
            )
    return result
