"""The Occ3D-nuScenes occupancy grid: ego frame (x forward, y left, z up), indexed [x, y, z]."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridSpec:
    """An axis-aligned voxel grid in the ego frame; ranges are [min, max) in metres."""

    x_range: tuple[float, float] = (-40.0, 40.0)
    y_range: tuple[float, float] = (-40.0, 40.0)
    z_range: tuple[float, float] = (-1.0, 5.4)
    voxel_size: float = 0.4

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxels along x, y, z: (200, 200, 16) for Occ3D."""
        return tuple(
            round((hi - lo) / self.voxel_size) for lo, hi in (self.x_range, self.y_range, self.z_range)
        )

    @property
    def lower(self) -> np.ndarray:
        """The grid's minimum corner (x, y, z) in metres."""
        return np.array([self.x_range[0], self.y_range[0], self.z_range[0]], dtype=np.float64)

    @property
    def range_m(self) -> list[float]:
        """[x_min, y_min, z_min, x_max, y_max, z_max], as the HTTP API reports it."""
        return [self.x_range[0], self.y_range[0], self.z_range[0],
                self.x_range[1], self.y_range[1], self.z_range[1]]

    def voxel_centers(self) -> np.ndarray:
        """Centres of all voxels in metres, shape (X, Y, Z, 3)."""
        axes = [lo + (np.arange(n) + 0.5) * self.voxel_size
                for (lo, _), n in zip((self.x_range, self.y_range, self.z_range), self.shape, strict=True)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)

    def to_index(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voxel indices (N, 3) of ego-frame points (N, 3), and a mask of the points inside the grid."""
        offsets = np.asarray(points, dtype=np.float64) - self.lower
        index = np.floor(offsets / self.voxel_size).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.array(self.shape)), axis=-1)
        return index, inside


OCC3D_GRID = GridSpec()
