"""Full HTTP request time through a real `occ serve` (embedded backend) and where it goes, in one run.

Exports each config with random weights (time does not depend on them) into a fresh model repository,
starts `occ serve` on a free loopback port, and sends frames of the synthetic dataset's val split (six
1600 x 900 JPEGs each) one at a time with the client library. Per request it records the gateway's
timing_ms stages (decode, preprocess, inference, encode, total), the client's round trip (request sent
to body read) and the HTTP overhead = round trip - server total; the report gives medians (and p90 of
the round trip). For demo-tiny it also compares the three encodings and runs a short load at
concurrency 2. Writes a Markdown report with the machine, versions, load averages and the command.

Run: `.venv/bin/python -m benchmarks.http_predict --data-root work/synth-demo`
"""

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from clients.bench import bench
from clients.client import OccupancyClient, Prediction, PredictRequest, build_request
from clients.dataset import dataset_frame
from clients.local_gateway import running_gateway
from occupancy.classes import FREE_CLASS
from occupancy.data_root import load_index

CONFIGS = ("demo-tiny", "flashocc-r50-256x704")
STAGES = ("decode", "preprocess", "inference", "encode", "total")


def machine() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
    names = ("numpy", "opencv-python-headless", "onnxruntime", "fastapi", "uvicorn", "httpx", "torch")
    packages = ", ".join(f"{name} {version(name)}" for name in names)
    return [f"- `nproc`: {os.cpu_count()}; CPU: {cpu}; RAM: {memory_kib / 2**20:.1f} GiB",
            f"- Python {platform.python_version()} on {platform.platform()}; {packages}"]


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def export(repository: Path, configs: list[str]) -> dict[str, float]:
    """Export each config with random weights; seconds per config."""
    import tempfile

    from occupancy.model_repository import Runtime
    from training.export.artifact import export_artifact
    from training.models.configs import get_config
    from training.publish import publish

    seconds = {}
    for name in configs:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            artifact = export_artifact(get_config(name), None, Path(scratch), Runtime.ONNXRUNTIME,
                                       log=lambda message: print(f"  {message}", flush=True))
            publish(repository, name, artifact, runtime=Runtime.ONNXRUNTIME)
        seconds[name] = time.perf_counter() - started
    return seconds


def sequential(
    client: OccupancyClient, requests: list[PredictRequest], count: int, warmup: int
) -> list[Prediction]:
    """`count` requests one at a time, cycling over the frames, after `warmup` uncounted ones."""
    for index in range(warmup):
        client.send(requests[index % len(requests)])
    return [client.send(requests[index % len(requests)]) for index in range(count)]


def requests_for(frames: list, model: str, encoding: str) -> list[PredictRequest]:
    return [build_request(frame.images, frame.calibration, model, encoding) for frame in frames]


def overhead_note(label: str, predictions: list[Prediction]) -> str:
    """One sentence: how much of the round trip is not the model."""
    round_trip = np.median([p.round_trip_ms for p in predictions])
    inference = np.median([p.timing_ms["inference"] for p in predictions])
    http = np.median([p.round_trip_ms - p.timing_ms["total"] for p in predictions])
    return (f"- {label}: inference is {100 * inference / round_trip:.0f}% of the median round trip; "
            f"HTTP overhead {100 * http / round_trip:.1f}%, everything else the gateway does "
            f"{100 * (round_trip - inference - http) / round_trip:.0f}%.")


