"""RayIoU (occupancy/ray_metrics.py): the traversal against brute-force fine sampling, hand-computed
RayIoUs on hand-built grids, the reference's ray set and ray origins."""

import math

import numpy as np
import pytest

from occupancy.classes import CLASS_NAMES, FREE_CLASS
from occupancy.geometry import pose_matrix
from occupancy.grid import OCC3D_GRID, GridSpec
from occupancy.ray_metrics import (
    LIDAR_DIRECTIONS,
    MAX_ORIGINS,
    FramePose,
    RayMetric,
    first_hits,
    lidar_pitches,
    ray_origins,
)

MANMADE, VEGETATION, CAR = (CLASS_NAMES.index(n) for n in ("manmade", "vegetation", "car"))
ORIGIN = np.array([[0.2, 0.2, 1.0]])  # metres, inside voxel (100, 100, 5)
SMALL = GridSpec(x_range=(0.0, 5.6), y_range=(0.0, 4.8), z_range=(0.0, 2.4), voxel_size=0.4)  # 14 x 12 x 6


def empty() -> np.ndarray:
    return np.full(OCC3D_GRID.shape, FREE_CLASS, dtype=np.uint8)


def wall(x_index: int, label: int = MANMADE) -> np.ndarray:
    """A wall filling the plane of voxels x = x_index (x from -40 + 0.4 x_index m)."""
    grid = empty()
    grid[x_index] = label
    return grid


def horizontal(azimuths_deg) -> np.ndarray:
    azimuth = np.radians(np.asarray(azimuths_deg, dtype=float))
    return np.stack([np.cos(azimuth), np.sin(azimuth), np.zeros_like(azimuth)], axis=1)


def brute_force(labels: np.ndarray, grid: GridSpec, origin: np.ndarray, direction: np.ndarray,
                eps: float) -> tuple[int, float]:
    """(class, depth in metres) of a ray sampled every `eps` voxels: the first sample in an occupied voxel,
    and the first sample after it in another voxel (where the ray leaves it)."""
    start = (origin - grid.lower) / grid.voxel_size
    length = np.linalg.norm(np.array(grid.shape)) + np.linalg.norm(start - np.array(grid.shape) / 2) + 1
    t = np.arange(0.0, length, eps)
    voxel = np.floor(start + t[:, None] * direction).astype(int)
    inside = np.all((voxel >= 0) & (voxel < np.array(grid.shape)), axis=1)
    occupied = np.zeros(len(t), dtype=bool)
    occupied[inside] = labels[tuple(voxel[inside].T)] != FREE_CLASS
    if not occupied.any():
        return FREE_CLASS, math.inf
    first = int(np.argmax(occupied))
    moved = np.any(voxel[first:] != voxel[first], axis=1)
    return int(labels[tuple(voxel[first])]), t[first + int(np.argmax(moved))] * grid.voxel_size


