"""Triton model configurations (`config.pbtxt`) for the exported model.

One writer serves the three runtimes (occupancy.model_repository.Runtime) Triton runs our model with:
`onnxruntime_onnx` (the ONNX file, CPU or GPU), `tensorrt_plan` (an FP16 engine, GPU) and `python`
(service/triton_python_backend/model.py running the ONNX file with ONNX Runtime on CPU, for a Triton
without the onnxruntime backend, such as the one that PyPI's nvidia-pytriton bundles). The tensors of
every config are read from the ONNX graph itself, so a config can never disagree with its model; the
ONNX metadata_props (occ.*) are copied into the config's `parameters`, so a Triton client learns the
grid, classes and input size from `get_model_config`.

Shapes in a config leave out the batch dimension (Triton adds it: `max_batch_size` > 0).
"""

import importlib.resources
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from occupancy import model_contract as contract
from occupancy.errors import InputError
from occupancy.model_repository import (
    ONNX_FILE,
    PLAN_FILE,
    PYTHON_MODEL_FILE,
    TRITON_PLATFORMS,
    Runtime,
)

# ONNX TensorProto data type -> (Triton TYPE_*, numpy dtype), for the types our models use.
_ONNX_TO_TRITON: dict[int, tuple[str, np.dtype]] = {
    1: ("TYPE_FP32", np.dtype(np.float32)),
    2: ("TYPE_UINT8", np.dtype(np.uint8)),
    3: ("TYPE_INT8", np.dtype(np.int8)),
    6: ("TYPE_INT32", np.dtype(np.int32)),
    7: ("TYPE_INT64", np.dtype(np.int64)),
    9: ("TYPE_BOOL", np.dtype(np.bool_)),
    10: ("TYPE_FP16", np.dtype(np.float16)),
    11: ("TYPE_FP64", np.dtype(np.float64)),
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a served model: name, Triton data type, shape without the batch dimension."""

    name: str
    data_type: str  # Triton TYPE_*, e.g. "TYPE_UINT8"
    dims: tuple[int, ...]  # -1 marks a dimension that varies per request

    @property
    def numpy_dtype(self) -> np.dtype:
        return next(dtype for triton, dtype in _ONNX_TO_TRITON.values() if triton == self.data_type)


@dataclass(frozen=True)
class ModelSignature:
    """What the ONNX graph says about the model: its tensors and its occ.* metadata_props (JSON strings)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TritonModelConfig:
    """The fields of a Triton ModelConfig that we set. Exactly one of `platform` and `backend` is set."""

    name: str
    signature: ModelSignature
    max_batch_size: int
    instance_kind: str  # "KIND_GPU" or "KIND_CPU"
    platform: str | None = None  # "onnxruntime_onnx", "tensorrt_plan"
    backend: str | None = None  # "python"
    default_model_filename: str | None = None
    instance_count: int = 1
    max_queue_delay_us: int = 2000  # how long dynamic batching may hold a request to fill a batch
    warmup: bool = False  # warm up with the sample frame in <model>/warmup/ (see write_warmup_sample)


def read_signature(onnx_path: Path) -> ModelSignature:
    """Inputs, outputs and metadata_props of an ONNX model whose first dimension is the batch.

    Raises InputError naming the file if it is missing, unreadable or has a tensor Triton cannot batch.
    """
    import onnx

    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such ONNX file; export one first with `occ export`")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and friends without a common base class
        raise InputError(f"{onnx_path}: not a readable ONNX model ({error})") from error
    return ModelSignature(
        inputs=tuple(_tensor_spec(value, onnx_path) for value in model.graph.input),
        outputs=tuple(_tensor_spec(value, onnx_path) for value in model.graph.output),
        metadata={prop.key: prop.value for prop in model.metadata_props if prop.key.startswith("occ.")},
    )


def _tensor_spec(value, onnx_path: Path) -> TensorSpec:
    """A TensorSpec from an ONNX ValueInfoProto: dims after the batch; symbolic ones become -1."""
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type not in _ONNX_TO_TRITON:
        raise InputError(f"{onnx_path}: tensor {value.name!r} has ONNX data type {tensor_type.elem_type}, "
                         "which the Triton configs do not support")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    if not dims:
        raise InputError(f"{onnx_path}: tensor {value.name!r} has no batch dimension")
    return TensorSpec(value.name, _ONNX_TO_TRITON[tensor_type.elem_type][0], tuple(dims[1:]))


def render_config(config: TritonModelConfig) -> str:
    """The config.pbtxt text (protobuf text format of inference.ModelConfig)."""
    if (config.platform is None) == (config.backend is None):
        raise ValueError("set exactly one of platform and backend")
    lines = [f'name: "{config.name}"']
    lines += [f'platform: "{config.platform}"'] if config.platform else [f'backend: "{config.backend}"']
    if config.default_model_filename:
        lines.append(f'default_model_filename: "{config.default_model_filename}"')
    lines.append(f"max_batch_size: {config.max_batch_size}")
    lines += _tensor_block("input", config.signature.inputs)
    lines += _tensor_block("output", config.signature.outputs)
    lines += [
        "instance_group [",
        f"  {{ kind: {config.instance_kind}, count: {config.instance_count} }}",
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {config.max_queue_delay_us} }}",
    ]
    for key, value in sorted(config.signature.metadata.items()):
        lines.append(f'parameters {{ key: "{key}" value {{ string_value: "{_escape(value)}" }} }}')
    if config.warmup:
        lines += _warmup_block(config.signature.inputs)
    return "\n".join(lines) + "\n"


