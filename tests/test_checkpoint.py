"""Checkpoints: round trips, reference (mmcv) layouts, and one clear error for every mismatch."""

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from occupancy.errors import InputError
from training.models.checkpoint import load_checkpoint, load_model, read_checkpoint, save_checkpoint
from training.models.configs import CONFIGS, TYPE_KEY, build_model, config_to_dict


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model(CONFIGS["demo-tiny"])
    # Non-default running statistics, so that a round trip that drops buffers would show.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
    return model.eval()


def test_round_trip_rebuilds_the_model_from_its_config(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, tiny, CONFIGS["demo-tiny"], step=12)
    loaded, config = load_model(path)
    assert config == CONFIGS["demo-tiny"]
    assert read_checkpoint(path)["step"] == 12
    original, restored = tiny.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key, value in original.items():
        assert torch.equal(value, restored[key]), key
    assert not loaded.training


def test_mmcv_layout_with_ddp_prefix_loads_and_ignores_meta_and_optimizer(tiny, tmp_path):
    path = tmp_path / "epoch_24.pth"
    state = {f"module.{key}": value.clone() for key, value in tiny.state_dict().items()}
    torch.save({"meta": {"epoch": 24, "CLASSES": ("car",)}, "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4}]}}, path)
    target = build_model(CONFIGS["demo-tiny"])
    load_checkpoint(target, path)
    key = "img_view_transformer.depth_net.weight"
    assert torch.equal(target.state_dict()[key], tiny.state_dict()[key])
    assert torch.equal(load_model(path, "demo-tiny")[0].state_dict()[key], tiny.state_dict()[key])


def test_missing_unexpected_and_misshaped_keys_give_one_error(tiny, tmp_path):
    state = {key: value.clone() for key, value in tiny.state_dict().items()}
    del state["occ_head.predicter.2.bias"]
    state["occ_head.extra_layer.weight"] = torch.zeros(3)
    state["img_view_transformer.depth_net.weight"] = torch.zeros(7, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(InputError) as raised:
        load_checkpoint(build_model(CONFIGS["demo-tiny"]), path)
    message = str(raised.value)
    assert "missing (1): occ_head.predicter.2.bias" in message
    assert "unexpected (1): occ_head.extra_layer.weight" in message
    assert "wrong shape (1): img_view_transformer.depth_net.weight (checkpoint [7, 64, 1, 1]" in message
    assert str(path) in message


def test_files_that_are_not_checkpoints_are_input_errors(tmp_path):
    garbage = tmp_path / "notes.pth"
    garbage.write_bytes(b"these are not weights")
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        read_checkpoint(garbage)
    # Random bytes fail torch's weights-only unpickler too, but are no pickle of objects either.
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        read_checkpoint(garbage)
    with pytest.raises(InputError, match="no such file"):
        read_checkpoint(tmp_path / "absent.pth")
    no_weights = tmp_path / "config_only.pth"
    torch.save({"config": "demo-tiny", "step": 3}, no_weights)
    with pytest.raises(InputError, match="no state_dict"):
        load_model(no_weights)


def test_config_name_is_required_for_reference_checkpoints_and_must_agree(tiny, tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save(tiny.state_dict(), bare)
    with pytest.raises(InputError, match="names no model config"):
        load_model(bare)
    assert load_model(bare, "demo-tiny") is not None
    named = tmp_path / "named.pt"
    save_checkpoint(named, tiny, CONFIGS["demo-tiny"])
    with pytest.raises(InputError, match="holds config 'demo-tiny'"):
        load_model(named, "flashocc-r50-256x704")


def test_checkpoints_with_python_objects_need_trust(tiny, tmp_path):
    path = tmp_path / "with_objects.pth"
    torch.save({"state_dict": tiny.state_dict(), "meta": {"work_dir": tmp_path}}, path)  # a PosixPath
    with pytest.raises(InputError, match="trust"):
        read_checkpoint(path)
    assert set(read_checkpoint(path, trusted=True)) == {"state_dict", "meta"}


def test_a_checkpoint_rebuilds_its_own_model_after_the_config_was_edited(tiny, tmp_path, monkeypatch, caplog):
    path = tmp_path / "before_the_edit.pt"
    save_checkpoint(path, tiny, CONFIGS["demo-tiny"])
    edited = replace(CONFIGS["demo-tiny"], bev_channels=48, class_balance=False)
    monkeypatch.setitem(CONFIGS, "demo-tiny", edited)
    loaded, config = load_model(path)  # the edited config would not even have these weights' shapes
    assert config.bev_channels == tiny.img_view_transformer.out_channels == 32
    assert torch.equal(loaded.state_dict()["img_view_transformer.depth_net.weight"],
                       tiny.state_dict()["img_view_transformer.depth_net.weight"])
    assert "differs from this code's in bev_channels, class_balance" in caplog.text
    with pytest.raises(InputError, match="wrong shape"):  # what the name alone would have built
        load_checkpoint(build_model(edited), path)


def test_a_stored_config_this_code_cannot_build_fails_saying_why(tiny, tmp_path):
    values = config_to_dict(CONFIGS["demo-tiny"])
    cases = {
        "no field(s) attention_heads in this code": {**values, "attention_heads": 8},
        "lacks field(s) bev_encoder": {key: value for key, value in values.items() if key != "bev_encoder"},
        "bev_encoder: expected a stored BevEncoder2DConfig or BevEncoder3DConfig, found 'TransformerBEV'":
            {**values, "bev_encoder": {**values["bev_encoder"], TYPE_KEY: "TransformerBEV"}},
        "input_size: expected 2 values, got 3": {**values, "input_size": [128, 352, 3]},
    }
    for message, stored in cases.items():
        path = tmp_path / "stored.pt"
        torch.save({"format": 2, "config": "demo-tiny", "model_config": stored,
                    "state_dict": tiny.state_dict()}, path)
        with pytest.raises(InputError, match=re.escape(message)):
            load_model(path)