def test_traversal_matches_brute_force_sampling_on_random_grids():
    rng = np.random.default_rng(3)
    grids = [np.where(rng.random(SMALL.shape) < 0.1, rng.integers(0, 17, SMALL.shape), FREE_CLASS)
             .astype(np.uint8) for _ in range(2)]
    inside = rng.uniform(SMALL.lower, SMALL.lower + np.array(SMALL.shape) * 0.4, (4, 3))
    above = np.array([[2.0, 2.5, 3.1]])  # over the grid: downward rays enter it, upward ones never do
    origins = np.concatenate([inside, above])
    directions = rng.normal(size=(16, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    hits = first_hits(grids, origins, directions, SMALL)
    eps = 2e-4
    entered = 0
    for ray in range(len(origins) * len(directions)):
        origin, direction = origins[ray // len(directions)], directions[ray % len(directions)]
        for labels, found in zip(grids, hits, strict=True):
            label, depth = brute_force(labels, SMALL, origin, direction, eps)
            assert found.label[ray] == label, ray
            assert found.depth[ray] == pytest.approx(depth, abs=2 * eps * SMALL.voxel_size), ray
        entered += ray >= len(inside) * len(directions) and hits[0].label[ray] != FREE_CLASS
    assert entered > 0  # some rays from above did enter and hit
    assert 0.3 < (hits[0].label != FREE_CLASS).mean() < 0.9  # hits and misses both tested


def test_a_wall_at_a_known_distance():
    # The wall's voxels span x = 4.0 .. 4.4 m; a ray along +x from x = 0.2 leaves its first one at 4.4 m.
    (hits,) = first_hits([wall(110)], ORIGIN, horizontal([0.0, 180.0]))
    assert hits.label.tolist() == [MANMADE, FREE_CLASS]
    assert hits.depth[0] == pytest.approx(4.2)
    assert hits.depth[1] == math.inf


def test_a_ray_through_a_voxel_edge_steps_y_before_x_as_the_reference():
    # From the corner (x, y) = (0, 0) m of voxel (100, 100) at 45 degrees, the faces x = 0.4 and y = 0.4 are
    # crossed at once: the reference steps y first, so the ray touches voxel (100, 101) before (101, 101).
    grid = empty()
    grid[100, 101, 5], grid[101, 100, 5] = CAR, VEGETATION
    (hits,) = first_hits([grid], np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 1.0, 0.0]]) / math.sqrt(2))
    assert hits.label.tolist() == [CAR]


def test_a_prediction_one_voxel_too_near():
    # One voxel (0.4 m) nearer along x is 0.4 / cos(azimuth) m along a ray: 0.4, 1.5 and 3 m for these.
    azimuths = [0.0, math.degrees(math.acos(0.4 / 1.5)), math.degrees(math.acos(0.4 / 3.0))]
    metric = RayMetric(directions=horizontal(azimuths))
    metric.update(pred=wall(109), gt=wall(110), origins=ORIGIN)
    assert metric.rays == 3
    # TP at 1 m: 1 of 3 rays -> 1 / (3 + 3 - 1); at 2 m: 2 -> 2 / 4; at 4 m: all 3 -> 3 / 3.
    assert metric.per_class()["manmade"] == pytest.approx([20.0, 50.0, 100.0])
    assert metric.at_thresholds() == pytest.approx([20.0, 50.0, 100.0])  # the only class present
    assert metric.mean() == pytest.approx(170.0 / 3)
    assert math.isnan(metric.per_class()["car"][0])


def test_the_wrong_class_at_the_right_depth_scores_zero():
    metric = RayMetric(directions=horizontal([0.0, 10.0, -10.0]))
    metric.update(pred=wall(110, VEGETATION), gt=wall(110), origins=ORIGIN)
    per_class = metric.per_class()
    assert per_class["manmade"] == [0.0] * 3  # 3 rays in ground truth, none predicted
    assert per_class["vegetation"] == [0.0] * 3  # 3 predicted, none in ground truth
    assert metric.mean() == 0.0
    assert sum(not math.isnan(v[0]) for v in per_class.values()) == 2


def test_only_rays_that_hit_in_ground_truth_are_scored_and_a_missed_ray_is_a_false_negative():
    pred = wall(110)
    pred[50] = CAR  # behind the origin: only the ray along -x meets it, and it hits nothing in ground truth
    gt = wall(110)
    gt[:, :, :] = np.where(np.arange(200)[None, :, None] < 140, gt, FREE_CLASS)  # the wall ends at y = 16 m
    # Azimuth 80 degrees meets the ground-truth wall at y ~ 23 m: predicted there, not in ground truth.
    metric = RayMetric(directions=horizontal([0.0, 180.0, 80.0]))
    metric.update(pred=pred, gt=gt, origins=ORIGIN)
    assert metric.rays == 1  # only the ray along +x: the others meet nothing in ground truth
    assert metric.pred[CAR] == 0 and metric.per_class()["manmade"] == [100.0] * 3
    missed = RayMetric(directions=horizontal([0.0, 5.0]))
    missed.update(pred=empty(), gt=wall(110), origins=ORIGIN)
    assert missed.per_class()["manmade"] == [0.0] * 3 and missed.pred[FREE_CLASS] == 2


