"""Model zoo: reference parameter counts, output shapes and axes, the masked loss, `occ models`."""

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F

from occ.cli import main
from occupancy.classes import FREE_CLASS, IGNORE_INDEX, NUM_CLASSES
from training.batch import CameraBatch, OccupancyTargets
from training.models.configs import CONFIGS, build_model
from training.models.heads import BEVOCCHead2D, BEVOCCHead3D
from training.models.losses import (
    OCC3D_CLASS_FREQUENCIES,
    cross_entropy_loss,
    occ3d_class_weights,
    scene_class_affinity_loss,
)

# Counted on models built from the reference code (FlashOCC configs named in configs.py).
REFERENCE_PARAMS = {
    "bevdetocc-r50-256x704": 29_021_482,
    "flashocc-r50-256x704": 44_744_312,
    "flashocc-r50-m0-256x704": 39_938_892,
}


def _count(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(CONFIGS[name]).parameters())


def camera_batch(input_size: tuple[int, int], batch: int = 1) -> CameraBatch:
    """Six cameras around the ego at the nuScenes test-time transform (scale 0.44, bottom crop)."""
    height, width = input_size
    scale = width / 1600
    sensor2ego = torch.eye(4).repeat(batch, 6, 1, 1)
    optical_to_ego = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    for i, yaw in enumerate(torch.tensor([55.0, 0, -55, 110, 180, -110]).deg2rad()):
        c, s = torch.cos(yaw), torch.sin(yaw)
        sensor2ego[:, i, :3, :3] = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ optical_to_ego
        sensor2ego[:, i, :3, 3] = torch.tensor([c, s, 1.5])
    intrinsics = torch.tensor([[1260.0, 0, 800], [0, 1260, 450], [0, 0, 1]]).repeat(batch, 6, 1, 1)
    post_rots = torch.diag(torch.tensor([scale, scale, 1.0])).repeat(batch, 6, 1, 1)
    post_trans = torch.tensor([0.0, height - 900 * scale, 0]).repeat(batch, 6, 1)
    images = torch.randn(batch, 6, 3, height, width, generator=torch.Generator().manual_seed(0))
    bda = torch.eye(3).repeat(batch, 1, 1)
    return CameraBatch(images, intrinsics, sensor2ego, post_rots, post_trans, bda)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_reference_configs_have_the_reference_parameter_counts(name):
    assert _count(name) == REFERENCE_PARAMS[name]


def test_every_config_keeps_its_geometry():
    for config in CONFIGS.values():
        assert config.grid.shape == (200, 200, 16) and config.num_classes == NUM_CLASSES
        assert config.input_size[0] % 16 == 0 and config.input_size[1] % 16 == 0
    assert CONFIGS["flashocc-r50-256x704"].depth_bins.count == 88
    assert CONFIGS["flashocc-r50-m0-256x704"].depth_bins.count == 44
    assert CONFIGS["flashocc-r50-256x704"].pool_grid.shape == (200, 200, 1)
    assert CONFIGS["bevdetocc-r50-256x704"].pool_grid.shape == (200, 200, 16)


def test_demo_tiny_forward_predict_and_loss():
    config = CONFIGS["demo-tiny"]
    torch.manual_seed(0)
    model = build_model(config).eval()
    batch = camera_batch(config.input_size)
    with torch.no_grad():
        model(batch)  # warm-up
        start = time.perf_counter()
        logits = model(batch)
        print(f"demo-tiny forward, batch 1: {time.perf_counter() - start:.3f} s")
        prediction = model.predict(batch)
    assert logits.shape == (1, 200, 200, 16, NUM_CLASSES)
    assert prediction.shape == (1, 200, 200, 16)
    assert torch.equal(prediction, logits.argmax(-1))

    model.train()
    semantics = torch.randint(0, NUM_CLASSES, (1, 200, 200, 16))
    targets = OccupancyTargets(semantics, torch.rand(1, 200, 200, 16) > 0.5)
    loss = model.loss(model(batch), targets)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.img_backbone.conv1.weight.grad.abs().sum() > 0  # gradients reach through the pooling