def stage_row(label: str, predictions: list[Prediction]) -> str:
    medians = [np.median([p.timing_ms[stage] for p in predictions]) for stage in STAGES]
    round_trips = [p.round_trip_ms for p in predictions]
    overhead = np.median([p.round_trip_ms - p.timing_ms["total"] for p in predictions])
    body_kib = np.median([p.body_bytes for p in predictions]) / 1024
    occupied = 100 * np.mean([np.mean(p.grid != FREE_CLASS) for p in predictions])
    cells = [label, str(len(predictions)), *(f"{m:.1f}" for m in medians), f"{np.median(round_trips):.1f}",
             f"{np.percentile(round_trips, 90):.1f}", f"{overhead:.1f}", f"{body_kib:.0f}", f"{occupied:.1f}",
             f"{os.getloadavg()[0]:.2f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("work/synth-demo"))
    parser.add_argument("--frames", type=int, default=5, help="val frames to cycle over")
    parser.add_argument("--requests", type=int, default=40, help="timed requests for demo-tiny, dense")
    parser.add_argument("--requests-large", type=int, default=15, help="timed requests for flashocc-r50")
    parser.add_argument("--requests-encoding", type=int, default=20, help="per encoding (demo-tiny)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/http_predict_results.md"))
    args = parser.parse_args()
    command = "python -m benchmarks.http_predict " + shlex.join(sys.argv[1:])

    frames = [dataset_frame(args.data_root, "val", index=index)
              for index in range(min(args.frames, len(load_index(args.data_root, "val"))))]
    lines = ["# HTTP /predict: request time and per-stage overhead", "",
             f"Command: `{command}` (from the repository root, with `.venv/bin/python`).", "",
             "## Machine", *machine(), f"- load average (1/5/15 min) at the start: {load_average()}", ""]
    with tempfile.TemporaryDirectory(prefix="occ-http-bench-") as folder:
        repository = Path(folder) / "repository"
        print(f"exporting {', '.join(args.configs)} (random weights) into {repository}", flush=True)
        export_seconds = export(repository, args.configs)
        with running_gateway("--repository", str(repository), log_path=Path(folder) / "serve.log",
                             timeout_s=120) as url:
            rows, extra, notes = [], [], []
            with OccupancyClient(url, timeout=120) as client:
                for name in args.configs:
                    timed = args.requests if name == "demo-tiny" else args.requests_large
                    print(f"{name}: {timed} sequential requests", flush=True)
                    requests = requests_for(frames, name, "dense")
                    predictions = sequential(client, requests, timed, warmup=2)
                    rows.append(stage_row(name, predictions))
                    notes.append(overhead_note(name, predictions))
                if "demo-tiny" in args.configs:
                    for encoding in ("dense", "sparse", "npy"):
                        requests = requests_for(frames, "demo-tiny", encoding)
                        extra.append(stage_row(f"demo-tiny, {encoding}",
                                               sequential(client, requests, args.requests_encoding, 1)))
                    load = bench(url, requests_for(frames, "demo-tiny", "dense")[0], requests=args.requests,
                                 concurrency=2, warmup=1)
            server_log = (Path(folder) / "serve.log").read_text()
    header = ("| model | requests | decode | preprocess | inference | encode | server total | round trip "
              "| round trip p90 | HTTP overhead | body KiB | non-free % | load avg 1 min |")
    rule = "| --- " * 13 + "|"
    lines += [
        "## Setup",
        f"- Frames: the first {len(frames)} samples of `{args.data_root}` val (six 1600 x 900 JPEGs each, "
        f"{np.mean([sum(p.stat().st_size for p in f.images.values()) for f in frames]) / 2**20:.2f} MiB "
        "per frame on average), cycled; sent as multipart with the calibration JSON.",
        "- Server: `occ serve` subprocess, embedded ONNX Runtime backend, default settings (one frame at "
        "a time, ORT intra-op threads = all cores), on 127.0.0.1.",
        "- Models: exported by `training.export.artifact.export_artifact` and published with **random "
        "weights** (timing does not depend on the weights); export took "
        + ", ".join(f"{n} {s:.0f} s" for n, s in export_seconds.items()) + ".",
        "- Client: `clients.client.OccupancyClient` (httpx, keep-alive), one request at a time after 2 "
        "warm-up requests. Round trip = request sent to response body read (grid decoding not included). "
        "HTTP overhead = round trip - server total, per request: upload of ~1.5 MB, multipart parsing, JSON "
        "and the response body, loopback TCP. `non-free %`: share of the grid's voxels that are not free; "
        "the encode stage and the body size depend on it (a sparse list grows with it, zlib shrinks a "
        "uniform grid), and random weights predict degenerate grids, so those two columns say little "
        "about a trained model.",
        "",
        "## Results (medians, milliseconds; the 1-minute load average when each row finished)",
        header, rule, *rows, "", *notes, "",
        "### demo-tiny by encoding", header, rule, *extra, "",
        "### demo-tiny at concurrency 2 (`clients.bench`, one frame, dense)",
        "The gateway processes one frame at a time (max_concurrent 1), so here `total` includes the wait "
        "for that slot; throughput gains only from overlapping the upload and parsing with inference.",
        "```", load.summary() if "demo-tiny" in args.configs else "not run", "```", "",
        f"Load average at the end: {load_average()}.", "",
        "Server log excerpt:", "```", *server_log.strip().splitlines()[:6], "```",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
