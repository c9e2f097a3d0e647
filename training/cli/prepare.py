"""`occ prepare`: index a nuScenes + Occ3D (or synthetic) data root into occ_index_{train,val}.json."""

import argparse
from pathlib import Path

HELP = "Index a nuScenes + Occ3D data root (real or synthetic) for training and evaluation."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        type=Path,
        required=True,
        help="root holding the nuScenes tables, samples/ and Occ3D's gts/",
    )
    parser.add_argument(
        "--version", default="v1.0-trainval", help="nuScenes table version (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    from training.data.prepare import build_index, write_indexes

    index = build_index(args.data_root, args.version)
    for path, (split, samples) in zip(
        write_indexes(args.data_root, args.version, index), index.items(), strict=True
    ):
        scenes = len({s["scene_name"] for s in samples})
        print(f"{split}: {len(samples)} samples from {scenes} scenes -> {path}")
    return 0
