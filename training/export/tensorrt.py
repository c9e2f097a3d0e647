"""TensorRT FP16 engines from the exported ONNX model.

The engine is built with TensorRT's Python API (`tensorrt` 10.x, the `trt` extra): FP16 kernels where
TensorRT finds them faster, plugins registered before parsing (ScatterElements with a reduction runs
through TensorRT's built-in plugin), one optimisation profile covering batch 1..max_batch for every
input, a workspace memory-pool limit, and a persistent timing cache (loaded when present, saved after,
so a rebuild skips the kernel timing). Layers that only compute camera geometry from the calibration
inputs (frustum points, camera -> ego transforms, voxel indices) stay FP32: FP16 has a spacing of 1 px
at 1024-2048 px and 1/8 voxel at index 128-256, enough to move points across voxel boundaries.

An engine only loads under the TensorRT version that built it: build with the TensorRT of the Triton
image that serves it (TRITON_IMAGE ships TENSORRT_VERSION; see model_repository/README.md).
"""

import ctypes
import math
import time
from dataclasses import dataclass
from pathlib import Path

from occupancy import model_contract as contract
from occupancy.errors import InputError
from training.export.triton_config import ModelSignature, read_signature

# The serving image and the TensorRT it ships; engines must be built with exactly this TensorRT.
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"
TENSORRT_IMAGE = "nvcr.io/nvidia/tensorrt:25.01-py3"
TENSORRT_VERSION = "10.8.0.43"


@dataclass(frozen=True)
class EngineBuild:
    """What build_engine produced."""

    plan_path: Path
    seconds: float  # wall time of the build, timing-cache load and save included
    tensorrt_version: str
    trtexec: str  # the equivalent trtexec command line
    fp32_layers: int  # geometry layers kept in FP32


def trtexec_command(
    onnx_path: Path, plan_path: Path, signature: ModelSignature, *, max_batch: int, opt_batch: int,
    workspace_gb: float, timing_cache: Path, fp32_layer_names: tuple[str, ...] = (),
) -> str:
    """The trtexec line that builds the same engine (FP16, batch profile 1/opt/max, workspace, cache).

    `fp32_layer_names` adds the per-layer FP32 constraints, known only once TensorRT has parsed the model.
    """

    def shapes(batch: int) -> str:
        return ",".join(f"{s.name}:{'x'.join(map(str, (batch, *s.dims)))}" for s in signature.inputs)

    parts = [
        "trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}", "--fp16",
        f"--minShapes={shapes(1)}", f"--optShapes={shapes(opt_batch)}", f"--maxShapes={shapes(max_batch)}",
        f"--memPoolSize=workspace:{math.ceil(workspace_gb * 1024)}M", f"--timingCacheFile={timing_cache}",
    ]
    if fp32_layer_names:
        parts += ["--precisionConstraints=prefer",
                  "--layerPrecisions=" + ",".join(f"{name}:fp32" for name in fp32_layer_names)]
    return " ".join(parts)


def cuda_device_count() -> int:
    """CUDA devices the driver sees (0 without a driver or GPU); asks libcuda directly, no torch needed."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def require_tensorrt():
    """The tensorrt module; one InputError saying what is missing here and how to build elsewhere."""
    missing = []
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
        missing.append("TensorRT 10 (the `tensorrt` Python package, extra `trt`: pip install -e '.[trt]')")
    if trt is not None and not trt.__version__.startswith("10."):
        missing.append(f"TensorRT 10 (found {trt.__version__}; TensorRT 11 dropped the FP16 builder flag)")
    if cuda_device_count() == 0:
        missing.append("a CUDA GPU with its driver")
    if missing:
        raise InputError(
            "cannot build a TensorRT engine here, missing " + " and ".join(missing) + ". Build on a GPU "
            f"machine, e.g. inside {TENSORRT_IMAGE} (TensorRT {TENSORRT_VERSION}, the TensorRT of "
            f"{TRITON_IMAGE}) with the trtexec command printed above, or with `pip install -e '.[trt]'` "
            "and the same `occ export` command there"
        )
    if trt.__version__ != TENSORRT_VERSION:
        print(f"warning: TensorRT {trt.__version__} builds engines that only load under that version; "
              f"{TRITON_IMAGE} runs TensorRT {TENSORRT_VERSION}")
    return trt


def build_engine(
    onnx_path: Path, plan_path: Path, *, max_batch: int, workspace_gb: float, timing_cache: Path,
    opt_batch: int = 1,
) -> EngineBuild:
    """Build an FP16 engine of `onnx_path` into `plan_path` for batches 1..max_batch (tuned for opt_batch).

    Prints the equivalent trtexec command first, so that it is there even where the build cannot run.
    Raises InputError without TensorRT 10 or a GPU, or if TensorRT cannot parse the model.
    """
    if not 1 <= opt_batch <= max_batch:
        raise InputError(f"--opt-batch {opt_batch} must lie in 1..--max-batch {max_batch}")
    signature = read_signature(onnx_path)
    command = dict(max_batch=max_batch, opt_batch=opt_batch, workspace_gb=workspace_gb,
                   timing_cache=timing_cache)
    print("equivalent trtexec command (FP16; without the FP32 geometry constraints a TensorRT build adds):")
    print("  " + trtexec_command(onnx_path, plan_path, signature, **command))
    trt = require_tensorrt()
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    config.add_optimization_profile(_batch_profile(builder, network, opt_batch, max_batch))
    fp32_layers = pin_geometry_to_fp32(trt, network)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):  # written for another GPU or TensorRT
        print(f"warning: {timing_cache} does not fit this GPU and TensorRT; timing from scratch")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build {onnx_path} (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    full_command = trtexec_command(onnx_path, plan_path, signature, **command, fp32_layer_names=fp32_layers)
    print("equivalent trtexec command, with the FP32 geometry constraints:\n  " + full_command)
    seconds = time.perf_counter() - started
    return EngineBuild(plan_path, seconds, trt.__version__, full_command, len(fp32_layers))


def _batch_profile(builder, network, opt_batch: int, max_batch: int):
    """One profile: every input's batch dimension from 1 to max_batch; the other dimensions are fixed."""
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = tuple(tensor.shape)[1:]
        if any(d < 0 for d in dims):
            raise InputError(f"input {tensor.name!r} has a dynamic dimension besides the batch: "
                             f"{tuple(tensor.shape)}")
        profile.set_shape(tensor.name, (1, *dims), (opt_batch, *dims), (max_batch, *dims))
    return profile


def pin_geometry_to_fp32(trt, network) -> tuple[str, ...]:
    """Keep the float layers that compute from the calibration inputs but not from the images in FP32.

    Such layers compute camera geometry (frustum points, camera -> ego, voxel indices). Layers come in
    topological order, so one pass propagates both properties from the inputs; constant-only layers
    (weights) are left to TensorRT. Returns the pinned layers' names.
    """
    from_images = {contract.IMAGES}
    from_calibration = set(contract.INPUT_NAMES) - from_images
    pinned = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        inputs = [t for t in (layer.get_input(i) for i in range(layer.num_inputs)) if t is not None]
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        if any(t.name in from_images for t in inputs):
            from_images.update(t.name for t in outputs)
            continue
        if not any(t.name in from_calibration for t in inputs):
            continue
        from_calibration.update(t.name for t in outputs)
        if not any(t.dtype == trt.float32 for t in (*inputs, *outputs)):
            continue
        layer.precision = trt.float32
        for i, tensor in enumerate(outputs):
            if tensor.dtype == trt.float32:
                layer.set_output_type(i, trt.float32)
        pinned.append(layer.name)
    return tuple(pinned)
