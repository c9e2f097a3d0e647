"""Bare ONNX Runtime time per frame of the exported models, against PyTorch eager, in one run.

For each config and each export target (the BEV pooling for ONNX Runtime, and the one for TensorRT that
`occ export --format tensorrt` writes, which Triton's ONNX Runtime backend may also run): export
(random weights; time does not depend on them) into a temporary folder, then time one frame of the
nuScenes-like rig (batch 1) with ONNX Runtime (CPU provider, inter-op 1 thread, intra-op as the
gateway's default: all cores) and with the same ExportModel in PyTorch eager (no_grad, torch's default
threads). The two take turns in `--rounds` blocks of `--repeats` frames each (a block starts with one
uncounted frame), so a change of the machine's load during the run affects both alike; the medians are
over all blocks. Run: `.venv/bin/python -m benchmarks.onnx_runtime [--repeats 5] [--rounds 3]`.
"""

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

from occupancy import model_contract as contract
from occupancy.model_repository import Runtime
from training.export.onnx_export import ExportModel, export_onnx, sample_inputs
from training.models.configs import build_model, get_config

CONFIGS = ("demo-tiny", "flashocc-r50-256x704")


def alternating_medians(runs: list[Callable[[], object]], repeats: int, rounds: int) -> list[float]:
    """Median seconds of each run, timed in `rounds` alternating blocks of `repeats` (after one warm-up)."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for run, seconds in zip(runs, times, strict=True):
            run()
            for _ in range(repeats):
                started = time.perf_counter()
                run()
                seconds.append(time.perf_counter() - started)
    return [statistics.median(seconds) for seconds in times]


def measure(config_name: str, target: Runtime, folder: Path, repeats: int, rounds: int) -> list[str]:
    config = get_config(config_name)
    torch.manual_seed(0)
    model = build_model(config).eval()
    onnx_path = folder / f"{config_name}-{target}.onnx"
    started = time.perf_counter()
    export_onnx(model, config, onnx_path, runtime=target)
    export_seconds = time.perf_counter() - started
    inputs = sample_inputs(config)
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    wrapper = ExportModel(model).eval()
    tensors = [torch.from_numpy(inputs[name]) for name in contract.INPUT_NAMES]
    with torch.no_grad():
        onnx_seconds, eager_seconds = alternating_medians(
            [lambda: session.run([contract.SEMANTICS], inputs), lambda: wrapper(*tensors)], repeats, rounds)
    return [config_name, target, f"{onnx_path.stat().st_size / 2**20:.1f}", f"{export_seconds:.1f}",
            f"{onnx_seconds:.3f}", f"{eager_seconds:.3f}", f"{eager_seconds / onnx_seconds:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="frames per block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per runtime, alternating")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    args = parser.parse_args()
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}, "
          f"{os.cpu_count()} CPUs, batch 1, medians over {args.rounds} alternating blocks of {args.repeats}")
    print("| config | pooling for | model.onnx MiB | export s | ORT s/frame | eager s/frame | eager / ORT |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.configs:
            for target in (Runtime.ONNXRUNTIME, Runtime.TENSORRT):
                row = measure(name, target, Path(folder), args.repeats, args.rounds)
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
