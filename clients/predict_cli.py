"""`occ predict`: send one frame to the gateway, print what came back, save (and draw) the grid."""

import argparse
from pathlib import Path

from clients.cli_args import add_frame_arguments, add_gateway_arguments

HELP = "send one frame (six images + calibration) to the gateway and save the occupancy grid it returns"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gateway_arguments(parser)
    add_frame_arguments(parser)
    parser.add_argument("--out", type=Path, help="save the grid as .npy (uint8 [200, 200, 16])")
    parser.add_argument("--render", type=Path, metavar="PNG",
                        help="draw the grid (beside the ground truth when the data root has it)")


def run(args: argparse.Namespace) -> int:
    import sys

    import httpx
    import numpy as np

    from clients.cli_args import frame_from_args
    from clients.client import GatewayError, OccupancyClient

    images, calibration, frame = frame_from_args(args)
    try:
        with OccupancyClient(args.url, args.api_key, args.timeout) as client:
            prediction = client.predict(images, calibration, args.model, args.encoding)
    except GatewayError as error:
        print(f"occ predict: {error}", file=sys.stderr)
        return 1
    except httpx.HTTPError as error:
        print(f"occ predict: cannot reach {args.url} ({error})", file=sys.stderr)
        return 1
    print(describe(prediction))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.out, prediction.grid, allow_pickle=False)
        print(f"saved {args.out}")
    if args.render:
        _render(args.render, prediction.grid, images, frame)
        print(f"wrote {args.render}")
    return 0


def describe(prediction) -> str:
    """Model, stage timings and the class histogram of a Prediction, as printed lines."""
    lines = [f"model {prediction.model} version {prediction.version}"]
    stages = ", ".join(f"{stage} {ms:.1f}" for stage, ms in prediction.timing_ms.items())
    lines.append(f"timing ms: {stages}; round trip {prediction.round_trip_ms:.1f}")
    if prediction.sequence:
        lines.append(f"sequence {prediction.sequence}")
    histogram = sorted(prediction.histogram().items(), key=lambda item: -item[1])
    total = prediction.grid.size
    lines.append("class histogram (voxels):")
    lines += [f"  {name:<22}{count:>8}  {100 * count / total:6.2f}%" for name, count in histogram]
    return "\n".join(lines)


def _render(out: Path, grid, images, frame) -> None:
    from clients.render import LoadedGrid, load_grid, write_picture

    predicted = LoadedGrid(grid, None, "prediction")
    truth = None
    if frame is not None and frame.labels is not None and frame.labels.is_file():
        truth = load_grid(frame.labels)
        truth = LoadedGrid(truth.semantics, truth.mask_camera, "ground truth")
    write_picture(out, predicted, truth, images)
