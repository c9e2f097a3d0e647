"""config.pbtxt validity: every config we write parses into Triton's ModelConfig and matches its ONNX graph.

Also home of the tiny stand-in model (the occupancy model contract, a few ops) that the Triton tests serve.
"""

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import np_to_triton_dtype

from occupancy import model_contract as contract
from occupancy.errors import InputError
from occupancy.model_repository import Runtime, python_backend_view, served_runtime
from training.export import triton_config
from training.publish import Artifact, publish

TINY_INPUT_SIZE = (8, 16)
REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
METADATA = {contract.META_CONFIG: '"tiny-test"', contract.META_INPUT_SIZE: "[8, 16]"}


def write_tiny_model(path: Path, input_size: tuple[int, int] = TINY_INPUT_SIZE, seed: int = 0) -> Path:
    """An ONNX model with the occupancy contract's inputs and output whose every voxel depends on every input.

    semantics[b, x, y, z] = floor((s_b + offset[x, y, z]) mod 18), s_b the sum of all of frame b's inputs
    and `offset` a fixed random grid; with dyadic calibration values every sum is exact in float32, so
    any batching of frames gives the same bytes.
    """
    height, width = input_size
    shapes = {
        contract.IMAGES: (TensorProto.UINT8, [6, 3, height, width]),
        contract.INTRINSICS: (TensorProto.FLOAT, [6, 3, 3]),
        contract.SENSOR2EGO: (TensorProto.FLOAT, [6, 4, 4]),
        contract.POST_ROTS: (TensorProto.FLOAT, [6, 3, 3]),
        contract.POST_TRANS: (TensorProto.FLOAT, [6, 3]),
    }
    inputs = [helper.make_tensor_value_info(n, t, ["B", *d]) for n, (t, d) in shapes.items()]
    output = helper.make_tensor_value_info(contract.SEMANTICS, TensorProto.UINT8, ["B", 200, 200, 16])
    offset = np.random.default_rng(seed).uniform(0, 18, (1, 200, 200, 16)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(offset, "offset"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "frame_shape"),
        numpy_helper.from_array(np.array(18.0, np.float32), "num_classes"),
    ]
    nodes = [helper.make_node("Cast", [contract.IMAGES], ["images_f"], to=TensorProto.FLOAT)]
    sums = []
    for name in ["images_f", *contract.INPUT_NAMES[1:]]:
        nodes.append(helper.make_node("Flatten", [name], [f"{name}_flat"], axis=1))
        nodes.append(helper.make_node("ReduceSum", [f"{name}_flat", "axis1"], [f"{name}_sum"], keepdims=1))
        sums.append(f"{name}_sum")
    nodes += [
        helper.make_node("Sum", sums, ["frame_sum"]),
        helper.make_node("Reshape", ["frame_sum", "frame_shape"], ["frame_sum4"]),
        helper.make_node("Add", ["frame_sum4", "offset"], ["scores"]),
        helper.make_node("Mod", ["scores", "num_classes"], ["wrapped"], fmod=1),
        helper.make_node("Floor", ["wrapped"], ["classes"]),
        helper.make_node("Cast", ["classes"], [contract.SEMANTICS], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(nodes, "tiny_occupancy", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, METADATA)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_frames(batch: int, rng: np.random.Generator, input_size: tuple[int, int] = TINY_INPUT_SIZE):
    """Random inputs for the tiny model: uint8 images, dyadic (exactly summable) float32 calibrations."""
    def dyadic(*shape):
        return (rng.integers(-64, 64, (batch, *shape)) / 8).astype(np.float32)

    return {
        contract.IMAGES: rng.integers(0, 256, (batch, 6, 3, *input_size), dtype=np.uint8),
        contract.INTRINSICS: dyadic(6, 3, 3),
        contract.SENSOR2EGO: dyadic(6, 4, 4),
        contract.POST_ROTS: dyadic(6, 3, 3),
        contract.POST_TRANS: dyadic(6, 3),
    }


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def assert_matches_onnx(config: model_config_pb2.ModelConfig, onnx_path: Path) -> None:
    """Names, data types and dims (after the batch) equal the ONNX graph's, in order."""
    graph = onnx.load(str(onnx_path)).graph
    for entries, values in ((config.input, graph.input), (config.output, graph.output)):
        assert [e.name for e in entries] == [v.name for v in values]
        for entry, value in zip(entries, values, strict=True):
            tensor = value.type.tensor_type
            expected_type = "TYPE_" + np_to_triton_dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
            assert model_config_pb2.DataType.Name(entry.data_type) == expected_type
            assert list(entry.dims) == [d.dim_value for d in tensor.shape.dim[1:]]


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    return write_tiny_model(tmp_path / "tiny.onnx")


def test_python_backend_model_config_matches_onnx(tmp_path, tiny_onnx):
    published = publish(tmp_path / "repo", "tiny", Artifact(tiny_onnx), runtime=Runtime.PYTHON, version=3,
                        max_batch_size=4)
    model_dir = published.version_dir.parent
    config = parse_config(model_dir / "config.pbtxt")
    assert_matches_onnx(config, model_dir / "3" / "model.onnx")
    assert (config.name, config.backend, config.platform, config.max_batch_size) == ("tiny", "python", "", 4)
    assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert config.HasField("dynamic_batching")
    assert (model_dir / "3" / "model.py").read_text() == triton_config.python_backend_source().read_text()
    assert (model_dir / "3" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    # The occ.* metadata_props travel in the config's parameters, for Triton clients.
    assert {k: v.string_value for k, v in config.parameters.items()} == METADATA


def test_tensorrt_config_with_warmup_sample(tmp_path, tiny_onnx):
    signature = triton_config.read_signature(tiny_onnx)
    sample = {name: array[0] for name, array in tiny_frames(1, np.random.default_rng(0)).items()}
    model_dir = tmp_path / "trt"
    triton_config.write_warmup_sample(model_dir / "warmup", signature, sample)
    text = triton_config.render_config(triton_config.triton_config(Runtime.TENSORRT, "trt", signature, 8,
                                                                   warmup=True))
    (model_dir / "config.pbtxt").write_text(text)
    config = parse_config(model_dir / "config.pbtxt")
    assert_matches_onnx(config, tiny_onnx)
    assert (config.platform, config.default_model_filename, config.max_batch_size) == (
        "tensorrt_plan", "model.plan", 8)
    assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1
    assert set(warmup.inputs) == set(contract.INPUT_NAMES)
    for name, entry in warmup.inputs.items():
        # Triton reads exactly prod(dims) elements of the declared type from <model>/warmup/<file>.
        raw = (model_dir / "warmup" / entry.input_data_file).read_bytes()
        dtype = sample[name].dtype
        np.testing.assert_array_equal(np.frombuffer(raw, dtype).reshape(tuple(entry.dims)), sample[name])


def test_onnxruntime_config_matches_onnx(tmp_path, tiny_onnx):
    signature = triton_config.read_signature(tiny_onnx)
    for gpu, kind in ((False, "KIND_CPU"), (True, "KIND_GPU")):
        text = triton_config.render_config(triton_config.triton_config(Runtime.ONNXRUNTIME, "m", signature, 2,
                                                                       gpu=gpu))
        (tmp_path / "config.pbtxt").write_text(text)
        config = parse_config(tmp_path / "config.pbtxt")
        assert_matches_onnx(config, tiny_onnx)
        assert (config.platform, config.default_model_filename) == ("onnxruntime_onnx", "model.onnx")
        kinds = [model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) for group in config.instance_group]
        assert kinds == [kind]
        assert served_runtime(text) is Runtime.ONNXRUNTIME


def test_the_python_backend_view_equals_what_publish_writes(tmp_path, tiny_onnx):
    """triton-local's view of an onnxruntime repository: the same config as publishing for the python
    backend, every version linked, TensorRT models left out."""
    source = tmp_path / "source"
    for _ in range(2):
        publish(source, "tiny", Artifact(tiny_onnx), runtime=Runtime.ONNXRUNTIME, gpu=True)
    plan = tmp_path / "build" / "model.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"engine")
    shutil.copyfile(tiny_onnx, plan.with_name("model.onnx"))
    publish(source, "engine", Artifact.from_files(plan=plan))
    view = python_backend_view(source, tmp_path / "view", triton_config.python_backend_source())
    assert view["tiny"] == "versions 1, 2 on the python backend" and view["engine"].startswith("left out")
    as_published = publish(tmp_path / "python", "tiny", Artifact(tiny_onnx), runtime=Runtime.PYTHON)
    assert (tmp_path / "view/tiny/config.pbtxt").read_text() == \
        (as_published.version_dir.parent / "config.pbtxt").read_text()
    for version in (1, 2):
        linked = tmp_path / f"view/tiny/{version}/model.onnx"
        assert linked.is_symlink() and linked.resolve() == (source / f"tiny/{version}/model.onnx").resolve()
    assert sorted(path.name for path in (tmp_path / "view").iterdir()) == ["tiny"]


def test_non_contract_model_is_refused(tmp_path):
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(InputError, match="not an occupancy model"):
        publish(tmp_path / "repo", "other", Artifact(path))
    assert not (tmp_path / "repo" / "other").exists()
    with pytest.raises(InputError, match="no such ONNX file"):
        triton_config.read_signature(tmp_path / "missing.onnx")


def test_committed_repository_configs_parse_and_match():
    """Every config.pbtxt in model_repository/ parses, names itself, and matches each version's ONNX."""
    for path in sorted(REPOSITORY.glob("*/config.pbtxt")):
        config = parse_config(path)
        assert config.name == path.parent.name
        for onnx_path in path.parent.glob("[0-9]*/model.onnx"):
            assert_matches_onnx(config, onnx_path)
