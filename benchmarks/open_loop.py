"""Latency against offered rate (open loop) for demo-tiny: the gateway on the embedded backend, the gateway
on the local Triton, and that Triton alone, in one run.

The frame is examples/frame/ (six 1600 x 900 JPEGs and their calibration) and the model the committed
demo-tiny's newest version. The local Triton (`occ triton-local`'s server: nvidia-pytriton's CPU
tritonserver) serves it as a python-backend model running the same ONNX with ONNX Runtime. "Triton
alone" sends the gateway's own model inputs for that frame (decoded and preprocessed once, with the
gateway's pipeline) straight to Triton's gRPC endpoint, twice: with tritonclient's asyncio client, open
loop at the same rates and closed loop at concurrency 1, and with NVIDIA's perf_analyzer (`make
perf-analyzer`; its request-rate mode with a constant schedule, and concurrency 1) where it is installed.
What the gateway adds on top of bare Triton is the difference. Gateway settings are the defaults (one
frame at a time, a wait queue of 8, then 503). The rates are interleaved: each round runs every setup at
one rate.

Run: `.venv/bin/python -m benchmarks.open_loop [--rates 2 4 6 8 10] [--duration 10]`
"""

import argparse
import asyncio
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from benchmarks.http_predict import load_average, machine
from clients.bench import PERCENTILES, BenchResult, bench
from clients.client import build_request
from clients.local_gateway import free_port, running_gateway
from occupancy import model_contract as contract
from occupancy.calibration import parse_calibration
from occupancy.cameras import CAMERA_NAMES
from occupancy.model_repository import scan_repository

FRAME = Path("examples/frame")
MODEL = "demo-tiny"
REPOSITORY = Path("model_repository")
PERF_ANALYZER = "perf_analyzer"


def committed_onnx() -> Path:
    """The newest committed version of the demo model."""
    versions = scan_repository(REPOSITORY)[MODEL]
    return versions.onnx_path(versions.latest)


def frame_files() -> tuple[dict[str, bytes], dict]:
    images = {name: (FRAME / f"{name}.jpg").read_bytes() for name in CAMERA_NAMES}
    return images, json.loads((FRAME / "calibration.json").read_text())


def model_inputs(images: dict[str, bytes], calibration: dict) -> dict[str, np.ndarray]:
    """What the gateway sends its backend for this frame (its own decode and preprocessing)."""
    import onnx

    from service.pipeline import Frame, check_headers, prepare_inputs

    metadata = {p.key: p.value for p in onnx.load(str(committed_onnx())).metadata_props}
    frame = Frame(images, parse_calibration(calibration))
    input_size = tuple(json.loads(metadata[contract.META_INPUT_SIZE]))
    inputs, _ = prepare_inputs(frame, check_headers(frame, 4096 * 4096), input_size)
    return inputs


async def bare_triton(grpc_url: str, inputs: dict[str, np.ndarray], rate: float | None, duration_s: float,
                      concurrency: int = 1) -> BenchResult:
    """Open loop at `rate` (or closed loop at `concurrency` for `duration_s`) straight to Triton."""
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    def tensors() -> list:
        result = []
        for name, array in inputs.items():
            tensor = grpcaio.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            result.append(tensor)
        return result

    latencies: list[float] = []
    errors: Counter[str] = Counter()
    sent = 0
    async with grpcaio.InferenceServerClient(grpc_url) as client:
        outputs = [grpcaio.InferRequestedOutput(contract.SEMANTICS)]
        await client.infer(MODEL, tensors(), outputs=outputs)  # warm-up

        async def once(since: float) -> None:
            nonlocal sent
            sent += 1
            try:
                await client.infer(MODEL, tensors(), outputs=outputs, client_timeout=60)
            except InferenceServerException as error:
                errors[str(error.status())] += 1
            else:
                latencies.append(1000 * (time.perf_counter() - since))

        started = time.perf_counter()
        if rate is None:
            async def worker() -> None:
                while time.perf_counter() < started + duration_s:
                    await once(time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            async def frame(number: int) -> None:
                scheduled = started + number / rate
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
                await once(scheduled)

            await asyncio.gather(*(frame(n) for n in range(round(rate * duration_s))))
        wall_s = time.perf_counter() - started
    return BenchResult(requests=sent, ok=len(latencies), errors=dict(errors), wall_s=wall_s,
                       latency_ms=tuple(latencies), server_timing_ms={},
                       concurrency=concurrency if rate is None else None, offered_fps=rate)


def perf_analyzer_binary() -> str | None:
    """perf_analyzer on PATH or in this environment's bin (where `make perf-analyzer` puts it)."""
    beside = Path(sys.executable).parent / PERF_ANALYZER
    return shutil.which(PERF_ANALYZER) or (str(beside) if beside.is_file() else None)


def perf_analyzer_row(binary: str | None, grpc_url: str, input_dir: Path, load: str, mode: list[str],
                      duration_s: float) -> str:
    """One measurement of NVIDIA's perf_analyzer against Triton's gRPC endpoint, as a table row (its
    latencies are from the actual send, in µs in its CSV), or the reason it could not run."""
    if binary is None:
        return f"| perf_analyzer | {load} | not installed (`make perf-analyzer`) | | | | | | - |"
    report = input_dir.parent / "perf_analyzer.csv"
    command = [binary, "-m", MODEL, "-u", grpc_url, "-i", "grpc", "--input-data", str(input_dir),
               "--measurement-interval", str(round(1000 * duration_s)), "--max-trials", "3",
               "--stability-percentage", "50", "-f", str(report), *mode]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30 * duration_s + 60)
    except subprocess.TimeoutExpired:
        return f"| perf_analyzer | {load} | timed out | | | | | | - |"
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"| perf_analyzer | {load} | failed: {reason[0][:120]} | | | | | | - |"
    with report.open() as file:
        measured = next(csv.DictReader(file))
    latency = " | ".join(f"{int(measured[f'p{q:g} latency']) / 1000:.0f}" for q in PERCENTILES)
    return f"| perf_analyzer | {load} | {float(measured['Inferences/Second']):.2f} | {latency} | - | - | - |"


