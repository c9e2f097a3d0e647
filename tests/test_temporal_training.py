"""Training and evaluating temporal configs: the loss falls, resume stays exact, a BEVDet detection
checkpoint loads partially, `occ eval` uses the history, `occ models` lists the reference layout."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_dataset import MICRO_TEMPORAL_CONFIG, write_tiny_dataset

from occ.cli import main
from training import train as training
from training.models.configs import (
    CONFIGS,
    RenderOccHeadConfig,
    build_model,
    config_from_dict,
    config_to_dict,
)
from training.train import TrainOptions, checkpoint_path

QUICK = replace(MICRO_TEMPORAL_CONFIG.recipe, lr=3e-3, warmup_iters=0, ema_decay=None)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("temporal-train"), scenes=2, frames=3, val_scenes=1)


def _train(data_root: Path, work_dir: Path, config_name: str, max_iters: int, resume: bool = False) -> Path:
    options = TrainOptions(config=config_name, data_root=data_root, work_dir=work_dir, max_iters=max_iters,
                           batch_size=1, num_workers=0, checkpoint_interval=2, resume=resume, log_interval=1,
                           progress=False)
    return training.train(options)


@pytest.mark.parametrize("head", ["occ_head", "render_occ"])
def test_a_few_iterations_of_a_temporal_config_lower_the_loss(data_root, tmp_path, monkeypatch, head):
    config = replace(MICRO_TEMPORAL_CONFIG, recipe=QUICK,
                     render_occ=RenderOccHeadConfig() if head == "render_occ" else None)
    monkeypatch.setitem(CONFIGS, config.name, config)
    final = _train(data_root, tmp_path, config.name, 6)
    losses = [loss for _, loss, _ in torch.load(final, weights_only=True)["history"]]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    log = (tmp_path / "train.log").read_text()
    assert ("loss_3d_geo" in log and "loss_3d_sem" in log) if head == "render_occ" else "loss_occ" in log


def test_resuming_a_temporal_run_equals_the_uninterrupted_one(data_root, tmp_path, monkeypatch):
    config = replace(MICRO_TEMPORAL_CONFIG, recipe=replace(QUICK, ema_decay=0.999, ema_init_updates=0))
    monkeypatch.setitem(CONFIGS, config.name, config)
    straight = _train(data_root, tmp_path / "straight", config.name, 4)
    (tmp_path / "resumed").mkdir()
    shutil.copy(checkpoint_path(tmp_path / "straight", 2), checkpoint_path(tmp_path / "resumed", 2))
    resumed = _train(data_root, tmp_path / "resumed", config.name, 4, resume=True)
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for part in ("train_state_dict", "state_dict"):
        for name, value in a[part].items():
            assert torch.equal(value, b[part][name]), (part, name)


def test_occ_eval_of_a_temporal_checkpoint_uses_the_history(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(CONFIGS, MICRO_TEMPORAL_CONFIG.name, replace(MICRO_TEMPORAL_CONFIG, recipe=QUICK))
    final = _train(data_root, tmp_path / "work", MICRO_TEMPORAL_CONFIG.name, 1)
    capsys.readouterr()
    summary = tmp_path / "metrics.json"
    assert main(["eval", "--checkpoint", str(final), "--data-root", str(data_root), "--num-workers", "0",
                 "--json", str(summary)]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert json.loads(summary.read_text())["frames"] == 3


def test_a_bevdet_detection_checkpoint_loads_partially(tmp_path):
    """The seed fine-tunes from BEVDet's 4D-stereo detection checkpoint: its trunk (backbone, neck, stereo
    depth net, pre-process and BEV encoder) loads, its detection head is skipped, the occupancy head stays
    as initialised."""
    torch.manual_seed(1)
    detector = build_model(MICRO_TEMPORAL_CONFIG).state_dict()
    state = {key: value for key, value in detector.items() if not key.startswith("occ_head.")}
    state["pts_bbox_head.task_heads.0.heatmap.1.weight"] = torch.zeros(10, 64, 3, 3)
    path = tmp_path / "bevdet-r50-4d-stereo-cbgs.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    options = TrainOptions(config=MICRO_TEMPORAL_CONFIG.name, data_root=tmp_path, work_dir=tmp_path,
                           load_from=path, partial=True)
    torch.manual_seed(2)
    model, report = training.initial_model(MICRO_TEMPORAL_CONFIG, options)
    loaded = model.state_dict()
    depth_net = "img_view_transformer.depth_net.cost_volumn_net.0.weight"
    assert torch.equal(loaded[depth_net], detector[depth_net])
    head = "occ_head.final_conv.conv.weight"
    assert not torch.equal(loaded[head], detector[head])
    assert "unexpected in checkpoint (ignored) (1): pts_bbox_head.task_heads.0.heatmap.1.weight" in report[0]


def test_occ_models_lists_the_temporal_configs_and_their_reference_layout(capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row["params"] for row in json.loads(capsys.readouterr().out)}
    assert rows["flashocc-renderocc-r50-4d-stereo-256x704"] == 58_923_726
    assert rows["flashocc-r50-4d-stereo-256x704"] == 58_923_726
    assert main(["models", "--state-dict", "flashocc-renderocc-r50-4d-stereo-256x704"]) == 0
    with_nerf = json.loads(capsys.readouterr().out)
    assert main(["models", "--state-dict", "flashocc-r50-4d-stereo-256x704"]) == 0
    without = json.loads(capsys.readouterr().out)
    buffers = ("scene_center", "scene_radius", "xyz_min", "xyz_max", "act_shift")
    assert set(with_nerf) - set(without) == {f"nerf_head.{name}" for name in buffers}
    assert with_nerf["semantic_loss.weight"] == [17] and with_nerf["density_mlp.2.weight"] == [32, 512]


def test_temporal_configs_survive_the_checkpoints_stored_values():
    for config in CONFIGS.values():
        assert config_from_dict(config_to_dict(config)) == config, config.name
