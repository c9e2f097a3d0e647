"""`occ synth`: generate a synthetic nuScenes + Occ3D dataset that `occ prepare` and nuscenes-devkit read."""

import argparse
from pathlib import Path

from occupancy.errors import InputError

HELP = "Generate a synthetic dataset in the nuScenes + Occ3D layout (images, LiDAR, Occ3D labels, tables)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output data root")
    parser.add_argument("--scenes", type=int, required=True, help="number of scenes")
    parser.add_argument("--frames", type=int, required=True, help="keyframes per scene (0.5 s apart)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives identical files"
    )
    parser.add_argument(
        "--val-scenes",
        type=int,
        default=None,
        help="how many of the last scenes form the val split (default: a fifth, at least 1 of 2 or more)",
    )


def run(args: argparse.Namespace) -> int:
    from occupancy.classes import CLASS_NAMES
    from training.data.synth.generate import SynthConfig, generate

    if args.scenes < 1 or args.frames < 1:
        raise InputError(f"--scenes and --frames must be at least 1 (got {args.scenes}, {args.frames})")
    val = min(max(1, args.scenes // 5), args.scenes - 1) if args.val_scenes is None else args.val_scenes
    if not 0 <= val <= args.scenes:
        raise InputError(f"--val-scenes must be between 0 and --scenes ({args.scenes}), got {val}")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a directory")
    report = generate(
        args.out, SynthConfig(scenes=args.scenes, frames=args.frames, seed=args.seed, val_scenes=val)
    )
    occupied = report.class_voxels[:-1]
    share = ", ".join(
        f"{name} {100 * n / max(occupied.sum(), 1):.2f}%"
        for name, n in zip(CLASS_NAMES[:-1], occupied, strict=True)
    )
    print(
        f"wrote {report.frames} frames to {args.out} in {report.seconds:.1f} s "
        f"({report.frames_per_second:.2f} frames/s)"
    )
    print(f"occupied voxels by class: {share}")
    return 0
