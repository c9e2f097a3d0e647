"""`occ predict`: send one frame to the gateway, print what came back, save (and draw) the grid; or stream
a whole scene of a data root in order (a temporal model's sequence), one line per frame."""

import argparse
from pathlib import Path

from clients.cli_args import add_frame_arguments, add_gateway_arguments, gateway_failure

HELP = ("send one frame (six images + calibration) to the gateway and save the occupancy grid it returns; "
        "or stream a scene's frames in order (--scene)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gateway_arguments(parser)
    add_frame_arguments(parser)
    parser.add_argument("--scene", metavar="NAME",
                        help="with --data-root: send every frame of this scene in time order, as a temporal "
                             "model's sequence (its scene name is the sequence_id), and report each")
    parser.add_argument("--out", type=Path, help="save the grid as .npy (uint8 [200, 200, 16]); with "
                        "--scene a folder of <frame>_<token>.npy")
    parser.add_argument("--render", type=Path, metavar="FILE",
                        help="draw the grid (beside the ground truth when the data root has it); with "
                             "--scene a .png strip or an .mp4 / .avi animation of the scene's grids")


def run(args: argparse.Namespace) -> int:
    import httpx
    import numpy as np

    from clients.cli_args import frame_from_args
    from clients.client import GatewayError, OccupancyClient

    if args.scene is not None:
        return _stream_scene(args)
    images, calibration, frame = frame_from_args(args)
    try:
        with OccupancyClient(args.url, args.api_key, args.timeout) as client:
            prediction = client.predict(images, calibration, args.model, args.encoding)
    except (GatewayError, httpx.HTTPError) as error:
        return gateway_failure("predict", args.url, error)
    print(describe(prediction))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.out, prediction.grid, allow_pickle=False)
        print(f"saved {args.out}")
    if args.render:
        _render(args.render, prediction.grid, images, frame)
        print(f"wrote {args.render}")
    return 0


def _stream_scene(args: argparse.Namespace) -> int:
    """Post the scene's frames one after another; a line per frame, the grids saved and drawn if asked."""
    import httpx
    import numpy as np

    from clients.client import GatewayError, OccupancyClient
    from clients.dataset import scene_frames
    from clients.render import LoadedGrid, write_sequence
    from occupancy.errors import InputError

    if args.data_root is None or args.sample is not None or args.index is not None or args.images:
        raise InputError("--scene: give --data-root (and --split), not a single frame")
    frames = scene_frames(args.data_root, args.split, args.scene)
    grids = []
    try:
        with OccupancyClient(args.url, args.api_key, args.timeout) as client:
            for number, frame in enumerate(frames):
                prediction = client.predict(frame.images, frame.calibration, args.model, args.encoding)
                print(describe_frame(number, frame.token, prediction))
                grids.append(LoadedGrid(prediction.grid, None, f"{number} {frame.token}"))
                if args.out:
                    args.out.mkdir(parents=True, exist_ok=True)
                    np.save(args.out / f"{number:04d}_{frame.token}.npy", prediction.grid, allow_pickle=False)
    except (GatewayError, httpx.HTTPError) as error:
        return gateway_failure("predict", args.url, error, f"frame {len(grids)}: ")
    if args.out:
        print(f"saved {len(grids)} grids in {args.out}")
    if args.render:
        print(f"wrote {write_sequence(args.render, grids)}")
    return 0


def describe_frame(number: int, token: str, prediction) -> str:
    """One line of a streamed scene: the frame, its place in the sequence, the time and what was found."""
    sequence = prediction.sequence or {}
    history = f"history {sequence['history']}" if sequence else "no sequence (single-frame model)"
    if sequence.get("reset"):
        history += f" (reset: {sequence['reset']})"
    if sequence.get("gap_s") is not None:
        history += f", t-1 {sequence['gap_s']:.3f} s back"
    from occupancy.classes import FREE_CLASS

    occupied = int((prediction.grid != FREE_CLASS).sum())
    return (f"frame {number} {token}: {history}; {prediction.timing_ms.get('total', 0.0):.1f} ms in the "
            f"gateway, {prediction.round_trip_ms:.1f} ms round trip; {occupied} occupied voxels")


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
