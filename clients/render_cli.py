"""`occ render`: a picture of an occupancy grid (.npy, labels.npz or an `occ eval` prediction .npz)."""

import argparse
from pathlib import Path

HELP = "draw an occupancy grid: bird's-eye and 3D views, optionally beside another grid and the cameras"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", type=Path, metavar="GRID",
                        help="grid file: .npy (uint8 [200, 200, 16]) or .npz with `semantics` (labels.npz)")
    parser.add_argument("--out", type=Path, help="PNG to write (default: GRID's name with .png, here)")
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
    from clients.render import load_grid, write_picture
    from occupancy.errors import InputError

    if not 1 <= args.cell <= 16:
        raise InputError(f"--cell {args.cell}: expected 1 to 16 pixels per voxel")
    out = args.out or Path(args.grid.with_suffix(".png").name)
    cameras = camera_paths(args.camera_images, "--camera-images")
    grid = load_grid(args.grid)
    other = load_grid(args.compare) if args.compare else None
    write_picture(out, grid, other, cameras, args.mask_camera, args.cell)
    print(f"wrote {out}")
    return 0
