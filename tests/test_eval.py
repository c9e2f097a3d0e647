"""`occ eval` in its three forms, against hand-computed and brute-force IoUs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from service_fixtures import test_metadata
from tiny_dataset import MICRO_CONFIG, write_labels, write_tiny_dataset

from occ.cli import main as occ_main
from occupancy import model_contract
from occupancy.classes import CLASS_NAMES, FREE_CLASS, NUM_CLASSES
from occupancy.ray_metrics import RayMetric
from training.data.dataset import OccupancyDataset, collate
from training.evaluate import save_prediction
from training.models.configs import CONFIGS, build_model

CAR, TRUCK = CLASS_NAMES.index("car"), CLASS_NAMES.index("truck")
ROAD = CLASS_NAMES.index("driveable_surface")


def brute_force_iou(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float | None]:
    """Per-class IoU (percent) over all frames' visible voxels, counted class by class with plain sums."""
    result = {}
    for c in range(NUM_CLASSES):
        if c == FREE_CLASS:
            continue
        inter = sum(int(((gt == c) & (pred == c) & mask).sum()) for pred, gt, mask in pairs)
        union = sum(int((((gt == c) | (pred == c)) & mask & (gt < NUM_CLASSES)).sum())
                    for pred, gt, mask in pairs)
        result[CLASS_NAMES[c]] = 100 * inter / union if union else None
    return result


def assert_matches(report: dict, expected: dict[str, float | None]) -> None:
    for name, value in expected.items():
        assert (report["per_class"][name] is None) == (value is None), name
        if value is not None:
            assert report["per_class"][name] == pytest.approx(value, abs=1e-3), name
    present = [v for v in expected.values() if v is not None]
    assert report["mIoU"] == pytest.approx(sum(present) / len(present), abs=1e-3)


