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
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.http_predict import load_average
from benchmarks.timing import interleaved, markdown_table, report_header
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
    started_load = load_average()
    seconds = interleaved({count: partial(RayMetric().update, pred, gt, origins)
                           for count, origins in origin_sets.items()}, args.repeats)
    print(*report_header(started_load), sep="\n")
    print(f"- prediction: {args.pred or 'ground truth moved by one voxel along x'}; median of "
          f"{args.repeats} interleaved runs\n")
    rows = []
    for count, times in seconds.items():
        median, rays = statistics.median(times), count * len(LIDAR_DIRECTIONS)
        rows.append([str(count), f"{rays:,}", f"{1000 * median:.0f}", f"{rays / median:,.0f}",
                     f"{OCC3D_VAL_FRAMES * median / 60:.1f} min"])
    header = ["origins", "rays", "ms per frame", "rays per second", f"Occ3D val ({OCC3D_VAL_FRAMES} frames)"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
