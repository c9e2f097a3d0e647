"""Occ3D evaluation of a PyTorch checkpoint, an exported ONNX model, or saved predictions.

All three accumulate one `occupancy.metrics.OccupancyMetric` (a confusion histogram over the voxels
where `mask_camera` is set, mIoU over classes 0..16 with absent classes left out), the Occ3D
protocol, and, where the frames' poses are known (the data root's index), one
`occupancy.ray_metrics.RayMetric` (SparseOcc's RayIoU at 1, 2 and 4 m). Predictions are stored, and
read, as `<pred dir>/<scene name>/<sample token>/pred.npz` with `semantics` (uint8 X x Y x Z), the
layout of Occ3D's ground truth `gts/`.
"""

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from occupancy import model_contract
from occupancy.cameras import CAMERA_NAMES
from occupancy.data_root import LABELS_FILE, SampleEntry, read_labels
from occupancy.errors import InputError
from occupancy.geometry import pose_matrix
from occupancy.metrics import OccupancyMetric
from occupancy.model_contract import ModelMetadata
from occupancy.network_input import FAST, Resampling
from occupancy.ray_metrics import THRESHOLDS_M, FramePose, RayMetric, ray_origins
from occupancy.sequence import FrameMotion, PastFrame, SequenceHistory, SequenceRules, model_inputs
from training.data.dataset import OccupancyDataset, SampleBatch, collate

PREDICTION_FILE = "pred.npz"
Predictions = Iterator[tuple[SampleBatch, np.ndarray]]  # a batch and its B x X x Y x Z uint8 classes
RayOrigins = Mapping[str, np.ndarray]  # sample token -> (T, 3) RayIoU ray origins in its ego frame


@dataclass
class Scores:
    """mIoU and, where the samples' ray origins are known (from the poses of an index), RayIoU."""

    occupancy: OccupancyMetric
    rays: RayMetric | None
    origins: RayOrigins | None = field(default=None, repr=False)

    @classmethod
    def new(cls, origins: RayOrigins | None) -> "Scores":
        return cls(OccupancyMetric(), None if origins is None else RayMetric(), origins)

    def update(self, token: str, pred: np.ndarray, gt: np.ndarray, mask_camera: np.ndarray) -> None:
        self.occupancy.update(pred, gt, mask_camera)
        if self.rays is not None and self.origins is not None:
            if token not in self.origins:
                raise InputError(f"sample {token}: not in the index whose poses give the RayIoU rays")
            self.rays.update(pred, gt, self.origins[token])

    def table(self) -> str:
        """The mIoU table, then the RayIoU table (or why there is none)."""
        if self.rays is None:
            return self.occupancy.table() + "\nRayIoU: not computed (it needs the poses of a data root index)"
        return self.occupancy.table() + "\n\n" + self.rays.table()


def frame_pose(entry: Mapping) -> FramePose:
    """An index entry's ego pose (None if the index has none) and its LiDAR's position in its ego frame
    (the ego origin where the entry names no LiDAR)."""
    pose, lidar = entry.get("ego2global"), entry.get("lidar")
    return FramePose(
        ego2global=None if pose is None else pose_matrix(pose["translation"], pose["rotation"]),
        sensor_in_ego=np.asarray(lidar["sensor2ego"]["translation"] if lidar else (0.0, 0.0, 0.0), float),
    )


def scene_ray_origins(samples: Iterable[Mapping]) -> dict[str, np.ndarray]:
    """RayIoU ray origins of every sample of a split's index (ordered by scene, then time, as
    `occ prepare` writes it), from the LiDAR poses of the frames of its scene."""
    origins = {}
    for _, scene in groupby(samples, key=lambda entry: entry["scene_name"]):
        entries = list(scene)
        poses = [frame_pose(entry) for entry in entries]
        for index, entry in enumerate(entries):
            origins[entry["token"]] = ray_origins(poses, index)
    return origins


