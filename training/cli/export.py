"""`occ export`: a checkpoint -> a checked ONNX (and TensorRT) version in the Triton model repository."""

import argparse
from pathlib import Path

from occupancy.model_repository import EXPORT_FORMATS

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
    parser.add_argument("--format", choices=tuple(EXPORT_FORMATS), default="onnx",
                        help="tensorrt also builds an FP16 engine (needs TensorRT 10 and a GPU)")
    parser.add_argument("--max-batch", type=int, default=4,
                        help="Triton max_batch_size (default: %(default)s)")
    parser.add_argument("--workspace-gb", type=float, default=4.0,
                        help="TensorRT workspace memory pool (default: %(default)s)")
    parser.add_argument("--timing-cache", type=Path, default=Path("work/trt-timing.cache"),
                        help="TensorRT timing cache, kept outside the repository (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from occupancy.errors import InputError
    from training.export.artifact import EngineOptions, export_artifact
    from training.models.configs import get_config
    from training.publish import publish

    names = {name for name in (args.config_positional, args.config) if name}
    if len(names) != 1:
        raise InputError("--config: give one model config name (e.g. --config demo-tiny)"
                         if not names else f"--config: two different names given: {', '.join(sorted(names))}")
    if args.max_batch < 1:
        raise InputError(f"--max-batch {args.max_batch}: must be at least 1")
    config = get_config(names.pop())
    name = args.name or config.name
    if args.version is not None and (args.repository / name / str(args.version)).exists():
        raise InputError(f"version {args.repository / name / str(args.version)} exists already; choose "
                         "another --version or leave it out")
    runtime = EXPORT_FORMATS[args.format]
    engine = EngineOptions(args.max_batch, args.workspace_gb, args.timing_cache)
    with tempfile.TemporaryDirectory(prefix="occ-export-") as scratch:
        artifact = export_artifact(config, args.checkpoint, Path(scratch), runtime, opset=args.opset,
                                   engine=engine)
        published = publish(args.repository, name, artifact, runtime=runtime, version=args.version,
                            max_batch_size=args.max_batch)
    print(f"wrote {published.version_dir}")
    return 0
