"""`occ render`: a picture of an occupancy grid (.npy, labels.npz or an `occ eval` prediction .npz)."""

import argparse
from pathlib import Path

HELP = ("draw an occupancy grid: bird's-eye and 3D views, optionally beside another grid and the cameras; "
        "several grids (a sequence's frames) as a strip or an animation")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", type=Path, metavar="GRID", nargs="+",
                        help="grid file: .npy (uint8 [200, 200, 16]) or .npz with `semantics` (labels.npz); "
                             "several: the frames of a sequence, in order")
    parser.add_argument("--out", type=Path,
                        help="file to write (default: the first GRID's name with .png, here); for several "
                             "grids .png draws a strip of bird's-eye views, .mp4 or .avi an animation")
    parser.add_argument("--fps", type=float, default=2.0,
                        help="an animation's frames per second (default: %(default)s, nuScenes keyframes)")
    parser.add_argument("--compare", type=Path, metavar="OTHER",
                        help="a second grid (e.g. ground truth) drawn beside GRID, with a map of differences")
    parser.add_argument("--camera-images", nargs="+", default=[], metavar="CAM=PATH",
                        help="camera images to show above the grids, e.g. CAM_FRONT=front.jpg")
    parser.add_argument("--mask-camera", action="store_true",
                        help="grey out voxels no camera sees (needs a labels.npz with mask_camera)")
    parser.add_argument("--cell", type=int, default=3,
                        help="bird's-eye pixels per voxel (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from clients.dataset import camera_paths
    from clients.render import load_grid, write_picture, write_sequence
    from occupancy.errors import InputError

    if not 1 <= args.cell <= 16:
        raise InputError(f"--cell {args.cell}: expected 1 to 16 pixels per voxel")
    if not 0 < args.fps <= 60:
        raise InputError(f"--fps {args.fps}: expected more than 0 and at most 60")
    out = args.out or Path(args.grid[0].with_suffix(".png").name)
    if len(args.grid) > 1:
        if args.compare or args.camera_images:
            raise InputError("--compare and --camera-images draw one grid; several grids are a sequence")
        write_sequence(out, [load_grid(path) for path in args.grid], args.mask_camera, args.cell, args.fps)
    else:
        cameras = camera_paths(args.camera_images, "--camera-images")
        other = load_grid(args.compare) if args.compare else None
        write_picture(out, load_grid(args.grid[0]), other, cameras, args.mask_camera, args.cell)
    print(f"wrote {out}")
    return 0
