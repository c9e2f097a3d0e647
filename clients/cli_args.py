"""Command-line arguments shared by `occ predict` and `occ bench`: the gateway, and the frame to send."""

import argparse
import os
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help="the gateway (default: %(default)s)")
    parser.add_argument("--model", help="served model (default: the gateway's default)")
    parser.add_argument("--encoding", choices=("dense", "sparse", "npy"), default="dense",
                        help="how the grid travels: dense zlib JSON, sparse voxel list, or a .npy body")
    parser.add_argument("--api-key", default=os.environ.get("OCC_API_KEY"),
                        help="API key, where the gateway wants one (default: $OCC_API_KEY)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds per request (default: %(default)s)")


def add_frame_arguments(parser: argparse.ArgumentParser, with_files: bool = True) -> None:
    parser.add_argument("--data-root", type=Path, help="a prepared data root (occ_index_<split>.json)")
    parser.add_argument("--split", default="val", help="with --data-root: the split (default: %(default)s)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--sample", metavar="TOKEN", help="with --data-root: the sample's token")
    choice.add_argument("--index", type=int, help="with --data-root: the sample's position (default: 0)")
    if with_files:
        parser.add_argument("--images", nargs="+", default=[], metavar="CAM=PATH",
                            help="without --data-root: the six camera images, e.g. CAM_FRONT=front.jpg")
        parser.add_argument("--calibration", type=Path, metavar="FILE.json",
                            help="without --data-root: the frame's calibration (API.md's JSON form)")


def frame_from_args(args: argparse.Namespace):
    """(images {camera: path}, FrameCalibration, DatasetFrame or None) from the frame arguments."""
    from clients.dataset import camera_paths, dataset_frame
    from occupancy.calibration import parse_calibration
    from occupancy.errors import InputError

    images = getattr(args, "images", [])
    calibration = getattr(args, "calibration", None)
    if args.data_root is not None:
        if images or calibration:
            raise InputError("--data-root: give either --data-root or --images and --calibration, not both")
        frame = dataset_frame(args.data_root, args.split, args.sample, args.index)
        return frame.images, frame.calibration, frame
    if not images or calibration is None:
        raise InputError("--data-root: give a data root, or --images CAM=PATH ... and "
                         "--calibration FILE.json")
    if args.sample is not None or args.index is not None:
        raise InputError("--sample/--index: only with --data-root")
    try:
        text = calibration.read_text()
    except OSError as error:
        raise InputError(f"--calibration {calibration}: cannot read it ({error.strerror})") from error
    return camera_paths(images, "--images"), parse_calibration(text, f"--calibration {calibration}"), None


def gateway_failure(command: str, url: str, error: Exception, context: str = "") -> int:
    """Print one line on why a call to the gateway failed (its error answer, or that it could not be
    reached) and return the command's exit status, 1."""
    import sys

    from clients.client import GatewayError

    if isinstance(error, GatewayError):
        print(f"occ {command}: {context}{error}", file=sys.stderr)
    else:
        print(f"occ {command}: cannot reach {url} ({error})", file=sys.stderr)
    return 1