@pytest.mark.slow
def test_flashocc_r50_full_size_forward():
    config = CONFIGS["flashocc-r50-256x704"]
    model = build_model(config).eval()
    with torch.no_grad():
        start = time.perf_counter()
        logits = model(camera_batch(config.input_size))
        print(f"flashocc-r50-256x704 forward, batch 1: {time.perf_counter() - start:.2f} s")
    assert logits.shape == (1, 200, 200, 16, NUM_CLASSES)


def test_head_2d_axes_and_channel_to_height_split():
    head = BEVOCCHead2D(in_dim=6, out_dim=4, Dz=3, num_classes=5).eval()
    feat = torch.randn(2, 6, 7, 9)  # B x C x Y x X
    logits = head(feat)
    assert logits.shape == (2, 9, 7, 3, 5)  # B x X x Y x Z x classes
    hidden = head.final_conv(feat)
    x, y = 4, 2
    per_cell = head.predicter(hidden[1, :, y, x])  # Dz * classes, slice-major
    torch.testing.assert_close(logits[1, x, y], per_cell.view(3, 5))


def test_head_3d_axes():
    head = BEVOCCHead3D(in_dim=3, out_dim=4, num_classes=5).eval()
    feat = torch.randn(1, 3, 2, 5, 6)  # B x C x Z x Y x X
    logits = head(feat)
    assert logits.shape == (1, 6, 5, 2, 5)
    x, y, z = 5, 1, 1
    torch.testing.assert_close(logits[0, x, y, z], head.predicter(head.final_conv(feat)[0, :, z, y, x]))


def _brute_force_loss(logits, semantics, mask, weights=None):
    total, norm = 0.0, 0.0
    for index in mask.nonzero().tolist():
        label = int(semantics[tuple(index)])
        if label == IGNORE_INDEX:
            norm += 0.0 if weights is not None else 1.0
            continue
        w = 1.0 if weights is None else float(weights[label])
        total += -w * float(F.log_softmax(logits[tuple(index)].double(), -1)[label])
        norm += w
    return total / norm


@pytest.mark.parametrize("class_balance", [False, True])
def test_loss_is_the_mean_over_camera_visible_voxels(class_balance):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 3, 2, 6, generator=gen)
    semantics = torch.randint(0, 6, (2, 4, 3, 2), generator=gen)
    semantics[0, 0, 0, 0] = IGNORE_INDEX
    mask = torch.rand(2, 4, 3, 2, generator=gen) > 0.4
    mask[0, 0, 0, 0] = True
    head = BEVOCCHead2D(num_classes=6, class_balance=class_balance)
    weights = occ3d_class_weights(6) if class_balance else None
    loss = head.loss(logits, OccupancyTargets(semantics, mask))
    assert loss.item() == pytest.approx(_brute_force_loss(logits, semantics, mask, weights), rel=1e-5)

    # A voxel the cameras do not see changes nothing, whatever its logits and label.
    hidden = tuple((~mask).nonzero()[0].tolist())
    logits2, semantics2 = logits.clone(), semantics.clone()
    logits2[hidden] = 100 * torch.randn(6)
    semantics2[hidden] = (semantics[hidden] + 1) % 6
    assert torch.equal(head.loss(logits2, OccupancyTargets(semantics2, mask)), loss)

    grad_logits = logits.clone().requires_grad_()
    head.loss(grad_logits, OccupancyTargets(semantics, mask)).backward()
    assert grad_logits.grad[~mask].abs().max() == 0 and grad_logits.grad[mask].abs().max() > 0


def test_cross_entropy_of_no_voxels_is_zero():
    assert cross_entropy_loss(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)).item() == 0.0


def _affinity_by_loops(probabilities: torch.Tensor, labels: torch.Tensor, free: int) -> float:
    """MonoScene's sem_scal + geo_scal, one class at a time over the visible voxels' probabilities."""
    def terms(p: torch.Tensor, target: torch.Tensor) -> float:
        hits = float((p * target).sum())
        losses = [-math.log(hits / float(p.sum())), -math.log(hits / float(target.sum()))]
        negatives = 1 - target
        return sum(losses) - math.log(float(((1 - p) * negatives).sum()) / float(negatives.sum()))

    present = [k for k in range(probabilities.shape[1]) if (labels == k).any()]
    semantic = sum(terms(probabilities[:, k], (labels == k).double()) for k in present) / len(present)
    return semantic + terms(1 - probabilities[:, free], (labels != free).double())


