"""Every full-size config on one GPU: batch-1 latency and batched throughput per runtime, in one run.

For each config of training/models/configs.py that mirrors a reference one (`reference` set; `--configs`
picks others), with random weights (time does not depend on them), the served computation
(training/export/onnx_export.py `ExportModel`: uint8 images and calibration in, argmax classes out) on
the nuScenes-like rig, through:
- PyTorch eager FP32 and FP16 (autocast);
- PyTorch FP16 replayed as a CUDA graph (no Python or launch overhead; where capture works);
- torch.compile FP16 (`--compile`: compiling takes minutes, so off by default);
- the exported ONNX model in ONNX Runtime: the CUDA provider (the ONNX Runtime pooling) and, where
  installed, the TensorRT provider (FP16, the graph with TensorRT's pooling).
Each row is a number or the reason it could not run (a config that fails to build, a provider that is
missing, an out-of-memory, the time budget spent). Prints a Markdown table headed by the GPU's name and
writes JSON. `--budget-s` (default 420) bounds the whole run: what would start after it is skipped.

`--tiny` is the CPU mode the test suite runs so this script cannot rot: demo-tiny on the CPU, 2 repeats,
FP32 eager and ONNX Runtime's CPU provider; the CUDA-only rows give their reason.

Run on a GPU machine: `python -m benchmarks.gpu --json gpu.json` (about 8 minutes on one large GPU).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from occupancy import model_contract as contract
from occupancy.model_repository import Runtime
from training.export.onnx_export import ExportModel, export_onnx, sample_inputs
from training.models.configs import CONFIGS, build_model

TINY_CONFIG = "demo-tiny"


@dataclass
class Row:
    config: str
    runtime: str
    latency_ms: float | None = None  # batch 1, median
    throughput_fps: float | None = None  # frames per second at the batched size
    batch: int | None = None
    reason: str | None = None  # why a number is missing


@dataclass(frozen=True)
class Plan:
    device: torch.device
    repeats: int
    batch: int
    budget_s: float
    compile: bool
    started: float

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.started > self.budget_s


def full_size_configs() -> list[str]:
    """The configs that mirror a reference config (the zoo, not the demo); new ones join by themselves."""
    return [name for name, config in CONFIGS.items() if getattr(config, "reference", "")]


def timed(call: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `call` after two warm-ups, synchronising the GPU around each."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        call()
    synchronize()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        synchronize()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(config: str, runtime: str, plan: Plan, call_for: Callable[[int], Callable[[], object]]) -> Row:
    """Batch-1 latency and batched throughput of `call_for(batch)`, or the reason it failed."""
    row = Row(config, runtime, batch=plan.batch)
    if plan.out_of_time():
        row.reason = f"time budget of {plan.budget_s:.0f} s spent"
        return row
    try:
        row.latency_ms = 1000 * timed(call_for(1), plan.device, plan.repeats)
        row.throughput_fps = plan.batch / timed(call_for(plan.batch), plan.device, plan.repeats)
    except Exception as error:  # one row's failure (OOM, a capture error, a missing op) must not end the run
        row.reason = failure(error)
    finally:
        if plan.device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def failure(error: Exception) -> str:
    """A one-line reason: the exception's type and the first line of its message."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0][:160]}" if message else type(error).__name__


def torch_inputs(config_name: str, batch: int, device: torch.device) -> list[torch.Tensor]:
    inputs = sample_inputs(CONFIGS[config_name], batch)
    return [torch.from_numpy(inputs[name]).to(device) for name in contract.INPUT_NAMES]


def eager(model: ExportModel, config: str, plan: Plan, fp16: bool) -> Callable[[int], Callable[[], object]]:
    def call_for(batch: int) -> Callable[[], object]:
        tensors = torch_inputs(config, batch, plan.device)
        autocast = torch.autocast(plan.device.type, dtype=torch.float16) if fp16 else nullcontext()

        def call() -> object:
            with torch.no_grad(), autocast:
                return model(*tensors)

        return call

    return call_for