def _tensor_block(kind: str, specs: tuple[TensorSpec, ...]) -> list[str]:
    entries = [
        f'  {{ name: "{s.name}", data_type: {s.data_type}, dims: [{", ".join(map(str, s.dims))}] }}'
        for s in specs
    ]
    return [f"{kind} [", ",\n".join(entries), "]"]


def _warmup_block(inputs: tuple[TensorSpec, ...]) -> list[str]:
    """One warm-up request of batch 1 with the sample frame: random or zero calibrations would give
    singular matrices and NaN voxel indices, which is no test of a scatter-based engine."""
    lines = ["model_warmup [", "  {", '    name: "sample_frame"', "    batch_size: 1"]
    for spec in inputs:
        lines.append(
            f'    inputs {{ key: "{spec.name}" value {{ data_type: {spec.data_type}, '
            f'dims: [{", ".join(map(str, spec.dims))}], input_data_file: "{spec.name}" }} }}'
        )
    return [*lines, "  }", "]"]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_warmup_sample(directory: Path, signature: ModelSignature, sample: Mapping[str, np.ndarray]) -> None:
    """Write one frame (arrays without the batch dimension) as the raw files model_warmup reads, into
    `directory` (published as `<model>/warmup/`)."""
    directory.mkdir(parents=True, exist_ok=True)
    for spec in signature.inputs:
        if spec.name not in sample:
            raise ValueError(f"warm-up sample lacks input {spec.name!r}")
        array = np.ascontiguousarray(sample[spec.name], dtype=spec.numpy_dtype)
        if -1 not in spec.dims and array.shape != spec.dims:
            raise ValueError(f"warm-up input {spec.name!r} has shape {array.shape}, not {spec.dims}")
        (directory / spec.name).write_bytes(array.tobytes())


def triton_config(runtime: Runtime, name: str, signature: ModelSignature, max_batch_size: int, *,
                  gpu: bool = False, warmup: bool = False, max_queue_delay_us: int = 2000,
                  ) -> TritonModelConfig:
    """The config of `name` served by `runtime`: ONNX Runtime on CPU or GPU (`gpu`), a TensorRT engine on
    GPU (whose profile covers batch 1..max_batch_size, warmed up with <model>/warmup/ when `warmup`), or
    the python backend on CPU."""
    key, value = TRITON_PLATFORMS[runtime]
    return TritonModelConfig(
        name=name, signature=signature, max_batch_size=max_batch_size,
        instance_kind="KIND_GPU" if runtime is Runtime.TENSORRT or (gpu and runtime is Runtime.ONNXRUNTIME)
        else "KIND_CPU",
        platform=value if key == "platform" else None, backend=value if key == "backend" else None,
        default_model_filename={Runtime.ONNXRUNTIME: ONNX_FILE, Runtime.TENSORRT: PLAN_FILE}.get(runtime),
        max_queue_delay_us=max_queue_delay_us, warmup=warmup and runtime is Runtime.TENSORRT,
    )


def python_backend_source() -> Path:
    """The TritonPythonModel file: copied as a file, never imported (training imports nothing of service)."""
    return Path(str(importlib.resources.files("service") / "triton_python_backend" / PYTHON_MODEL_FILE))


def check_contract(signature: ModelSignature, onnx_path: Path) -> None:
    """The model must have the inputs and outputs of occupancy.model_contract (a temporal model's state too):
    the gateway sends and reads those."""
    temporal = json.loads(signature.metadata.get(contract.META_TEMPORAL, "false")) is True
    inputs = contract.INPUT_NAMES + (contract.TEMPORAL_INPUT_NAMES if temporal else ())
    outputs = (contract.SEMANTICS, *(map(contract.next_state, contract.STATE_NAMES) if temporal else ()))
    names = {spec.name for spec in signature.inputs}
    missing = [name for name in inputs if name not in names]
    missing_outputs = [name for name in outputs if name not in {spec.name for spec in signature.outputs}]
    if missing or missing_outputs:
        raise InputError(f"{onnx_path}: not an occupancy model (inputs {sorted(names)}; "
                         f"expected {list(inputs)} and outputs {list(outputs)})")
