"""RayIoU, as SparseOcc defines it (its `ray_metrics.py` and `ego_pose_dataset.py`; FlashOCC ships the
same code), with our own exact voxel traversal in numpy instead of the reference's CUDA ray caster.

Per frame, LiDAR-like rays leave from up to 8 origins: the LiDAR positions of the frames of the same
scene, carried into this frame's ego frame, kept where |x| and |y| are under 39 m (8 of them evenly
spaced in time when more qualify). Each origin casts the same 39 pitches (from -45 degrees up to just
past the nuScenes LiDAR's upper edge of 0.21 rad) x 360 one-degree azimuths, in the ego frame. Every
ray walks the ground-truth grid and the predicted grid to the first occupied (non-free) voxel, and
records its class and its depth: how far along the ray it leaves that voxel (the reference's `d[i]`,
the exit distance, in both grids alike). Rays that meet nothing in the ground truth are not scored;
on the others, class c counts a ground-truth ray if the ground truth's first voxel is c, a predicted
ray if the prediction's is, and a true positive if both are c and the depths differ by less than the
threshold (1, 2 and 4 m). IoU = TP / (GT + predicted - TP), summed over the whole evaluation set;
free is left out of the mean, and classes absent from both are NaN and left out (nanmean). The
camera mask plays no part: a ray stops where the surface is, which is what makes the metric
insensitive to thick predictions behind surfaces.

Where ours differs from the reference, and why:
- The reference builds ray end points in float32 (1 m from the origin) and derives each direction
  from them, so its directions carry ~1e-7 relative rounding; ours are exact float64 unit vectors.
  The two traversals can differ only for rays passing within ~1e-4 voxel of a voxel edge.
- It locates the origin voxel with a C cast (truncation toward zero); ours floors. They differ only
  for an origin below the grid by less than a voxel, which the reference wrongly puts inside.
- A ray that never meets the grid (an origin outside it, pointing away) has no voxel at all in the
  reference, whose output then reads voxel (0, 0, 0); ours reports no hit, so such a ray is not scored.
- Its walk gives up after 1000 steps; inside a 200 x 200 x 16 grid a ray takes at most 416.
Ties between voxel faces (a ray through an edge) step z before y before x, as the reference does.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from occupancy.classes import CLASS_NAMES, FREE_CLASS, NUM_CLASSES
from occupancy.geometry import invert_rigid
from occupancy.grid import OCC3D_GRID, GridSpec

THRESHOLDS_M = (1.0, 2.0, 4.0)
ORIGIN_RANGE_M = 39.0  # an origin is used if |x| and |y| in the frame's ego frame are below this
MAX_ORIGINS = 8
LIDAR_UPPER_PITCH_RAD = 0.21  # the nuScenes LiDAR's upper field-of-view edge, rounded as the reference
_FAR = np.finfo(np.float64).max  # the face distance along an axis the ray never steps on


def lidar_pitches() -> np.ndarray:
    """The reference's 39 pitch angles (radians, negative = down): -(pi/2 - atan(k)) for k = 1..10, then
    steps of the last difference until the upper edge is passed."""
    pitches = [-(math.pi / 2 - math.atan(k)) for k in range(1, 11)]
    while pitches[-1] < LIDAR_UPPER_PITCH_RAD:
        pitches.append(2 * pitches[-1] - pitches[-2])
    return np.array(pitches)


def lidar_directions() -> np.ndarray:
    """(39 * 360, 3) unit vectors in the ego frame: every pitch at azimuths 0, 1, ..., 359 degrees."""
    pitch = lidar_pitches()[:, None]
    azimuth = np.radians(np.arange(360.0))[None, :]
    x, y = np.cos(pitch) * np.cos(azimuth), np.cos(pitch) * np.sin(azimuth)
    return np.stack(np.broadcast_arrays(x, y, np.sin(pitch)), axis=-1).reshape(-1, 3)


LIDAR_DIRECTIONS = lidar_directions()


@dataclass(frozen=True)
class FramePose:
    """Where a frame's rays come from: its ego pose (4x4 ego -> global; None if unknown) and its LiDAR's
    position in its own ego frame (metres)."""

    ego2global: np.ndarray | None
    sensor_in_ego: np.ndarray


def ray_origins(scene: Sequence[FramePose], reference: int) -> np.ndarray:
    """(T, 3) origins in the ego frame of `scene[reference]`, T <= MAX_ORIGINS: the LiDAR position of
    every frame of the scene (in time order), kept within ORIGIN_RANGE_M in x and y, evenly subsampled.

    Frames whose pose, or the reference frame's, is unknown contribute nothing but the reference's own.
    """
    own = scene[reference]
    origins = []
    for index, frame in enumerate(scene):
        if index == reference:
            origins.append(np.asarray(own.sensor_in_ego, dtype=np.float64))
        elif frame.ego2global is not None and own.ego2global is not None:
            ego_from_frame = invert_rigid(own.ego2global) @ frame.ego2global
            origins.append(ego_from_frame[:3, :3] @ frame.sensor_in_ego + ego_from_frame[:3, 3])
    origins = [o for o in origins if abs(o[0]) < ORIGIN_RANGE_M and abs(o[1]) < ORIGIN_RANGE_M]
    if len(origins) > MAX_ORIGINS:
        # The reference's selection, including numpy's round-half-to-even.
        origins = [origins[i] for i in np.round(np.linspace(0, len(origins) - 1, MAX_ORIGINS)).astype(int)]
    return np.array(origins, dtype=np.float64).reshape(-1, 3)


@dataclass
class RayHits:
    """Each ray's first occupied voxel in one grid: its class (FREE_CLASS where the ray meets none) and
    the depth in metres at which the ray leaves it (inf where none)."""

    label: np.ndarray  # (R,) uint8
    depth: np.ndarray  # (R,) float64


def first_hits(grids: Sequence[np.ndarray], origins: np.ndarray, directions: np.ndarray,
               grid: GridSpec = OCC3D_GRID) -> list[RayHits]:
    """Cast every direction from every origin through each class grid (uint8 [X, Y, Z]) at once.

    Rays are origin-major: ray t * len(directions) + k leaves origins[t] along directions[k]. An
    Amanatides-Woo walk, vectorised over the rays: each step crosses the nearest voxel face, so every
    voxel the ray passes through is visited once, in order; a ray stops once it has found its first
    occupied voxel in every grid, or when it leaves the grid (or starts outside it, heading away).
    """
    if not 1 <= len(grids) <= 8:
        raise ValueError("one to 8 grids at once (one bit each)")
    for labels in grids:
        if labels.shape != grid.shape:
            raise ValueError(f"a grid has shape {labels.shape}, expected {grid.shape}")
    occupied = np.zeros(grid.shape, dtype=np.uint8)
    for bit, labels in enumerate(grids):
        occupied |= (labels != FREE_CLASS).astype(np.uint8) << bit

    directions = np.asarray(directions, dtype=np.float64)
    start = (np.asarray(origins, dtype=np.float64).reshape(-1, 3) - grid.lower) / grid.voxel_size
    count = len(start) * len(directions)
    walk = _Walk.start(np.repeat(start, len(directions), axis=0), np.tile(directions, (len(start), 1)),
                       np.uint8((1 << len(grids)) - 1), grid.shape)
    hit_flat = np.full((len(grids), count), -1, dtype=np.int64)
    hit_depth = np.full((len(grids), count), np.inf)
    occupied = occupied.reshape(-1)
    while walk.ray.size:
        flat, inside = walk.flat_index()
        walk.stop_heading_away(np.flatnonzero(~inside))
        found = occupied[flat] & walk.pending & inside.view(np.uint8) * np.uint8(0xFF)
        leave = walk.advance()  # the ray length at which it leaves the voxel it was in
        for bit in range(len(grids)):
            new = (found & (1 << bit)).astype(bool)
            hit_flat[bit, walk.ray[new]] = flat[new]
            hit_depth[bit, walk.ray[new]] = leave[new]
        walk.pending &= ~found
        if np.count_nonzero(walk.pending) < 0.75 * walk.ray.size:
            walk = walk.select(walk.pending != 0)
    results = []
    for bit, labels in enumerate(grids):
        label = np.full(count, FREE_CLASS, dtype=np.uint8)
        hit = hit_flat[bit] >= 0
        label[hit] = labels.reshape(-1)[hit_flat[bit][hit]]
        results.append(RayHits(label, hit_depth[bit] * grid.voxel_size))
    return results


@dataclass
class _Walk:
    """The rays still walking, one entry per ray, in voxel units; axes kept apart (1-D arrays are faster
    to step than (R, 3) ones). A ray with no pending bit is finished and only awaits compaction."""

    ray: np.ndarray  # (R,) index of the ray in the output
    voxel: list[np.ndarray]  # x, y, z: (R,) int64 current voxel, possibly outside the grid
    face: list[np.ndarray]  # ray length at which it crosses the next face on each axis
    face_step: list[np.ndarray]  # ray length between two faces on each axis
    step: list[np.ndarray]  # +1 / -1 voxel step on each axis
    pending: np.ndarray  # (R,) uint8: bit g set while grid g's first hit is not found
    shape: tuple[int, int, int]

    @classmethod
    def start(cls, start: np.ndarray, direction: np.ndarray, bits: np.uint8,
              shape: tuple[int, int, int]) -> "_Walk":
        """Rays from `start` (R, 3) voxel units along unit `direction` (R, 3)."""
        step = np.where(direction >= 0, 1, -1)
        voxel = np.floor(start).astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            face = np.where(direction != 0, (voxel + (step > 0) - start) / direction, _FAR)
            face_step = np.where(direction != 0, 1.0 / np.abs(direction), _FAR)
        return cls(np.arange(len(start)), list(voxel.T.copy()), list(face.T.copy()), list(face_step.T.copy()),
                   list(step.T.copy()), np.full(len(start), bits, np.uint8), shape)

    def flat_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Each ray's voxel as a flat C-order index (0 where outside), and whether it is inside."""
        (x, y, z), (size_x, size_y, size_z) = self.voxel, self.shape
        inside = ((x.view(np.uint64) < size_x) & (y.view(np.uint64) < size_y)
                  & (z.view(np.uint64) < size_z))
        return np.where(inside, (x * size_y + y) * size_z + z, 0), inside

    def advance(self) -> np.ndarray:
        """Step every ray across its nearest face (ties: z before y before x, as the reference); returns
        the ray length at that face."""
        fx, fy, fz = self.face
        on_x = (fx < fy) & (fx < fz)
        on_z = (fz <= fx) & (fz <= fy)
        on_y = ~(on_x | on_z)
        leave = np.minimum(np.minimum(fx, fy), fz)
        for axis, chosen in enumerate((on_x, on_y, on_z)):
            self.voxel[axis] += chosen * self.step[axis]
            self.face[axis] += chosen * self.face_step[axis]  # 0 * _FAR is 0: no step, no change
        return leave

    def stop_heading_away(self, outside: np.ndarray) -> None:
        """Finish those of the rays `outside` (indices) that are outside the grid on some axis and moving
        further out on it: they never (re-)enter."""
        away = np.zeros(outside.size, dtype=bool)
        for voxel, step, size in zip(self.voxel, self.step, self.shape, strict=True):
            voxel, step = voxel[outside], step[outside]
            away |= ((voxel < 0) & (step < 0)) | ((voxel >= size) & (step > 0))
        self.pending[outside[away]] = 0

    def select(self, keep: np.ndarray) -> "_Walk":
        def pick(arrays: list[np.ndarray]) -> list[np.ndarray]:
            return [a[keep] for a in arrays]

        return _Walk(self.ray[keep], pick(self.voxel), pick(self.face), pick(self.face_step), pick(self.step),
                     self.pending[keep], self.shape)


