"""`occ export`: a checkpoint -> a checked ONNX (and TensorRT) version in the Triton model repository."""

import argparse
from pathlib import Path

HELP = "Export a model to ONNX (and TensorRT FP16) as a new version in the Triton model repository."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config_positional", nargs="?", metavar="CONFIG",
                        help="model config name (or --config)")
    parser.add_argument("--config", help="model config name, e.g. demo-tiny, flashocc-r50-256x704")
    parser.add_argument("--checkpoint", type=Path,
                        help="weights (`occ train` or a reference checkpoint); random weights without one")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"),
                        help="Triton model repository (default: %(default)s)")
    parser.add_argument("--name", help="served model name (default: the config name)")
    parser.add_argument("--version", type=int, help="version number (default: the next free one)")
    parser.add_argument("--opset", type=int, default=17,
                        help="ONNX opset, 16 or newer (default: %(default)s)")
    parser.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx",
                        help="tensorrt also builds an FP16 engine (needs TensorRT 10 and a GPU)")
    parser.add_argument("--max-batch", type=int, default=4,
                        help="Triton max_batch_size (default: %(default)s)")
    parser.add_argument("--workspace-gb", type=float, default=4.0,
                        help="TensorRT workspace memory pool (default: %(default)s)")
    parser.add_argument("--timing-cache", type=Path, default=Path("work/trt-timing.cache"),
                        help="TensorRT timing cache, kept outside the repository (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from occupancy.errors import InputError
    from training.export.repository_export import export_to_repository

    names = {name for name in (args.config_positional, args.config) if name}
    if len(names) != 1:
        raise InputError("--config: give one model config name (e.g. --config demo-tiny)"
                         if not names else f"--config: two different names given: {', '.join(sorted(names))}")
    if args.max_batch < 1:
        raise InputError(f"--max-batch {args.max_batch}: must be at least 1")
    export_to_repository(names.pop(), args.checkpoint, args.repository, args.name, args.version,
                         opset=args.opset, export_format=args.format, max_batch=args.max_batch,
                         workspace_gb=args.workspace_gb, timing_cache=args.timing_cache)
    return 0
