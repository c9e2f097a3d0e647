"""`occ export`: the exported graph against PyTorch, its operators, metadata, batching, Triton config,
the repository layout and the command's errors."""

import importlib.util
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_triton_config import assert_matches_onnx, parse_config

from occ.cli import main
from occupancy import model_contract as contract
from occupancy.classes import CLASS_NAMES, FREE_CLASS
from occupancy.errors import InputError
from occupancy.model_repository import Runtime
from service.backends.base import ServedModel
from training.export import artifact as export_artifact_module
from training.export.artifact import EngineOptions, export_artifact
from training.export.onnx_export import (
    ExportModel,
    Parity,
    check_parity,
    check_sequence_parity,
    contract_batch,
    export_onnx,
    sample_inputs,
    sequence_inputs,
    state_tensors,
)
from training.export.tensorrt import cuda_device_count
from training.models.checkpoint import load_model, save_checkpoint
from training.models.configs import CONFIGS, build_model, get_config
from training.publish import publish

# Standard ONNX operators that TensorRT 10 imports (ScatterElements with a reduction through its built-in
# plugin); anything else in the TensorRT graph fails the test.
TENSORRT_OPS = {
    "Add", "And", "ArgMax", "Cast", "Concat", "Constant", "ConstantOfShape", "Conv", "Div", "Equal",
    "Expand", "Gather", "GreaterOrEqual", "Identity", "Less", "MatMul", "MaxPool", "Mul", "Range",
    "ReduceSum", "Relu", "Reshape", "Resize", "ScatterElements", "Shape", "Slice", "Softmax", "Softplus",
    "Split", "Squeeze", "Sub", "Transpose", "Unsqueeze", "Where",
}
# The ONNX Runtime graph pools by sorting (TopK over all points) and prefix sums (CumSum, partly float64),
# which TensorRT cannot import, and computes the heads' Softplus from element-wise ops (its Softplus kernel
# is 4x slower); ONNX Runtime runs every standard operator.
ONNXRUNTIME_OPS = TENSORRT_OPS | {"TopK", "CumSum", "Abs", "Neg", "Exp", "Log"}
DOUBLE = onnx.TensorProto.DOUBLE
DEMO = "demo-tiny"


def _quiet(_: str) -> None:
    pass


def input_sensitive_model(name: str, seed: int = 1) -> torch.nn.Module:
    """Random weights whose classes depend on the input (see `amplified`)."""
    torch.manual_seed(seed)
    return amplified(build_model(get_config(name)).eval())