def test_scene_class_affinity_loss_is_per_class_precision_recall_specificity():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 3, 2, 6, generator=gen)
    semantics = torch.randint(0, 5, (2, 4, 3, 2), generator=gen)  # class 1 absent: not averaged in
    semantics[semantics == 1] = 5
    semantics[0, 0, 0, 0] = IGNORE_INDEX
    mask = torch.rand(2, 4, 3, 2, generator=gen) > 0.3
    keep = mask & (semantics != IGNORE_INDEX)
    expected = _affinity_by_loops(logits[keep].double().softmax(-1), semantics[keep], free=5)
    loss = scene_class_affinity_loss(logits[mask], semantics[mask], free_index=5)  # ignored labels skipped
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    # Confident, right predictions cost nothing; the gradient stays finite with absent classes.
    perfect = (50.0 * F.one_hot(semantics[mask].clamp(max=5), 6).float()).requires_grad_()
    loss = scene_class_affinity_loss(perfect, semantics[mask], free_index=5)
    loss.backward()
    assert loss.item() < 1e-4 and perfect.grad.isfinite().all()


def test_class_weights_are_inverse_log_frequencies():
    weights = occ3d_class_weights()
    assert weights.shape == (18,)
    assert weights[17].item() == pytest.approx(1 / 21.3612, rel=1e-4)  # free: ln(1.89e9) = 21.361
    assert weights[0].item() == pytest.approx(1 / 13.7579, rel=1e-4)  # others: ln(944004) = 13.758
    assert int(torch.argmax(weights)) == OCC3D_CLASS_FREQUENCIES.index(min(OCC3D_CLASS_FREQUENCIES))


def test_occ_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(CONFIGS)
    for name, params in REFERENCE_PARAMS.items():
        assert rows[name]["params"] == params and rows[name]["input_size"] == [256, 704]
    assert rows["demo-tiny"]["params"] < 5_000_000 and rows["demo-tiny"]["description"]


def test_occ_models_state_dict_lists_the_checkpoint_keys(capsys):
    assert main(["models", "--state-dict", "demo-tiny"]) == 0
    shapes = json.loads(capsys.readouterr().out)
    expected = build_model(CONFIGS["demo-tiny"]).state_dict()
    assert list(shapes) == list(expected)
    assert all(shapes[key] == list(value.shape) for key, value in expected.items())
    assert "img_view_transformer.depth_net.weight" in shapes and "occ_head.predicter.2.bias" in shapes


def test_occ_models_unknown_name_is_one_line_error(capsys):
    assert main(["models", "--state-dict", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "flashocc-r50-256x704" in err and "Traceback" not in err


@pytest.mark.parametrize("head_class", [BEVOCCHead2D, BEVOCCHead3D])
def test_use_mask_false_trains_on_hidden_voxels_too(head_class):
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(1, 4, 3, 16, NUM_CLASSES, generator=gen)
    semantics = torch.randint(0, NUM_CLASSES, (1, 4, 3, 16), generator=gen)
    mask = torch.rand(1, 4, 3, 16, generator=gen) > 0.5
    relabelled = semantics.clone()
    relabelled[~mask] = (semantics[~mask] + 1) % NUM_CLASSES
    for use_mask in (True, False):
        head = head_class(num_classes=NUM_CLASSES, use_mask=use_mask, scene_class_affinity=True)
        losses = [head.loss(logits, OccupancyTargets(labels, mask)) for labels in (semantics, relabelled)]
        assert torch.equal(losses[0], losses[1]) == use_mask
        seen = torch.ones_like(mask) if not use_mask else mask
        expected = (cross_entropy_loss(logits[seen], semantics[seen])
                    + scene_class_affinity_loss(logits[seen], semantics[seen], FREE_CLASS))
        assert torch.allclose(losses[0], expected)