def eval_loader(data_root: Path, split: str, input_size: tuple[int, int], batch_size: int,
                num_workers: int, resampling: Resampling = FAST, history_frames: int = 0) -> DataLoader:
    """The split's frames with the test-time transform, in index order; with `history_frames`, each with
    the frames before it (temporal models, as the reference's test pipeline loads them)."""
    dataset = OccupancyDataset(data_root, split, input_size, resampling=resampling,
                               history_frames=history_frames)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate)


@torch.no_grad()
def predict_torch(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> Predictions:
    """Argmax classes of a PyTorch model in eval mode and float32, as the reference tests and as the
    exported model runs."""
    model.eval().to(device)
    for batch in loader:
        classes = model.predict(batch.camera_batch(device))
        yield batch, classes.to(torch.uint8).cpu().numpy()


def onnx_session(path: Path):
    """An ONNX Runtime session on the best provider and what the model says of itself; InputError unless its
    inputs are the contract's (a temporal model's too), or for a model exported for another channel order
    (fed B, G, R it would be silently wrong)."""
    import onnxruntime

    if not path.is_file():
        raise InputError(f"--onnx {path}: no such file")
    available = onnxruntime.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as error:  # onnxruntime raises its own types for unreadable models
        raise InputError(f"--onnx {path}: not a loadable ONNX model ({error})") from None
    metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, "--onnx")
    names = tuple(node.name for node in session.get_inputs())
    if set(names) != set(metadata.input_names):
        raise InputError(f"--onnx {path}: inputs {names}, expected {metadata.input_names}")
    return session, metadata


def predict_onnx(session, metadata: ModelMetadata, loader: DataLoader,
                 rules: SequenceRules | None = None) -> Predictions:
    """Classes from the exported graph, fed the contract's inputs (uint8 B, G, R images, float32 geometry).

    A temporal model streams each scene's frames in index order (the loader's) through its state, with the
    history the gateway would give them (occupancy.sequence `rules`, the model's trained frame gap): the
    exported model's accuracy the way it is served.
    """
    if metadata.temporal:
        rules = (rules or SequenceRules()).for_model(metadata.frame_gap_s)
        yield from _stream_onnx(session, metadata, loader, rules)
        return
    for batch in loader:
        (semantics,) = session.run([model_contract.SEMANTICS], batch.contract_inputs())
        yield batch, semantics.astype(np.uint8)


def _stream_onnx(session, metadata: ModelMetadata, loader: DataLoader, rules: SequenceRules) -> Predictions:
    samples = loader.dataset.samples  # in the loader's order: it does not shuffle
    zero_state = model_contract.zero_state(metadata.state)
    scene, history, position = None, SequenceHistory(rules), 0
    for batch in loader:
        inputs = batch.contract_inputs()
        classes = []
        for i in range(len(batch.tokens)):
            entry = samples[position]
            position += 1
            if entry["scene_name"] != scene:  # one scene at a time: a finished one's states are let go
                scene, history = entry["scene_name"], SequenceHistory(rules)
            frame = {name: value[i:i + 1] for name, value in inputs.items()}
            motion = entry_motion(entry, frame)
            step = history.step(motion)
            semantics, *state = session.run(list(metadata.output_names),
                                            frame | model_inputs(step, motion, zero_state))
            kept = {tensor.name: value for tensor, value in zip(metadata.state, state, strict=True)}
            history.keep(PastFrame(motion, step.history, kept))
            classes.append(semantics.astype(np.uint8))
        yield batch, np.concatenate(classes)


def entry_motion(entry: SampleEntry, frame: Mapping[str, np.ndarray]) -> FrameMotion:
    """An index entry's FrameMotion (its sample timestamp, each camera's mounting and ego pose), with the
    intrinsics and image transform of its contract inputs `frame` (batch 1)."""
    cameras = [entry["cameras"][name] for name in CAMERA_NAMES]
    return FrameMotion.of(entry["timestamp"], np.stack([pose_matrix(**c["sensor2ego"]) for c in cameras]),
                          np.stack([pose_matrix(**c["ego2global"]) for c in cameras]),
                          frame[model_contract.INTRINSICS][0], frame[model_contract.POST_ROTS][0],
                          frame[model_contract.POST_TRANS][0])


