"""`occ refresh`: train or fine-tune, evaluate, export (parity checked) and publish unless mIoU dropped."""

import argparse
from pathlib import Path

from occupancy.model_repository import Runtime

HELP = "train (or fine-tune the served version), evaluate, export and publish a new model version"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="model config name (see `occ models`)")
    parser.add_argument("--data-root", type=Path, required=True, help="data root (occ_index_*.json)")
    parser.add_argument("--work-dir", type=Path, required=True, help="runs go to <work dir>/refresh-<time>/")
    parser.add_argument("--repository", type=Path, required=True, help="Triton model repository folder")
    parser.add_argument("--name", help="served model name (default: the config name)")
    parser.add_argument("--triton-url", help="Triton gRPC HOST:PORT: load the new version, wait until ready")
    parser.add_argument("--max-iters", type=int, help="training iterations (default: the config's recipe)")
    parser.add_argument("--batch-size", type=int, help="samples per step (default: the recipe's)")
    parser.add_argument("--num-workers", type=int, default=2, help="data loader processes")
    parser.add_argument("--threshold", type=float, default=1.0,
                        help="refuse to publish below the served mIoU minus this (points; default 1.0)")
    parser.add_argument("--force", action="store_true", help="publish even below the threshold")
    parser.add_argument("--backend-kind", choices=[runtime.value for runtime in Runtime], metavar="KIND",
                        help=f"{', '.join(runtime.value for runtime in Runtime)} (default: as the model is "
                             "served now, else onnxruntime; tensorrt needs TensorRT 10 and a GPU here)")
    parser.add_argument("--keep", type=int, help="keep only the newest K versions (default: all)")


def run(args: argparse.Namespace) -> int:
    import logging

    from training.cli.publish import describe
    from training.refresh import RefreshOptions, refresh

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = refresh(RefreshOptions(
        config=args.config, data_root=args.data_root, work_dir=args.work_dir, repository=args.repository,
        name=args.name, max_iters=args.max_iters, batch_size=args.batch_size, num_workers=args.num_workers,
        threshold=args.threshold, force=args.force, triton_url=args.triton_url,
        runtime=Runtime(args.backend_kind) if args.backend_kind else None, keep=args.keep,
    ))
    print(result.verdict)
    if result.published is None:
        print(f"occ refresh: not published; the checkpoint and its card are in "
              f"{Path(result.card['checkpoint']).parent}")
        return 1
    print(describe(result.published, args.triton_url))
    return 0
