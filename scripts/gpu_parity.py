"""GPU parity: the TensorRT FP16 engine (or ONNX Runtime) against PyTorch FP32 on the same frame.

    python scripts/gpu_parity.py --checkpoint ckpt.pt --onnx repo/flashocc-r50-256x704/1/model.onnx \
        [--plan model.plan] [--max-batch 1] [--workspace-gb 8] [--runs 20] [--json out.json]

Builds the FP16 engine from the ONNX file when --plan does not exist yet (or loads it), runs the engine
and PyTorch FP32 (the checkpoint's model) on one nuScenes-like frame, and prints the argmax agreement
(all voxels, and voxels PyTorch calls occupied) and the median latency of each runtime. It runs what the
machine allows and says what it could not run: without TensorRT it compares ONNX Runtime's CUDA
provider with PyTorch on CUDA; without a GPU, ONNX Runtime's CPU provider with PyTorch on the CPU.
The ONNX file must be exported from the same checkpoint (`occ export`).
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from occupancy import model_contract as contract
from occupancy.errors import InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="PyTorch checkpoint (FP32 reference)")
    parser.add_argument("--config", help="model config name, for checkpoints that do not name theirs")
    parser.add_argument("--onnx", type=Path, required=True, help="model.onnx exported from the checkpoint")
    parser.add_argument("--plan", type=Path, help="TensorRT engine; built from --onnx when missing")
    parser.add_argument("--timing-cache", type=Path, default=Path("work/trt-timing.cache"))
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--workspace-gb", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per runtime, after 3 warm-up runs")
    parser.add_argument("--json", type=Path, help="write the results here too")
    return parser.parse_args(argv)


def timed(
    run: Callable[[], np.ndarray], runs: int, synchronize: Callable[[], None]
) -> tuple[np.ndarray, float]:
    """The output of `run` and its median wall time in ms over `runs` calls after 3 warm-up calls."""
    for _ in range(3):
        output = run()
    times = []
    for _ in range(runs):
        synchronize()
        started = time.perf_counter()
        output = run()
        synchronize()
        times.append((time.perf_counter() - started) * 1e3)
    return output, statistics.median(times)


def torch_runner(args: argparse.Namespace, frame: dict[str, np.ndarray], device: str):
    """PyTorch FP32: the checkpoint's model behind the same contract (normalisation and argmax included)."""
    import torch

    from training.export.onnx_export import ExportModel
    from training.models.checkpoint import load_model

    model = ExportModel(load_model(args.checkpoint, args.config)[0]).to(device).eval()
    tensors = [torch.from_numpy(frame[name]).to(device) for name in contract.INPUT_NAMES]

    def run() -> np.ndarray:
        with torch.inference_mode():
            return model(*tensors).cpu().numpy()

    return run


def tensorrt_runner(args: argparse.Namespace, frame: dict[str, np.ndarray]):
    """The FP16 engine through TensorRT's runtime, with torch CUDA tensors as its buffers."""
    import tensorrt as trt
    import torch

    from training.export.tensorrt import build_engine

    plan = args.plan or args.onnx.with_suffix(".plan")
    if not plan.is_file():
        build = build_engine(args.onnx, plan, max_batch=args.max_batch, workspace_gb=args.workspace_gb,
                             timing_cache=args.timing_cache)
        print(f"built {plan} in {build.seconds:.0f} s with TensorRT {build.tensorrt_version}, "
              f"{build.fp32_layers} geometry layers in FP32")
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        raise InputError(f"{plan}: TensorRT {trt.__version__} cannot load it (built by another version?)")
    context = engine.create_execution_context()
    inputs = {name: torch.from_numpy(array).cuda() for name, array in frame.items()}
    for name, tensor in inputs.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    shape = tuple(context.get_tensor_shape(contract.SEMANTICS))
    output = torch.empty(shape, dtype=torch.uint8, device="cuda")
    context.set_tensor_address(contract.SEMANTICS, output.data_ptr())
    stream = torch.cuda.Stream()

    def run() -> np.ndarray:
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return output.cpu().numpy()

    return run


def onnxruntime_runner(args: argparse.Namespace, frame: dict[str, np.ndarray], provider: str):
    import onnxruntime as ort

    session = ort.InferenceSession(str(args.onnx), providers=[provider])
    return lambda: session.run([contract.SEMANTICS], frame)[0]


def agreement(candidate: np.ndarray, reference: np.ndarray, free_class: int = 17) -> dict[str, float]:
    equal, occupied = candidate == reference, reference != free_class
    return {
        "all_voxels": float(equal.mean()),
        "occupied_voxels": float(equal[occupied].mean()) if occupied.any() else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import onnxruntime as ort
    import torch

    from training.export.onnx_export import sample_inputs
    from training.models.checkpoint import read_checkpoint
    from training.models.configs import get_config

    gpu = torch.cuda.is_available()
    try:
        import tensorrt as trt

        tensorrt_version = trt.__version__
    except ImportError:
        tensorrt_version = None
    providers = ort.get_available_providers()
    skipped = []
    if not gpu:
        skipped.append("everything on a GPU: torch sees no CUDA device")
    if tensorrt_version is None:
        skipped.append("TensorRT: the `tensorrt` package is not installed (pip install -e '.[trt]')")
    if gpu and "CUDAExecutionProvider" not in providers:
        skipped.append(f"ONNX Runtime CUDA: this onnxruntime has only {providers} (install onnxruntime-gpu)")

    config_name = args.config or read_checkpoint(args.checkpoint).get("config")
    frame = sample_inputs(get_config(config_name))  # random images on the nuScenes-like rig
    device = "cuda" if gpu else "cpu"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    reference, reference_ms = timed(torch_runner(args, frame, device), args.runs, sync)
    results = {"device": torch.cuda.get_device_name() if gpu else "cpu", "config": config_name,
               f"pytorch_fp32_{device}_ms": reference_ms, "tensorrt": tensorrt_version, "comparisons": {}}
    candidates: dict[str, Callable[[], Callable[[], np.ndarray]]] = {}
    if gpu and tensorrt_version is not None:
        candidates["tensorrt_fp16"] = lambda: tensorrt_runner(args, frame)
    if gpu and "CUDAExecutionProvider" in providers:
        candidates["onnxruntime_cuda_fp32"] = lambda: onnxruntime_runner(args, frame, "CUDAExecutionProvider")
    if not candidates:
        candidates["onnxruntime_cpu_fp32"] = lambda: onnxruntime_runner(args, frame, "CPUExecutionProvider")
    for name, make in candidates.items():
        try:
            output, ms = timed(make(), args.runs, sync)
        except Exception as error:  # one runtime failing must not hide the others' results
            skipped.append(f"{name}: {type(error).__name__}: {error}")
            continue
        results["comparisons"][name] = {"ms": ms, "agreement_with_pytorch": agreement(output, reference)}

    print(json.dumps(results, indent=2))
    for reason in skipped:
        print(f"not run: {reason}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**results, "not_run": skipped}, indent=2))
    return 0 if results["comparisons"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as error:
        print(f"gpu_parity: error: {error}", file=sys.stderr)
        sys.exit(2)