def test_saved_predictions_give_hand_computed_ious(tmp_path, capsys):
    gt_root, pred_dir = tmp_path / "gts", tmp_path / "preds"
    shape = (200, 200, 16)
    v1, v2, v3, v4, hidden = (0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0)
    # Frame A: car, car, truck, free visible; predicted car, truck, truck, car. A hidden voxel is ignored.
    gt, pred, mask = np.full(shape, FREE_CLASS), np.full(shape, FREE_CLASS), np.zeros(shape, bool)
    for voxel, label, guess in ((v1, CAR, CAR), (v2, CAR, TRUCK), (v3, TRUCK, TRUCK), (v4, FREE_CLASS, CAR)):
        gt[voxel], pred[voxel], mask[voxel] = label, guess, True
    gt[hidden], pred[hidden] = CAR, TRUCK
    write_labels(gt_root / "scene-a" / "tok-a" / "labels.npz", gt, mask)
    save_prediction(pred_dir, "scene-a", "tok-a", pred)
    # Frame B: a correct car and a correct road voxel.
    gt, pred, mask = np.full(shape, FREE_CLASS), np.full(shape, FREE_CLASS), np.zeros(shape, bool)
    for voxel, label in ((v1, CAR), (v2, ROAD)):
        gt[voxel], pred[voxel], mask[voxel] = label, label, True
    write_labels(gt_root / "scene-b" / "tok-b" / "labels.npz", gt, mask)
    save_prediction(pred_dir, "scene-b", "tok-b", pred)

    out = tmp_path / "metrics.json"
    assert occ_main(["eval", "--gt-root", str(gt_root), "--pred-dir", str(pred_dir), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    # car: 2 hits; 3 in ground truth, 3 predicted (one on free) -> 2 / (3 + 3 - 2). truck: 1 / (1 + 2 - 1).
    expected = {name: None for name in CLASS_NAMES if name != "free"}
    expected.update(car=50.0, truck=50.0, driveable_surface=100.0)
    assert_matches(report, expected)
    assert report["mIoU"] == pytest.approx(200 / 3)
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "66.67" in printed


def test_prediction_without_ground_truth_is_named(tmp_path, capsys):
    save_prediction(tmp_path / "preds", "scene-x", "tok-x", np.zeros((200, 200, 16), np.uint8))
    assert occ_main(["eval", "--gt-root", str(tmp_path / "gts"), "--pred-dir", str(tmp_path / "preds")]) == 2
    assert "scene-x/tok-x/labels.npz" in capsys.readouterr().err


@pytest.fixture
def data_root(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "data", scenes=2, frames=2, val_scenes=1)


def test_checkpoint_eval_agrees_with_its_saved_predictions(data_root, tmp_path, monkeypatch):
    monkeypatch.setitem(CONFIGS, MICRO_CONFIG.name, MICRO_CONFIG)
    torch.manual_seed(0)
    model = build_model(MICRO_CONFIG).eval()
    checkpoint = tmp_path / "model.pt"
    torch.save({"config": MICRO_CONFIG.name, "state_dict": model.state_dict()}, checkpoint)
    preds, direct, saved = tmp_path / "preds", tmp_path / "direct.json", tmp_path / "saved.json"
    assert occ_main(["eval", "--checkpoint", str(checkpoint), "--data-root", str(data_root),
                     "--num-workers", "0", "--save-preds", str(preds), "--json", str(direct)]) == 0
    assert occ_main(["eval", "--pred-dir", str(preds), "--data-root", str(data_root),
                     "--json", str(saved)]) == 0
    report = json.loads(saved.read_text())
    assert json.loads(direct.read_text()) == report
    assert {"RayIoU", "RayIoU@1", "RayIoU@2", "RayIoU@4", "ray_per_class"} <= set(report)

    dataset = OccupancyDataset(data_root, "val", MICRO_CONFIG.input_size)
    pairs = []
    for index, entry in enumerate(dataset.samples):
        sample = dataset[index]
        with torch.no_grad():
            expected = model.predict(collate([sample]).camera_batch())[0].numpy()
        stored = np.load(preds / entry["scene_name"] / entry["token"] / "pred.npz")["semantics"]
        np.testing.assert_array_equal(stored, expected)
        pairs.append((stored, sample.semantics.numpy(), sample.mask_camera.numpy()))
    assert_matches(json.loads(direct.read_text()), brute_force_iou(pairs))


def with_poses(data_root: Path) -> dict[str, np.ndarray]:
    """Give the val index's frames ego poses 6 m apart along x and a LiDAR 1.8 m up; their ray origins."""
    index_file = data_root / "occ_index_val.json"
    index = json.loads(index_file.read_text())
    for i, entry in enumerate(index["samples"]):
        entry["ego2global"] = {"translation": [500.0 + 6.0 * i, 20.0, 0.0], "rotation": [1.0, 0.0, 0.0, 0.0]}
        entry["lidar"] = {"sensor2ego": {"translation": [1.0, 0.0, 1.8], "rotation": [1.0, 0.0, 0.0, 0.0]}}
    index_file.write_text(json.dumps(index))
    frames = len(index["samples"])
    return {entry["token"]: np.array([[1.0 + 6.0 * (j - i), 0.0, 1.8] for j in range(frames)])
            for i, entry in enumerate(index["samples"])}


def test_saved_predictions_give_the_rayiou_of_the_scenes_lidar_origins(data_root, tmp_path, capsys):
    origins = with_poses(data_root)
    preds, out = tmp_path / "preds", tmp_path / "rays.json"
    expected = RayMetric()
    for entry in json.loads((data_root / "occ_index_val.json").read_text())["samples"]:
        gt = np.load(data_root / entry["occ_path"])["semantics"]
        pred = np.roll(gt, 1, axis=0)  # one voxel off along x: depth errors, and classes off
        save_prediction(preds, entry["scene_name"], entry["token"], pred)
        expected.update(pred, gt, origins[entry["token"]])
    assert occ_main(["eval", "--pred-dir", str(preds), "--data-root", str(data_root),
                     "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["RayIoU"] == pytest.approx(expected.mean(), abs=1e-4)
    assert [report[f"RayIoU@{t}"] for t in (1, 2, 4)] == pytest.approx(expected.at_thresholds(), abs=1e-4)
    car = expected.per_class()["car"]
    assert report["ray_per_class"]["car"]["RayIoU@2"] == pytest.approx(car[1], abs=1e-4)
    assert 0 < report["RayIoU"] < 100 and report["rays"] == expected.rays
    printed = capsys.readouterr().out
    assert "RayIoU@1" in printed and f"{expected.mean():.2f}" in printed
    # Without a data root there are no poses: mIoU only, and the table says why.
    assert occ_main(["eval", "--pred-dir", str(preds), "--gt-root", str(data_root / "gts"),
                     "--json", str(out)]) == 0
    assert "RayIoU" not in json.loads(out.read_text()) and "RayIoU: not computed" in capsys.readouterr().out


def constant_onnx_model(path: Path, input_size: tuple[int, int], label: int) -> None:
    """An ONNX model with the contract's inputs that answers `label` for every voxel."""
    import onnx
    from onnx import TensorProto, helper

    height, width = input_size
    float_inputs = {model_contract.INTRINSICS: [1, 6, 3, 3], model_contract.SENSOR2EGO: [1, 6, 4, 4],
                    model_contract.POST_ROTS: [1, 6, 3, 3], model_contract.POST_TRANS: [1, 6, 3]}
    image_shape = [1, 6, 3, height, width]
    inputs = [helper.make_tensor_value_info(model_contract.IMAGES, TensorProto.UINT8, image_shape)]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
               for name, shape in float_inputs.items()]
    grid = helper.make_tensor("grid", TensorProto.UINT8, [1, 200, 200, 16], [label] * (200 * 200 * 16))
    node = helper.make_node("Constant", [], [model_contract.SEMANTICS], value=grid)
    output = helper.make_tensor_value_info(model_contract.SEMANTICS, TensorProto.UINT8, [1, 200, 200, 16])
    graph = helper.make_graph([node], "constant", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, test_metadata(input_size).to_props())
    onnx.save(model, path)


def test_onnx_eval_feeds_the_contract_and_scores(data_root, tmp_path):
    onnx_path, out = tmp_path / "model.onnx", tmp_path / "onnx.json"
    constant_onnx_model(onnx_path, (32, 96), ROAD)
    assert occ_main(["eval", "--onnx", str(onnx_path), "--data-root", str(data_root), "--num-workers", "0",
                     "--json", str(out)]) == 0
    dataset = OccupancyDataset(data_root, "val", (32, 96))
    pairs = [(np.full((200, 200, 16), ROAD), s.semantics.numpy(), s.mask_camera.numpy())
             for s in (dataset[i] for i in range(len(dataset)))]
    assert_matches(json.loads(out.read_text()), brute_force_iou(pairs))
