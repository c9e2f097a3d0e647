"""TensorRT export where it cannot run (no GPU, no TensorRT): one clear InputError and the trtexec command.

The FP32 pinning of geometry layers is checked on a stand-in network (the real one needs TensorRT).
"""

import pytest
from test_triton_config import write_tiny_model

from occ import cli
from occupancy import model_contract as contract
from occupancy.errors import InputError
from training.export import tensorrt


def test_build_without_gpu_is_one_clear_error_with_the_trtexec_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tensorrt, "cuda_device_count", lambda: 0)  # as on this CPU machine, even on a GPU one
    onnx_path = write_tiny_model(tmp_path / "tiny.onnx")
    plan = tmp_path / "repo" / "tiny" / "1" / "model.plan"
    with pytest.raises(InputError) as error:
        tensorrt.build_engine(onnx_path, plan, max_batch=4, workspace_gb=2, timing_cache=tmp_path / "t.cache")
    message = str(error.value)
    assert "\n" not in message
    assert "a CUDA GPU" in message and tensorrt.TENSORRT_IMAGE in message and "trtexec" in message
    printed = capsys.readouterr().out
    command = next(line.strip() for line in printed.splitlines() if line.strip().startswith("trtexec "))
    flags = dict(part.split("=", 1) for part in command.split()[1:] if "=" in part)
    assert flags["--onnx"] == str(onnx_path) and flags["--saveEngine"] == str(plan)
    assert "--fp16" in command.split()
    assert flags["--memPoolSize"] == "workspace:2048M"
    assert flags["--timingCacheFile"] == str(tmp_path / "t.cache")
    # Every input gets batch 1 / 1 / 4 with its own fixed dimensions from the ONNX graph.
    assert flags["--minShapes"].split(",")[0] == "images:1x6x3x8x16"
    assert flags["--maxShapes"].split(",") == [
        "images:4x6x3x8x16", "intrinsics:4x6x3x3", "sensor2ego:4x6x4x4", "post_rots:4x6x3x3",
        "post_trans:4x6x3"]
    assert not plan.exists()


def test_bad_opt_batch_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="opt-batch"):
        tensorrt.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", max_batch=2, workspace_gb=1,
                              timing_cache=tmp_path / "c", opt_batch=3)


class _Tensor:
    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype


class _Layer:
    def __init__(self, name, inputs, outputs):
        self.name, self._inputs, self._outputs = name, inputs, outputs
        self.num_inputs, self.num_outputs = len(inputs), len(outputs)
        self.precision, self.output_types = None, {}

    def get_input(self, i):
        return self._inputs[i]

    def get_output(self, i):
        return self._outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class _Network:
    def __init__(self, layers):
        self._layers = layers
        self.num_layers = len(layers)

    def get_layer(self, i):
        return self._layers[i]


def test_only_float_layers_independent_of_images_are_pinned_to_fp32():
    trt = type("trt", (), {"float32": "f32", "int64": "i64", "uint8": "u8"})
    t = {name: _Tensor(name, dtype) for name, dtype in [
        (contract.IMAGES, "u8"), (contract.INTRINSICS, "f32"), ("img_f", "f32"), ("feat", "f32"),
        ("inv_k", "f32"), ("points", "f32"), ("index", "i64"), ("shape", "i64"), ("pooled", "f32"),
        ("weight", "f32")]}
    layers = [
        _Layer("weights", [], [t["weight"]]),  # a constant: left to TensorRT
        _Layer("cast_images", [t[contract.IMAGES]], [t["img_f"]]),
        _Layer("backbone", [t["img_f"], t["weight"]], [t["feat"]]),
        _Layer("invert_k", [t[contract.INTRINSICS]], [t["inv_k"]]),
        _Layer("frustum", [t["inv_k"], None], [t["points"]]),
        _Layer("voxel_index", [t["points"]], [t["index"]]),  # float in, int out: pinned (input precision)
        _Layer("shape_of", [t["index"]], [t["shape"]]),  # integers only: left alone
        _Layer("scatter", [t["feat"], t["index"]], [t["pooled"]]),  # depends on the images: FP16 allowed
    ]
    pinned = tensorrt.pin_geometry_to_fp32(trt, _Network(layers))
    assert pinned == ("invert_k", "frustum", "voxel_index")
    by_name = {layer.name: layer for layer in layers}
    assert [by_name[n].precision for n in pinned] == ["f32"] * 3
    assert by_name["frustum"].output_types == {0: "f32"} and by_name["voxel_index"].output_types == {}
    untouched = ("weights", "cast_images", "backbone", "shape_of", "scatter")
    assert all(by_name[name].precision is None for name in untouched)


def test_trtexec_command_adds_layer_constraints(tmp_path):
    onnx_path = write_tiny_model(tmp_path / "tiny.onnx")
    from training.export.triton_config import read_signature

    command = tensorrt.trtexec_command(
        onnx_path, tmp_path / "p", read_signature(onnx_path), max_batch=2, opt_batch=2, workspace_gb=0.5,
        timing_cache=tmp_path / "c", fp32_layer_names=("a", "b/c"))
    assert command.split()[-2:] == ["--precisionConstraints=prefer", "--layerPrecisions=a:fp32,b/c:fp32"]
    assert "--optShapes=images:2x6x3x8x16," in command and "workspace:512M" in command


def test_cli_parser_still_builds():
    # occ/cli.py imports every command module at parse time; ours must import without tritonclient/torch.
    assert "triton-local" in cli.COMMANDS
    cli.build_parser()
