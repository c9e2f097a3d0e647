"""RayIoU's cost per frame (occupancy/ray_metrics.py `RayMetric.update`: both grids' traversals and the
counts), with one origin and with the usual eight, in one run.

Ground truth: examples/frame/labels.npz; prediction: `--pred pred.npy` (for example the demo model's
answer to examples/frame/), else the ground truth moved by one voxel along x. The origins: the frame's
LiDAR (0.94, 0, 1.84) m and, for eight, the LiDARs of frames 5 m apart along x, as a driving scene's
keyframes are. Median of `--repeats` runs, interleaved.

Run: `.venv/bin/python -m benchmarks.ray_iou [--pred pred.npy] [--repeats 5]`
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.http_predict import load_average, machine
from occupancy.ray_metrics import LIDAR_DIRECTIONS, MAX_ORIGINS, RayMetric

LABELS = Path("examples/frame/labels.npz")
LIDAR = np.array([0.94, 0.0, 1.84])
OCC3D_VAL_FRAMES = 6019


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pred", type=Path, help="a .npy prediction of examples/frame/")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    gt = np.load(LABELS)["semantics"]
    pred = np.load(args.pred) if args.pred else np.roll(gt, 1, axis=0)
    origin_sets = {count: LIDAR + np.outer(np.arange(count) - count // 2, [5.0, 0.0, 0.0])
                   for count in (1, MAX_ORIGINS)}
    seconds: dict[int, list[float]] = {count: [] for count in origin_sets}
    started_load = load_average()
    for _ in range(args.repeats):
        for count, origins in origin_sets.items():
            metric = RayMetric()
            started = time.perf_counter()
            metric.update(pred, gt, origins)
            seconds[count].append(time.perf_counter() - started)
    print(*machine(), sep="\n")
    print(f"- load average (1/5/15 min) at start {started_load}, at end {load_average()}")
    print(f"- prediction: {args.pred or 'ground truth moved by one voxel along x'}; median of "
          f"{args.repeats} interleaved runs\n")
    print("| origins | rays | ms per frame | rays per second | Occ3D val (6019 frames) |")
    print("| --- | --- | --- | --- | --- |")
    for count, times in seconds.items():
        median = statistics.median(times)
        rays = count * len(LIDAR_DIRECTIONS)
        print(f"| {count} | {rays:,} | {1000 * median:.0f} | {rays / median:,.0f} | "
              f"{OCC3D_VAL_FRAMES * median / 60:.1f} min |")


if __name__ == "__main__":
    main()