def amplified(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its BatchNorm gains tripled, as training grows them: at initialisation the BEV features
    are so small that every frame gets the same grid, which would let a broken geometry, pooling or
    history pass."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d):
                module.weight.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory) -> tuple[Path, Path]:
    """demo-tiny exported from a checkpoint with a model card beside it: (checkpoint, version folder)."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = root / "ckpt" / "demo.pt"
    checkpoint.parent.mkdir()
    save_checkpoint(checkpoint, input_sensitive_model(DEMO), get_config(DEMO))
    (checkpoint.parent / "model_card.md").write_text("# demo card\n")
    return checkpoint, export_version(DEMO, checkpoint, root / "repo")


@pytest.fixture(scope="module")
def tensorrt_graph(demo_export, tmp_path_factory) -> Path:
    """The same checkpoint exported with the pooling for TensorRT (what `--format tensorrt` builds from)."""
    path = tmp_path_factory.mktemp("tensorrt") / "model.onnx"
    return export_onnx(load_model(demo_export[0])[0], get_config(DEMO), path, runtime=Runtime.TENSORRT)


def export_version(name: str, checkpoint: Path | None, repository: Path,
                   runtime: Runtime = Runtime.ONNXRUNTIME, log=_quiet, timing_cache: Path = Path("unused"),
                   ) -> Path:
    """What `occ export` does: an artifact in a scratch folder, then published as the next version."""
    with tempfile.TemporaryDirectory() as scratch:
        artifact = export_artifact(get_config(name), checkpoint, Path(scratch), runtime, log=log,
                                   engine=EngineOptions(timing_cache=timing_cache))
        return publish(repository, name, artifact, runtime=runtime, max_batch_size=4).version_dir


def _run(onnx_path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run([contract.SEMANTICS], inputs)[0]


def test_layout_and_model_card(demo_export):
    version_dir = demo_export[1]
    assert version_dir.name == "1"
    assert sorted(p.name for p in version_dir.parent.iterdir()) == ["1", "config.pbtxt"]  # no staging left
    assert (version_dir / "model_card.md").read_text() == "# demo card\n"


def test_parity_with_pytorch_on_other_frames(demo_export):
    checkpoint, version_dir = demo_export
    model = load_model(checkpoint)[0]
    parity = check_parity(model, version_dir / "model.onnx", sample_inputs(get_config(DEMO), seed=7))
    assert parity.ok, parity.summary()
    assert parity.argmax_agreement >= 0.999
    assert parity.max_abs_logit_diff < 1e-4 * max(1.0, parity.max_abs_logit)
    # At most a few frustum points on cell boundaries change cells (see onnx_export.Parity).
    assert parity.bev_cells_differing <= 1e-3 * parity.bev_cells


def test_semantics_are_the_pytorch_argmax(demo_export):
    checkpoint, version_dir = demo_export
    inputs = sample_inputs(get_config(DEMO), seed=3)
    with torch.no_grad():
        tensors = (torch.from_numpy(inputs[name]) for name in contract.INPUT_NAMES)
        expected = ExportModel(load_model(checkpoint)[0])(*tensors)
    semantics = _run(version_dir / "model.onnx", inputs)
    assert semantics.dtype == np.uint8 and semantics.shape == (1, 200, 200, 16)
    assert (semantics == expected.numpy()).mean() >= 0.999


def _reduction(node: onnx.NodeProto) -> bytes:
    values = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "reduction"]
    return values[0] if values else b"none"


def test_operators_are_standard(demo_export):
    graph = onnx.load(str(demo_export[1] / "model.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert ops <= ONNXRUNTIME_OPS, f"operators outside the allow-list: {sorted(ops - ONNXRUNTIME_OPS)}"
    assert {"TopK", "CumSum"} <= ops  # the ONNX Runtime pooling
    assert "Softplus" not in ops and {"Exp", "Log"} <= ops  # its Softplus, decomposed
    assert "ScatterND" not in ops  # drops duplicate indices without a reduction
    # The head's channels-last layout without the Transpose (0, 3, 2, 1) that ONNX Runtime runs 30x slower.
    perms = [onnx.helper.get_attribute_value(a) for node in graph.node if node.op_type == "Transpose"
             for a in node.attribute if a.name == "perm"]
    assert [0, 2, 3, 1] in perms and [0, 3, 2, 1] not in perms
    assert all(_reduction(node) == b"add" for node in graph.node if node.op_type == "ScatterElements")
    assert all(node.domain in ("", "ai.onnx") for node in graph.node)


def test_tensorrt_graph_pools_with_scatter_elements_add_and_no_float64(demo_export, tensorrt_graph):
    graph = onnx.load(str(tensorrt_graph)).graph
    ops = {node.op_type for node in graph.node}
    assert ops <= TENSORRT_OPS, f"operators TensorRT does not import: {sorted(ops - TENSORRT_OPS)}"
    scatters = [node for node in graph.node if node.op_type == "ScatterElements"]
    assert len(scatters) == 1 and _reduction(scatters[0]) == b"add"
    assert "Softplus" in ops  # TensorRT keeps the operator
    casts = [a.i for node in graph.node if node.op_type == "Cast" for a in node.attribute if a.name == "to"]
    assert DOUBLE not in casts and all(init.data_type != DOUBLE for init in graph.initializer)
    model = load_model(demo_export[0])[0]
    parity = check_parity(model, tensorrt_graph, sample_inputs(get_config(DEMO), seed=7))
    assert parity.ok, parity.summary()
    metadata = {p.key: p.value for p in onnx.load(str(tensorrt_graph)).metadata_props}
    assert json.loads(metadata[contract.META_CONFIG]) == DEMO


def test_metadata_is_what_the_gateway_reads(demo_export):
    version_dir = demo_export[1]
    model = onnx.load(str(version_dir / "model.onnx"), load_external_data=False)
    assert model.opset_import[0].version >= 17
    props = {p.key: p.value for p in model.metadata_props}
    config = get_config(DEMO)
    assert json.loads(props[contract.META_CONFIG]) == DEMO
    assert json.loads(props[contract.META_INPUT_SIZE]) == list(config.input_size)
    assert json.loads(props[contract.META_CLASSES]) == list(CLASS_NAMES)
    assert json.loads(props[contract.META_TEMPORAL]) is False
    served = ServedModel.described("demo-tiny", "1", ("1",), props, str(version_dir))
    assert served.input_size == (128, 352) and served.grid_shape == (200, 200, 16)
    assert served.range_m == (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4) and served.voxel_size_m == (0.4, 0.4, 0.4)


def test_batch_of_two_gives_the_per_frame_results(demo_export):
    onnx_path = demo_export[1] / "model.onnx"
    inputs = sample_inputs(get_config(DEMO), batch_size=2, seed=5)
    together = _run(onnx_path, inputs)
    assert together.shape == (2, 200, 200, 16)
    for b in range(2):
        alone = _run(onnx_path, {name: value[b : b + 1] for name, value in inputs.items()})
        assert (together[b] == alone[0]).mean() >= 0.9999
    assert (together[0] != together[1]).any()  # the frames differ, so the batch is not one frame twice


def test_config_pbtxt_parses_and_matches_the_graph(demo_export):
    version_dir = demo_export[1]
    config = parse_config(version_dir.parent / "config.pbtxt")
    assert config.name == DEMO and config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
    assert_matches_onnx(config, version_dir / "model.onnx")
    assert json.loads(config.parameters[contract.META_CONFIG].string_value) == DEMO


def test_failed_parity_writes_nothing(demo_export, tmp_path, monkeypatch):
    bad = Parity(max_abs_logit_diff=0.5, max_abs_logit=1.0, max_abs_bev_diff=0.0, max_abs_bev=1.0,
                 bev_cells_differing=0, bev_cells=10000, argmax_agreement=0.9, voxels=640000,
                 seconds_onnx=0.0, seconds_torch=0.0)
    monkeypatch.setattr(export_artifact_module, "check_parity", lambda *_: bad)
    with pytest.raises(InputError, match="does not match PyTorch"):
        export_version(DEMO, demo_export[0], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def _occ(capsys, *argv: str) -> tuple[int, str]:
    code = main(["export", *argv])
    return code, capsys.readouterr().err


def test_cli_errors(demo_export, tmp_path, capsys):
    repository = str(demo_export[1].parents[1])
    code, err = _occ(capsys, "--config", "no-such-model", "--repository", repository)
    assert code == 2 and "unknown model config 'no-such-model'" in err
    code, err = _occ(capsys, "--repository", repository)
    assert code == 2 and "--config" in err
    code, err = _occ(capsys, "--config", DEMO, "--checkpoint", str(tmp_path / "missing.pt"))
    assert code == 2 and "missing.pt: no such file" in err
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    code, err = _occ(capsys, "--config", DEMO, "--checkpoint", str(tmp_path / "garbage.pt"),
                     "--repository", str(tmp_path / "repo"))
    assert code == 2 and "garbage.pt" in err
    torch.save({"state_dict": {"img_backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "partial.pt")
    code, err = _occ(capsys, "--config", DEMO, "--checkpoint", str(tmp_path / "partial.pt"),
                     "--repository", str(tmp_path / "repo"))
    assert code == 2 and "does not match the model" in err and "wrong shape (1)" in err
    code, err = _occ(capsys, "--config", DEMO, "--version", "1", "--repository", repository)
    assert code == 2 and "exists already" in err
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model(get_config(DEMO)), get_config(DEMO))
    code, err = _occ(capsys, "--config", "flashocc-r50-256x704", "--checkpoint", str(other),
                     "--repository", str(tmp_path / "repo"))
    assert code == 2 and "holds config 'demo-tiny'" in err
    assert not (tmp_path / "repo" / "flashocc-r50-256x704").exists() or not any(
        p.name.isdigit() for p in (tmp_path / "repo" / "flashocc-r50-256x704").iterdir())


def test_cli_exports_the_next_version_under_a_name(demo_export, tmp_path, capsys):
    (tmp_path / "served" / "4").mkdir(parents=True)
    code = main(["export", DEMO, "--checkpoint", str(demo_export[0]), "--repository", str(tmp_path),
                 "--name", "served", "--max-batch", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "parity ok" in out and "argmax agreement" in out
    assert (tmp_path / "served" / "5" / "model.onnx").is_file()
    config = parse_config(tmp_path / "served" / "config.pbtxt")
    assert config.name == "served" and config.max_batch_size == 2


def test_tensorrt_format(demo_export, tmp_path):
    has_tensorrt = importlib.util.find_spec("tensorrt") is not None and cuda_device_count() > 0
    if has_tensorrt:
        version_dir = export_version(DEMO, demo_export[0], tmp_path, Runtime.TENSORRT,
                                     timing_cache=tmp_path / "cache")
        assert (version_dir / "model.plan").is_file() and (version_dir / "model.onnx").is_file()
        assert parse_config(tmp_path / DEMO / "config.pbtxt").platform == "tensorrt_plan"
        return
    with pytest.raises(InputError, match="cannot build a TensorRT engine here"):
        export_version(DEMO, demo_export[0], tmp_path, Runtime.TENSORRT, timing_cache=tmp_path / "cache")
    assert not (tmp_path / DEMO).exists()  # no half version, no staging folder


@pytest.mark.slow
def test_flashocc_r50_full_size_export_passes_parity(tmp_path):
    name = "flashocc-r50-256x704"
    checkpoint = tmp_path / "flashocc.pt"
    save_checkpoint(checkpoint, input_sensitive_model(name), get_config(name))
    messages: list[str] = []
    started = time.perf_counter()
    version_dir = export_version(name, checkpoint, tmp_path / "repo", log=messages.append)
    print(f"flashocc-r50 export + parity: {time.perf_counter() - started:.1f} s; " + "; ".join(messages))
    assert any(m.startswith("parity ok") for m in messages)
    assert parse_config(tmp_path / "repo" / name / "config.pbtxt").platform == "onnxruntime_onnx"
    assert (version_dir / "model.onnx").stat().st_size > 100 * 2**20  # the weights are inside


def test_a_render_occ_head_exports_its_own_test_time_rule(tmp_path):
    """demo-tiny-2d (single frame) and the M5 head on the micro BEVStereo4D: the graph's ArgMax takes the
    head's scores, so the served classes are its rule (density threshold or argmax: free where it says
    so), and parity compares those scores."""
    from tiny_dataset import MICRO_TEMPORAL_CONFIG

    config = get_config("demo-tiny-2d")
    model = input_sensitive_model(config.name)
    inputs = sample_inputs(config)
    batch = contract_batch(*(torch.from_numpy(inputs[name]) for name in contract.INPUT_NAMES))
    with torch.no_grad():  # a threshold that an untrained head's densities straddle
        model.occ_head.test_threshold = float(model(batch).density[..., 0].median())
        expected = model.predict(batch).numpy()
    path = export_onnx(model, config, tmp_path / "2d.onnx")
    parity = check_parity(model, path, inputs)
    assert parity.ok, parity.summary()
    served = _run(path, inputs)
    assert (served == expected).mean() > 0.999 and 0.2 < (served == FREE_CLASS).mean() < 0.8
    temporal = replace(MICRO_TEMPORAL_CONFIG, render_occ=CONFIGS["flashocc-renderocc-r50-4d-stereo-256x704"]
                       .render_occ)
    torch.manual_seed(0)
    model = amplified(build_model(temporal).eval())
    path = export_onnx(model, temporal, tmp_path / "4d.onnx")
    frames = sequence_inputs(temporal, state_tensors(model, temporal))
    sequence = check_sequence_parity(model, path, frames)
    assert sequence.ok, sequence.summary()
    assert 0.05 < (_run(path, frames[0]) == FREE_CLASS).mean() < 0.95  # the seed's rule, free included