class RayMetric:
    """Accumulates the per-class ray counts frame by frame; `merge`/`state` sum them across processes."""

    def __init__(self, directions: np.ndarray = LIDAR_DIRECTIONS, grid: GridSpec = OCC3D_GRID) -> None:
        self.directions = directions
        self.grid = grid
        self.gt = np.zeros(NUM_CLASSES, dtype=np.int64)  # scored rays whose ground truth hits class c
        self.pred = np.zeros(NUM_CLASSES, dtype=np.int64)  # scored rays whose prediction hits class c
        self.tp = np.zeros((len(THRESHOLDS_M), NUM_CLASSES), dtype=np.int64)
        self.frames = 0
        self.rays = 0  # scored rays

    def update(self, pred: np.ndarray, gt: np.ndarray, origins: np.ndarray) -> None:
        """Add one frame: class grids `pred` and `gt` [X, Y, Z], rays from `origins` (T, 3) ego metres."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"shapes differ: pred {pred.shape}, gt {gt.shape}")
        if pred.size and pred.max() >= NUM_CLASSES:
            raise ValueError(f"predicted classes must lie in 0..{NUM_CLASSES - 1}, got {pred.max()}")
        truth, guess = first_hits([gt, pred], origins, self.directions, self.grid)
        scored = truth.label != FREE_CLASS
        truth_label, guess_label = truth.label[scored], guess.label[scored]
        error = np.abs(truth.depth[scored] - guess.depth[scored])
        self.gt += _class_counts(truth_label)
        self.pred += _class_counts(guess_label)
        same = truth_label == guess_label
        for row, threshold in enumerate(THRESHOLDS_M):
            self.tp[row] += _class_counts(truth_label[same & (error < threshold)])
        self.frames += 1
        self.rays += int(scored.sum())

    def iou(self) -> np.ndarray:
        """(thresholds, classes 0..17) IoU as fractions; NaN for a class no scored ray has or predicts."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.tp / (self.gt + self.pred - self.tp)

    def per_class(self) -> dict[str, list[float]]:
        """RayIoU in percent at each threshold, by class name (free left out); NaN for absent classes."""
        iou = self.iou() * 100
        return {CLASS_NAMES[c]: [float(v) for v in iou[:, c]] for c in range(NUM_CLASSES) if c != FREE_CLASS}

    def at_thresholds(self) -> list[float]:
        """RayIoU@1, @2, @4 in percent: the NaN-ignoring mean over the classes (NaN when none occurs)."""
        rows = np.array(list(self.per_class().values())).T
        return [_nanmean(row) for row in rows]

    def mean(self) -> float:
        """RayIoU: the mean of the three thresholds' values (the reference's nanmean over all of them)."""
        return _nanmean(np.array(self.at_thresholds()))

    def table(self) -> str:
        width = max(len(name) for name in CLASS_NAMES)
        heads = "".join(f"  RayIoU@{t:g}" for t in THRESHOLDS_M)
        lines = [f"{'class':<{width}}{heads}   ({self.frames} frames, {self.rays} rays)"]
        lines += [f"{name:<{width}}" + "".join(f"  {v:8.2f}" for v in values)
                  for name, values in self.per_class().items()]
        lines.append(f"{'mean':<{width}}" + "".join(f"  {v:8.2f}" for v in self.at_thresholds()))
        lines.append(f"{'RayIoU':<{width}}  {self.mean():8.2f}")
        return "\n".join(lines)

    def state(self) -> dict[str, np.ndarray | int]:
        return {"gt": self.gt.copy(), "pred": self.pred.copy(), "tp": self.tp.copy(), "frames": self.frames,
                "rays": self.rays}

    def merge(self, other: "RayMetric | dict[str, np.ndarray | int]") -> None:
        """Add another metric, or its `state()`, into this one (integer counts: exact)."""
        state = other.state() if isinstance(other, RayMetric) else other
        for name in ("gt", "pred", "tp"):
            counts, mine = np.asarray(state[name]), getattr(self, name)
            if counts.shape != mine.shape:
                raise ValueError(f"{name} counts of shape {counts.shape}, expected {mine.shape}")
            mine += counts.astype(np.int64)
        self.frames += int(state["frames"])
        self.rays += int(state["rays"])


def _class_counts(labels: np.ndarray) -> np.ndarray:
    """Rays per class 0..17; labels outside (255) count nowhere, as in the reference."""
    return np.bincount(labels, minlength=256)[:NUM_CLASSES]


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else math.nan