def accumulate(predictions: Predictions, save_dir: Path | None = None,
               origins: RayOrigins | None = None) -> Scores:
    """Score predictions against their batches' labels (RayIoU too, given the samples' ray origins);
    optionally store them as pred.npz files."""
    scores = Scores.new(origins)
    for batch, classes in predictions:
        for i, (scene, token) in enumerate(zip(batch.scene_names, batch.tokens, strict=True)):
            gt, mask_camera = batch.semantics[i].numpy(), batch.mask_camera[i].numpy()
            scores.update(token, classes[i], gt, mask_camera)
            if save_dir:
                save_prediction(save_dir, scene, token, classes[i])
    return scores


def save_prediction(pred_dir: Path, scene: str, token: str, semantics: np.ndarray) -> Path:
    path = pred_dir / scene / token / PREDICTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, semantics=np.asarray(semantics, dtype=np.uint8))
    return path


def read_prediction(path: Path) -> np.ndarray:
    try:
        with np.load(path) as content:
            return content["semantics"]
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"{path}: not a prediction file with `semantics` ({error})") from None


def saved_pairs(gt_root: Path, pred_dir: Path) -> Iterable[tuple[Path, Path]]:
    """(labels.npz, pred.npz) of every prediction under pred_dir; InputError for a missing ground truth."""
    predictions = sorted(pred_dir.glob(f"*/*/{PREDICTION_FILE}"))
    if not predictions:
        raise InputError(f"--pred-dir {pred_dir}: no <scene>/<token>/{PREDICTION_FILE} files")
    for prediction in predictions:
        token_dir = prediction.parent.relative_to(pred_dir)
        labels = gt_root / token_dir / LABELS_FILE
        if not labels.is_file():
            raise InputError(f"{labels}: no ground truth for the prediction {prediction}")
        yield labels, prediction


def evaluate_saved(gt_root: Path, pred_dir: Path, origins: RayOrigins | None = None) -> Scores:
    """Score saved predictions against Occ3D ground truth `<gt_root>/<scene>/<token>/labels.npz` (RayIoU
    too, given the samples' ray origins)."""
    scores = Scores.new(origins)
    for labels, prediction in saved_pairs(gt_root, pred_dir):
        truth = read_labels(labels)
        pred = read_prediction(prediction)
        if pred.shape != truth.semantics.shape:
            raise InputError(f"{prediction}: semantics of shape {pred.shape}, ground truth "
                             f"{truth.semantics.shape}")
        scores.update(prediction.parent.name, pred, truth.semantics, truth.mask_camera)
    return scores


def metric_json(scores: Scores) -> dict:
    """`{"mIoU": ..., "per_class": {name: IoU}, "frames": N}` in percent, and where computed `"RayIoU"`,
    `"RayIoU@1"`, `"@2"`, `"@4"` (the reference's keys) and `"ray_per_class": {name: {"RayIoU@1": ...}}`;
    classes absent from the data are null."""
    metric = scores.occupancy
    report = {"mIoU": _number(metric.miou()),
              "per_class": {name: _number(value) for name, value in metric.per_class_iou().items()},
              "frames": metric.frames}
    if scores.rays is not None:
        keys = [f"RayIoU@{threshold:g}" for threshold in THRESHOLDS_M]
        report["RayIoU"] = _number(scores.rays.mean())
        report.update(zip(keys, map(_number, scores.rays.at_thresholds()), strict=True))
        report["ray_per_class"] = {name: dict(zip(keys, map(_number, values), strict=True))
                                   for name, values in scores.rays.per_class().items()}
        report["rays"] = scores.rays.rays
    return report


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)
