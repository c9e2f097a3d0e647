"""`occ publish`: a new numbered version of a model in the Triton model repository; Triton loads it."""

import argparse
from pathlib import Path

from occupancy.model_repository import Runtime

HELP = "add a model version to the Triton model repository (atomically) and tell Triton to load it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, required=True, help="Triton model repository folder")
    parser.add_argument("--name", required=True, help="model name (its folder in the repository)")
    parser.add_argument("--onnx", type=Path,
                        help="the exported ONNX model (with --plan: the one it was built from)")
    parser.add_argument("--plan", type=Path, help="a TensorRT engine; its ONNX model is found beside it")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint to export first (with --config)")
    parser.add_argument("--config", help="model config name of --checkpoint")
    parser.add_argument("--keep", type=int, help="keep only the newest K versions (default: all)")
    parser.add_argument("--triton-url", help="Triton gRPC HOST:PORT: load the new version, wait until ready "
                        "(where Triton restricts model control, with the key in $OCC_TRITON_KEY)")
    parser.add_argument("--backend-kind", choices=[runtime.value for runtime in Runtime], metavar="KIND",
                        help=f"{', '.join(runtime.value for runtime in Runtime)} (default: as the model is "
                             "served now, else by the source)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="config.pbtxt max_batch_size")
    parser.add_argument("--gpu", action="store_true", help="onnxruntime: KIND_GPU instances (default: CPU)")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for Triton")


def run(args: argparse.Namespace) -> int:
    import logging
    import tempfile

    from training.publish import publish

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runtime = Runtime(args.backend_kind) if args.backend_kind else None
    with tempfile.TemporaryDirectory(prefix="occ-publish-") as scratch:
        artifact = artifact_from_args(args, Path(scratch), runtime)
        published = publish(args.repository, args.name, artifact, runtime=runtime, keep=args.keep,
                            max_batch_size=args.max_batch_size, gpu=args.gpu, triton_url=args.triton_url,
                            ready_timeout_s=args.ready_timeout)
    print(describe(published, args.triton_url))
    return 0


def artifact_from_args(args: argparse.Namespace, scratch: Path, runtime: Runtime | None):
    """The Artifact the flags name; a checkpoint is exported (with its parity check) into `scratch`, for
    the runtime asked for or the one the model is served with now."""
    from occupancy.errors import InputError
    from occupancy.model_repository import model_runtime
    from training.export.artifact import Artifact, export_artifact
    from training.models.configs import get_config

    if args.checkpoint and (args.plan or args.onnx):
        raise InputError("give one of --onnx, --plan (optionally with --onnx) or --checkpoint with --config")
    if args.checkpoint:
        if not args.config:
            raise InputError("--checkpoint needs --config (the model config it was trained with)")
        runtime = runtime or model_runtime(args.repository / args.name) or Runtime.ONNXRUNTIME
        return export_artifact(get_config(args.config), args.checkpoint, scratch, runtime)
    if not (args.onnx or args.plan):
        raise InputError("nothing to publish: give --onnx, --plan or --checkpoint with --config")
    return Artifact.from_files(args.onnx, args.plan)


def describe(published, triton_url: str | None) -> str:
    line = (f"published {published.name} version {published.version} ({published.runtime}) "
            f"at {published.version_dir}")
    if published.ready_seconds is not None:
        line += f"; ready in Triton {triton_url} after {published.ready_seconds:.1f} s"
    if published.removed:
        line += f"; removed versions {', '.join(map(str, published.removed))}"
    return line