def cuda_graph(model: ExportModel, config: str, plan: Plan) -> Callable[[int], Callable[[], object]]:
    """FP16 forward captured once per batch size and replayed (static inputs)."""
    def call_for(batch: int) -> Callable[[], object]:
        tensors = torch_inputs(config, batch, plan.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up on a side stream, as capture requires
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                    model(*tensors)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            model(*tensors)
        return graph.replay

    return call_for


def compiled(model: ExportModel, config: str, plan: Plan) -> Callable[[int], Callable[[], object]]:
    return eager(torch.compile(model, mode="max-autotune-no-cudagraphs"), config, plan, fp16=True)


def missing_provider(provider: str) -> str | None:
    """Why ONNX Runtime cannot run `provider` here, or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    available = ort.get_available_providers()
    return None if provider in available else f"{provider} not in this onnxruntime ({', '.join(available)})"


def onnx_runtime(path: Path, config: str, provider: str, options: dict | None = None
                 ) -> Callable[[int], Callable[[], object]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=[(provider, options or {})])
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"{provider} did not take the graph (session providers {session.get_providers()})")

    def call_for(batch: int) -> Callable[[], object]:
        inputs = sample_inputs(CONFIGS[config], batch)
        return lambda: session.run([contract.SEMANTICS], inputs)

    return call_for


def reason_row(config: str, runtime: str, reason: str) -> Row:
    return Row(config, runtime, reason=reason)


def bench_config(name: str, plan: Plan, folder: Path) -> list[Row]:
    """Every runtime of one config; a config that cannot be built is one row with the reason."""
    cuda = plan.device.type == "cuda"
    try:
        torch.manual_seed(0)
        model = ExportModel(build_model(CONFIGS[name])).eval().to(plan.device)
    except Exception as error:
        return [reason_row(name, "build", failure(error))]
    no_cuda = "needs CUDA"
    rows = [measure(name, "eager FP32", plan, eager(model, name, plan, fp16=False))]
    rows.append(measure(name, "eager FP16 autocast", plan, eager(model, name, plan, fp16=True)) if cuda
                else reason_row(name, "eager FP16 autocast", no_cuda))
    rows.append(measure(name, "CUDA graph FP16", plan, cuda_graph(model, name, plan)) if cuda
                else reason_row(name, "CUDA graph FP16", no_cuda))
    if plan.compile and cuda:
        rows.append(measure(name, "torch.compile FP16", plan, compiled(model, name, plan)))
    else:
        rows.append(reason_row(name, "torch.compile FP16", "not asked (--compile)" if cuda else no_cuda))
    rows += onnx_rows(name, model.model.cpu(), plan, folder)
    return rows


def onnx_rows(name: str, model: torch.nn.Module, plan: Plan, folder: Path) -> list[Row]:
    """ONNX Runtime rows: CUDA provider (or the CPU one in --tiny) and the TensorRT provider."""
    cuda = plan.device.type == "cuda"
    first = ("ORT CUDA provider FP32", "CUDAExecutionProvider") if cuda else \
        ("ORT CPU provider FP32", "CPUExecutionProvider")
    providers = [(*first, Runtime.ONNXRUNTIME, None)]
    providers.append(("ORT TensorRT provider FP16", "TensorrtExecutionProvider", Runtime.TENSORRT,
                      {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                       "trt_engine_cache_path": str(folder)}))
    rows = []
    for runtime, provider, target, options in providers:
        missing = missing_provider(provider)
        if missing or plan.out_of_time():
            rows.append(reason_row(name, runtime, missing or f"time budget of {plan.budget_s:.0f} s spent"))
            continue
        path = folder / f"{name}-{target}.onnx"
        try:
            if not path.exists():
                export_onnx(model, CONFIGS[name], path, runtime=target)
            call_for = onnx_runtime(path, name, provider, options)
        except Exception as error:
            rows.append(reason_row(name, runtime, failure(error)))
            continue
        rows.append(measure(name, runtime, plan, call_for))
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def table(rows: list[Row], title: str) -> str:
    lines = [f"## {title}", "", "| config | runtime | batch-1 latency ms | batched frames/s | note |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        latency = "-" if row.latency_ms is None else f"{row.latency_ms:.1f}"
        throughput = "-" if row.throughput_fps is None else f"{row.throughput_fps:.1f} (batch {row.batch})"
        lines.append(f"| {row.config} | {row.runtime} | {latency} | {throughput} | {row.reason or ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="demo-tiny on the CPU, 2 repeats (tests' mode)")
    parser.add_argument("--configs", nargs="+", help="default: every full-size config")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="batch size of the throughput rows")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what would start after this")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (minutes per config)")
    parser.add_argument("--json", type=Path, help="write the rows and the machine as JSON here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    plan = Plan(device=torch.device("cuda" if cuda else "cpu"), repeats=2 if args.tiny else args.repeats,
                batch=2 if args.tiny else args.batch, budget_s=args.budget_s, compile=args.compile,
                started=time.perf_counter())
    names = args.configs or ([TINY_CONFIG] if args.tiny else full_size_configs())
    unknown = [name for name in names if name not in CONFIGS]
    if unknown:
        print(f"benchmarks.gpu: unknown config(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}",
              file=sys.stderr)
        return 2
    if not cuda and not args.tiny:
        print("benchmarks.gpu: no CUDA device; --tiny runs the CPU mode", file=sys.stderr)
        return 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            rows += bench_config(name, plan, Path(folder))
            print(table(rows[-1:], name).splitlines()[-1], file=sys.stderr, flush=True)
    title = (f"{device_name(plan.device)}; torch {torch.__version__}; "
             f"{time.perf_counter() - plan.started:.0f} s in all")
    print(table(rows, title))
    if args.json:
        args.json.write_text(json.dumps({"device": device_name(plan.device), "torch": torch.__version__,
                                         "rows": [asdict(row) for row in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
