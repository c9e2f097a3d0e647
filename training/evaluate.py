"""Occ3D evaluation of a PyTorch checkpoint, an exported ONNX model, or saved predictions.

All three accumulate one `occupancy.metrics.OccupancyMetric` (a confusion histogram over the voxels
where `mask_camera` is set, mIoU over classes 0..16 with absent classes left out), the Occ3D
protocol. Predictions are stored, and read, as `<pred dir>/<scene name>/<sample token>/pred.npz`
with `semantics` (uint8 X x Y x Z), the layout of Occ3D's ground truth `gts/`.
"""

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from occupancy import model_contract
from occupancy.data_root import LABELS_FILE, read_labels
from occupancy.errors import InputError
from occupancy.metrics import OccupancyMetric
from training.data.dataset import OccupancyDataset, SampleBatch, collate

PREDICTION_FILE = "pred.npz"
Predictions = Iterator[tuple[SampleBatch, np.ndarray]]  # a batch and its B x X x Y x Z uint8 classes


def eval_loader(data_root: Path, split: str, input_size: tuple[int, int], batch_size: int,
                num_workers: int, history_frames: int = 0) -> DataLoader:
    """The split's frames with the test-time transform, in index order; with `history_frames`, each with
    the frames before it (temporal models, as the reference's test pipeline loads them)."""
    dataset = OccupancyDataset(data_root, split, input_size, history_frames=history_frames)
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
    """An ONNX Runtime session on the best provider; InputError unless its inputs are the contract's."""
    import onnxruntime

    if not path.is_file():
        raise InputError(f"--onnx {path}: no such file")
    available = onnxruntime.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as error:  # onnxruntime raises its own types for unreadable models
        raise InputError(f"--onnx {path}: not a loadable ONNX model ({error})") from None
    names = tuple(node.name for node in session.get_inputs())
    if set(names) != set(model_contract.INPUT_NAMES):
        raise InputError(f"--onnx {path}: inputs {names}, expected {model_contract.INPUT_NAMES}")
    return session


def onnx_input_size(session) -> tuple[int, int]:
    """The model's (H, W): from its `occ.input_size` metadata, else the images input's static shape."""
    metadata = session.get_modelmeta().custom_metadata_map
    if model_contract.META_INPUT_SIZE in metadata:
        height, width = json.loads(metadata[model_contract.META_INPUT_SIZE])
        return int(height), int(width)
    images = next(node for node in session.get_inputs() if node.name == model_contract.IMAGES)
    height, width = images.shape[-2:]
    if not (isinstance(height, int) and isinstance(width, int)):
        raise InputError("the ONNX model has no occ.input_size metadata and a dynamic image size")
    return height, width


def predict_onnx(session, loader: DataLoader) -> Predictions:
    """Classes from the exported graph, fed the contract's inputs (uint8 RGB images, float32 geometry)."""
    for batch in loader:
        (semantics,) = session.run([model_contract.SEMANTICS], batch.contract_inputs())
        yield batch, semantics.astype(np.uint8)


def accumulate(predictions: Predictions, save_dir: Path | None = None) -> OccupancyMetric:
    """Score predictions against their batches' labels; optionally store them as pred.npz files."""
    metric = OccupancyMetric()
    for batch, classes in predictions:
        for i, (scene, token) in enumerate(zip(batch.scene_names, batch.tokens, strict=True)):
            metric.update(classes[i], batch.semantics[i].numpy(), batch.mask_camera[i].numpy())
            if save_dir:
                save_prediction(save_dir, scene, token, classes[i])
    return metric


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


def evaluate_saved(gt_root: Path, pred_dir: Path) -> OccupancyMetric:
    """Score saved predictions against Occ3D ground truth `<gt_root>/<scene>/<token>/labels.npz`."""
    metric = OccupancyMetric()
    for labels, prediction in saved_pairs(gt_root, pred_dir):
        truth = read_labels(labels)
        pred = read_prediction(prediction)
        if pred.shape != truth.semantics.shape:
            raise InputError(f"{prediction}: semantics of shape {pred.shape}, ground truth "
                             f"{truth.semantics.shape}")
        metric.update(pred, truth.semantics, truth.mask_camera)
    return metric


def metric_json(metric: OccupancyMetric) -> dict:
    """`{"mIoU": ..., "per_class": {name: IoU}}` in percent; classes absent from the data are null."""
    def number(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 4)

    return {"mIoU": number(metric.miou()),
            "per_class": {name: number(value) for name, value in metric.per_class_iou().items()},
            "frames": metric.frames}
