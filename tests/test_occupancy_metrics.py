"""The Occ3D mIoU: hand-computed cases and a brute-force reference over several frames."""

import math

import numpy as np
import pytest

from occupancy.classes import CLASS_NAMES, FREE_CLASS, IGNORE_INDEX, NUM_CLASSES
from occupancy.metrics import OccupancyMetric

CAR, BARRIER, TRUCK = CLASS_NAMES.index("car"), CLASS_NAMES.index("barrier"), CLASS_NAMES.index("truck")


def metric_of(*frames):
    metric = OccupancyMetric()
    for pred, gt, mask in frames:
        metric.update(np.array(pred), np.array(gt), np.array(mask))
    return metric


def brute_force_miou(frames):
    """Per class, count TP / FP / FN voxel by voxel over all frames; IoU = TP / (TP + FP + FN)."""
    counts = np.zeros((NUM_CLASSES, 3))
    for pred, gt, mask in frames:
        for p, g, m in zip(pred.ravel(), gt.ravel(), mask.ravel(), strict=True):
            if not m or g == IGNORE_INDEX:
                continue
            counts[g, 0] += p == g
            counts[g, 2] += p != g
            counts[p, 1] += p != g
    ious = [counts[c, 0] / counts[c].sum() for c in range(FREE_CLASS) if counts[c].sum() > 0]
    return 100 * float(np.mean(ious))


def test_hand_computed_frame():
    # car: one hit, one car missed as free, one free predicted as car -> 1 / 3; barrier: one hit -> 1.
    gt = [CAR, CAR, FREE_CLASS, BARRIER]
    pred = [CAR, FREE_CLASS, CAR, BARRIER]
    metric = metric_of((pred, gt, [1, 1, 1, 1]))
    iou = metric.per_class_iou()
    assert iou["car"] == pytest.approx(100 / 3)
    assert iou["barrier"] == pytest.approx(100.0)
    assert "free" not in iou and len(iou) == 17
    # Every other class occurs in neither ground truth nor prediction: NaN, and out of the mean.
    assert math.isnan(iou["bus"]) and math.isnan(iou["others"])
    assert metric.miou() == pytest.approx((100 / 3 + 100) / 2)


def test_class_only_predicted_counts_as_zero():
    metric = metric_of(([CAR, TRUCK], [CAR, CAR], [1, 1]))
    iou = metric.per_class_iou()
    assert iou["truck"] == 0.0 and iou["car"] == pytest.approx(50.0)
    assert metric.miou() == pytest.approx(25.0)


def test_masked_and_ignored_voxels_do_not_count():
    gt = [CAR, CAR, TRUCK, IGNORE_INDEX]
    pred = [CAR, BARRIER, BARRIER, BARRIER]
    metric = metric_of((pred, gt, np.array([True, False, False, True])))
    iou = metric.per_class_iou()
    assert iou["car"] == 100.0
    assert math.isnan(iou["barrier"]) and math.isnan(iou["truck"])
    assert metric.miou() == 100.0
    assert metric.hist.sum() == 1


def test_histogram_accumulates_over_frames_not_per_frame_means():
    frame_one = ([CAR] * 9 + [FREE_CLASS], [CAR] * 10, [1] * 10)  # car IoU 0.9
    frame_two = ([FREE_CLASS], [CAR], [1])  # car IoU 0
    metric = metric_of(frame_one, frame_two)
    assert metric.miou() == pytest.approx(100 * 9 / 11)  # not (90 + 0) / 2
    assert metric.frames == 2


def test_matches_brute_force_on_random_frames():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        gt = rng.choice([0, 2, 4, 7, 11, 15, FREE_CLASS, IGNORE_INDEX], size=(8, 8, 4)).astype(np.uint8)
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, NUM_CLASSES, gt.shape))
        pred = np.where(pred == IGNORE_INDEX, FREE_CLASS, pred).astype(np.uint8)
        frames.append((pred, gt, rng.random(gt.shape) < 0.7))
    assert metric_of(*frames).miou() == pytest.approx(brute_force_miou(frames))


def test_merge_and_state_sum_histograms():
    rng = np.random.default_rng(1)
    frames = [(rng.integers(0, NUM_CLASSES, (6, 6, 2)), rng.integers(0, NUM_CLASSES, (6, 6, 2)),
               rng.random((6, 6, 2)) < 0.5) for _ in range(4)]
    whole = metric_of(*frames)
    first, second = metric_of(*frames[:2]), metric_of(*frames[2:])
    first.merge(second.state())
    np.testing.assert_array_equal(first.hist, whole.hist)
    assert first.frames == 4 and first.miou() == whole.miou()
    third = metric_of(*frames[:1])
    third.merge(metric_of(*frames[1:]))
    np.testing.assert_array_equal(third.hist, whole.hist)
    with pytest.raises(ValueError, match="shape"):
        third.merge({"hist": np.zeros((17, 17)), "frames": 1})


def test_empty_metric_and_bad_input():
    metric = OccupancyMetric()
    assert math.isnan(metric.miou())
    with pytest.raises(ValueError, match="shapes differ"):
        metric.update(np.zeros((2, 2)), np.zeros((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="predicted classes"):
        metric.update(np.full(3, 18), np.zeros(3), np.ones(3))


def test_table_lists_every_evaluated_class_and_the_miou():
    metric = metric_of(([CAR, BARRIER], [CAR, CAR], [1, 1]))
    table = metric.table()
    for name in CLASS_NAMES[:FREE_CLASS]:
        assert name in table
    assert "free" not in table.split("\n", 1)[1]
    assert table.splitlines()[-1].split() == ["mIoU", f"{metric.miou():.2f}"]
    assert "50.00" in table and "nan" in table
