"""The Occ3D-nuScenes mIoU, as the Occ3D / FlashOcc `Metric_mIoU` computes it.

One confusion histogram over all 18 classes (rows ground truth, columns prediction) is summed
over the whole evaluation set, counting only voxels where `mask_camera` is set and ground
truth is a class index (255 is ignored). IoU of class c = hist[c, c] / (row c + column c -
hist[c, c]); a class absent from both ground truth and prediction is NaN (0 / 0). The mIoU is
the NaN-ignoring mean over classes 0..16, in percent: free takes part in the histogram (a car
predicted as free is a miss) but not in the mean.
"""

import math

import numpy as np

from occupancy.classes import CLASS_NAMES, FREE_CLASS, NUM_CLASSES


class OccupancyMetric:
    """Accumulates the confusion histogram frame by frame; `merge`/`state` sum it across processes."""

    def __init__(self) -> None:
        self.hist = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)  # [ground truth, prediction]
        self.frames = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, mask_camera: np.ndarray) -> None:
        """Add one frame: class grids `pred`, `gt` and the bool/uint8 `mask_camera`, all [X, Y, Z]."""
        pred, gt, mask = np.asarray(pred), np.asarray(gt), np.asarray(mask_camera) != 0
        if not pred.shape == gt.shape == mask.shape:
            raise ValueError(f"shapes differ: pred {pred.shape}, gt {gt.shape}, mask_camera {mask.shape}")
        gt, pred = gt[mask].astype(np.int64), pred[mask].astype(np.int64)
        labelled = (gt >= 0) & (gt < NUM_CLASSES)  # drops the ignore label 255
        gt, pred = gt[labelled], pred[labelled]
        if pred.size and (pred.min() < 0 or pred.max() >= NUM_CLASSES):
            raise ValueError(f"predicted classes must lie in 0..{NUM_CLASSES - 1}, "
                             f"got {pred.min()}..{pred.max()}")
        counts = np.bincount(gt * NUM_CLASSES + pred, minlength=NUM_CLASSES**2)
        self.hist += counts.reshape(NUM_CLASSES, NUM_CLASSES)
        self.frames += 1

    def iou(self) -> np.ndarray:
        """IoU of every class 0..17 as a fraction; NaN for a class in neither ground truth nor prediction."""
        intersection = np.diag(self.hist).astype(np.float64)
        union = self.hist.sum(axis=0) + self.hist.sum(axis=1) - intersection
        with np.errstate(divide="ignore", invalid="ignore"):
            return intersection / union

    def per_class_iou(self) -> dict[str, float]:
        """IoU in percent of each evaluated class (all but free), by class name; NaN for absent classes."""
        iou = self.iou()
        evaluated = (index for index in range(NUM_CLASSES) if index != FREE_CLASS)
        return {CLASS_NAMES[index]: float(iou[index] * 100) for index in evaluated}

    def miou(self) -> float:
        """Mean IoU in percent over the classes that occur (NaN when none does)."""
        present = [value for value in self.per_class_iou().values() if not math.isnan(value)]
        return sum(present) / len(present) if present else math.nan

    def table(self) -> str:
        """A readable table: one row per class, then the mIoU, with the frame count."""
        width = max(len(name) for name in CLASS_NAMES)
        lines = [f"{'class':<{width}}  IoU (%)   ({self.frames} frames)"]
        lines += [f"{name:<{width}}  {value:7.2f}" for name, value in self.per_class_iou().items()]
        lines.append(f"{'mIoU':<{width}}  {self.miou():7.2f}")
        return "\n".join(lines)

    def state(self) -> dict[str, np.ndarray | int]:
        """What another process needs to merge: the histogram (a copy) and the frame count."""
        return {"hist": self.hist.copy(), "frames": self.frames}

    def merge(self, other: "OccupancyMetric | dict[str, np.ndarray | int]") -> None:
        """Add another metric, or its `state()`, into this one (sums are exact: integer counts)."""
        state = other.state() if isinstance(other, OccupancyMetric) else other
        hist = np.asarray(state["hist"])
        if hist.shape != self.hist.shape:
            raise ValueError(f"histogram shape {hist.shape} does not match {self.hist.shape}")
        self.hist += hist.astype(np.int64)
        self.frames += int(state["frames"])