def test_the_lidar_like_ray_set_is_the_references():
    pitches = lidar_pitches()
    assert len(pitches) == 39 and pitches[0] == pytest.approx(-math.pi / 4)
    assert pitches[9] == pytest.approx(-(math.pi / 2 - math.atan(10)))
    assert pitches[-2] < 0.21 <= pitches[-1]
    assert np.allclose(np.diff(pitches[9:]), pitches[10] - pitches[9])
    assert LIDAR_DIRECTIONS.shape == (39 * 360, 3)
    assert np.allclose(np.linalg.norm(LIDAR_DIRECTIONS, axis=1), 1.0)
    assert LIDAR_DIRECTIONS[1] == pytest.approx([math.cos(pitches[0]) * math.cos(math.radians(1)),
                                                 math.cos(pitches[0]) * math.sin(math.radians(1)),
                                                 math.sin(pitches[0])])


def drive(step_m: float, frames: int) -> list[FramePose]:
    """A car driving along global x (yawed 90 degrees: its ego x is global y), LiDAR 1.84 m up."""
    yaw90 = [math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]
    return [FramePose(pose_matrix([100.0, 50.0 + step_m * i, 0.0], yaw90), np.array([0.94, 0.0, 1.84]))
            for i in range(frames)]


def test_ray_origins_are_the_scenes_lidar_positions_in_range():
    scene = drive(10.0, 6)
    # In frame 2's ego frame the frames lie at x = 0.94 + 10 (i - 2): -19.06 .. 30.94, all in range.
    expected = [[0.94 + 10 * (i - 2), 0.0, 1.84] for i in range(6)]
    assert ray_origins(scene, 2) == pytest.approx(np.array(expected))
    # From frame 0, frames 4 and 5 lie at 40.94 and 50.94 m: out of range.
    assert ray_origins(scene, 0)[:, 0] == pytest.approx([0.94, 10.94, 20.94, 30.94])


def test_more_than_eight_origins_are_subsampled_evenly():
    scene = drive(2.0, 20)
    origins = ray_origins(scene, 0)
    expected = np.round(np.linspace(0, 19, MAX_ORIGINS)).astype(int)  # frames 0, 3, 5, 8, 11, 14, 16, 19
    assert origins[:, 0] == pytest.approx(0.94 + 2.0 * expected)
    unknown = [FramePose(None, p.sensor_in_ego) for p in scene[:3]]
    assert ray_origins(unknown, 1).tolist() == [[0.94, 0.0, 1.84]]  # no poses: its own origin only


def test_state_and_merge_sum_exactly():
    frames = [(wall(109), wall(110)), (wall(110, VEGETATION), wall(110)), (wall(112), wall(110))]
    whole, first, second = RayMetric(), RayMetric(), RayMetric()
    origins = np.array([[0.94, 0.0, 1.84], [-5.0, 3.0, 1.84]])
    for pred, gt in frames:
        whole.update(pred, gt, origins)
    first.update(*frames[0], origins)
    for pred, gt in frames[1:]:
        second.update(pred, gt, origins)
    first.merge(second.state())
    assert first.frames == 3 and first.rays == whole.rays > 0
    for name in ("gt", "pred", "tp"):
        np.testing.assert_array_equal(getattr(first, name), getattr(whole, name))
    assert first.mean() == whole.mean()
    with pytest.raises(ValueError, match="tp counts"):
        first.merge({**second.state(), "tp": np.zeros((2, 18))})


def test_a_perfect_prediction_scores_100_for_the_classes_it_has():
    gt = np.load("examples/frame/labels.npz")["semantics"]
    metric = RayMetric()
    metric.update(gt, gt, np.array([[0.94, 0.0, 1.84]]))
    present = [v for v in metric.per_class().values() if not math.isnan(v[0])]
    assert len(present) >= 5 and all(v == [100.0] * 3 for v in present)
    assert metric.mean() == 100.0
