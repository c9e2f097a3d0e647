"""Where an exported model's time goes in ONNX Runtime: its profiler's per-node kernel times, summed by
operator type and by module (the TorchScript exporter names nodes by module path), side by side for
several graphs.

Each graph runs `--runs` frames of the nuScenes-like rig (training/export/onnx_export.py `sample_inputs`)
with the gateway's session options (CPU provider, inter-op 1 thread, intra-op ONNX Runtime's default);
the first two are warm-up, and each node's time is its median over the rest. Without `--onnx` it
exports `--config` (random weights) with the current code into a temporary folder.

Run: `.venv/bin/python -m benchmarks.onnx_profile [--config demo-tiny] [--onnx A.onnx B.onnx] [--top 12]`
"""

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import onnxruntime as ort

from benchmarks.http_predict import load_average
from occupancy import model_contract as contract
from training.export.onnx_export import export_onnx, sample_inputs
from training.models.configs import build_model, get_config

WARMUP = 2


def node_medians(path: Path, inputs: dict, runs: int, folder: Path
                 ) -> tuple[dict[tuple[str, str], float], float]:
    """{(node name, op type): median µs} and the median model_run µs."""
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / path.stem)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run([contract.SEMANTICS], inputs)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[tuple[str, str], list[float]] = defaultdict(list)
    model_runs = []
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            per_node[(node, event["args"]["op_name"])].append(event["dur"])
        elif event.get("name") == "model_run":
            model_runs.append(event["dur"])
    medians = {key: statistics.median(times[WARMUP:])
               for key, times in per_node.items() if len(times) > WARMUP}
    return medians, statistics.median(model_runs[WARMUP:])


def module_of(node: str) -> str:
    """`/model/img_backbone/layer1/...` -> `img_backbone`; NCHWc-layout nodes belong to their module too."""
    parts = node.strip("/").split("/")
    return parts[1] if parts[0] == "model" and len(parts) > 1 else parts[0]


def totals(medians: dict[tuple[str, str], float], key) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    for (node, op), micros in medians.items():
        sums[key(node, op)] += micros / 1000
    return sums


def side_by_side(title: str, columns: dict[str, dict[str, float]], top: int) -> list[str]:
    names = list(columns)
    keys = sorted(set().union(*columns.values()), key=lambda k: -max(c.get(k, 0.0) for c in columns.values()))
    lines = [f"| {title} | " + " | ".join(f"{name} ms" for name in names) + " |",
             "| --- |" + " --- |" * len(names)]
    for key in keys[:top]:
        lines.append(f"| {key} | " + " | ".join(f"{columns[n].get(key, 0.0):.2f}" for n in names) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo-tiny")
    parser.add_argument("--onnx", type=Path, nargs="+", help="graphs to compare (default: a fresh export)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    config = get_config(args.config)
    inputs = sample_inputs(config)
    print(f"onnxruntime {ort.__version__}; load average at start {load_average()}")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        paths = args.onnx or [export_onnx(build_model(config).eval(), config, folder / f"{args.config}.onnx")]
        profiles = {path.name: node_medians(path, inputs, args.runs, folder) for path in paths}
    print(f"load average at end {load_average()}; median of {args.runs - WARMUP} runs after {WARMUP}\n")
    print("| | " + " | ".join(profiles) + " |\n| --- |" + " --- |" * len(profiles))
    print("| model_run ms | " + " | ".join(f"{run / 1000:.1f}" for _, run in profiles.values()) + " |")
    print("| sum of node medians ms | " + " | ".join(f"{sum(m.values()) / 1000:.1f}"
                                                    for m, _ in profiles.values()) + " |\n")
    by_op = {name: totals(medians, lambda node, op: op) for name, (medians, _) in profiles.items()}
    print(*side_by_side("operator", by_op, args.top), sep="\n")
    print()
    by_module = {name: totals(medians, lambda node, op: module_of(node))
                 for name, (medians, _) in profiles.items()}
    print(*side_by_side("module", by_module, args.top), sep="\n")
    print()
    by_node = {name: {f"{op} {node}": micros / 1000 for (node, op), micros in medians.items()}
               for name, (medians, _) in profiles.items()}
    print(*side_by_side("node", by_node, args.top), sep="\n")


if __name__ == "__main__":
    main()