def write_perf_analyzer_inputs(inputs: dict[str, np.ndarray], folder: Path) -> Path:
    """perf_analyzer's --input-data folder: one raw file per input, named as the input, batch of one."""
    folder.mkdir()
    for name, array in inputs.items():
        (folder / name).write_bytes(np.ascontiguousarray(array).tobytes())
    return folder


def row(setup: str, load: str, result: BenchResult) -> str:
    others = ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items()) if k != "503") or "-"
    latency = " | ".join(f"{result.percentile(q):.0f}" for q in PERCENTILES)
    inference = result.server_timing_ms.get("inference")
    overloaded = 100 * result.share_overloaded
    return (f"| {setup} | {load} | {result.fps:.2f} | {latency} | {overloaded:.1f} | {others} | "
            f"{'-' if inference is None else f'{inference:.0f}'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[2.0, 4.0, 6.0, 8.0, 10.0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate and setup")
    args = parser.parse_args()
    from service.triton_local import TritonLocal

    images, calibration = frame_files()
    request = build_request(images, calibration, MODEL, "dense")
    inputs = model_inputs(images, calibration)
    start_load = load_average()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        folder = Path(folder)
        ports = [free_port() for _ in range(3)]
        # `occ triton-local`'s server on the committed repository (a python-backend view of it).
        triton = TritonLocal(REPOSITORY, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                             load_models=(MODEL,))
        triton.start()
        stack.callback(triton.stop)
        triton.wait_ready(timeout_s=120)
        gateways = {
            "gateway, embedded": stack.enter_context(running_gateway(
                "--repository", "model_repository", "--model", MODEL, log_path=folder / "embedded.log")),
            "gateway, Triton": stack.enter_context(running_gateway(
                "--repository", str(REPOSITORY), "--model", MODEL, "--backend", "triton",
                "--triton-url", triton.grpc_url, log_path=folder / "triton-gateway.log")),
        }
        for setup, url in gateways.items():
            rows.append(row(setup, "closed, 1 in flight", bench(url, request, requests=10_000, concurrency=1,
                                                                duration_s=args.duration, warmup=2)))
        rows.append(row("Triton alone", "closed, 1 in flight",
                        asyncio.run(bare_triton(triton.grpc_url, inputs, None, args.duration))))
        perf_analyzer = perf_analyzer_binary()
        perf_inputs = write_perf_analyzer_inputs(inputs, folder / "perf_inputs")
        rows.append(perf_analyzer_row(perf_analyzer, triton.grpc_url, perf_inputs, "closed, 1 in flight",
                                      ["--concurrency-range", "1"], args.duration))
        for rate in args.rates:
            for setup, url in gateways.items():
                rows.append(row(setup, f"open, {rate:g}/s", bench(url, request, duration_s=args.duration,
                                                                   rate=rate, warmup=1)))
            rows.append(row("Triton alone", f"open, {rate:g}/s",
                            asyncio.run(bare_triton(triton.grpc_url, inputs, rate, args.duration))))
            rows.append(perf_analyzer_row(perf_analyzer, triton.grpc_url, perf_inputs, f"open, {rate:g}/s",
                                          ["--request-rate-range", f"{rate:g}", "--request-distribution",
                                           "constant"], args.duration))
            print(*rows[-4:], sep="\n", file=sys.stderr, flush=True)
    print(f"Command: `{shlex.join(['python', '-m', 'benchmarks.open_loop', *sys.argv[1:]])}`")
    print(*machine(), sep="\n")
    print(f"- load average (1/5/15 min) at start {start_load}, at end {load_average()}; "
          f"`uptime` then: {os.popen('uptime').read().strip()}")
    print(f"- {args.duration:g} s per row; latency from the scheduled send (open loop), else from the send\n")
    print("| setup | load | achieved FPS | p50 ms | p90 ms | p99 ms | 503 % | other errors | inference ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(*rows, sep="\n")


if __name__ == "__main__":
    main()
