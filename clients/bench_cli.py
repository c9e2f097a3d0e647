"""`occ bench`: a bounded load test of a gateway on this machine."""

import argparse
import json
from pathlib import Path

from clients.cli_args import add_frame_arguments, add_gateway_arguments, gateway_failure

HELP = ("load-test a local gateway with one frame, closed loop (--concurrency) or open loop (--rate), or "
        "with many sequences streaming a scene (--sequences): throughput, latency percentiles, errors, stage "
        "times")
DEFAULT_REQUESTS, DEFAULT_CONCURRENCY = 20, 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gateway_arguments(parser)
    add_frame_arguments(parser, with_files=False)
    # Bounded (clients.bench): at most 10,000 requests, 64 in flight (closed loop), 1000 frames/s, 600 s.
    parser.add_argument("--requests", type=int,
                        help=f"closed loop: requests to send (default: {DEFAULT_REQUESTS})")
    parser.add_argument("--concurrency", type=int,
                        help=f"closed loop: requests in flight (default: {DEFAULT_CONCURRENCY})")
    parser.add_argument("--sequences", type=int, metavar="S",
                        help="temporal models: S sequences at once, each streaming --scene's frames in order "
                             "(one frame in flight each) under its own sequence id; at most 1000")
    parser.add_argument("--scene", metavar="NAME",
                        help="with --sequences: the scene streamed (default: the split's first)")
    parser.add_argument("--rate", type=float, metavar="FPS",
                        help="open loop: offer this many frames per second for --duration, each sent on "
                        "time whatever is still unanswered; latency counts from the scheduled time")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="closed loop: stop sending after this many seconds; open loop: how long "
                        "frames are offered (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="uncounted first requests (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    import httpx

    from clients.bench import bench, check_bounds, check_rate, require_loopback
    from clients.cli_args import frame_from_args
    from clients.client import GatewayError, build_request
    from occupancy.errors import InputError

    require_loopback(args.url)
    if args.sequences is not None:
        return _bench_sequences(args)
    if args.scene is not None:
        raise InputError("--scene: only with --sequences")
    requests = DEFAULT_REQUESTS if args.requests is None else args.requests
    concurrency = DEFAULT_CONCURRENCY if args.concurrency is None else args.concurrency
    if args.rate is None:
        check_bounds(requests, concurrency, args.duration)
    else:
        if args.requests is not None or args.concurrency is not None:
            raise InputError("--rate: an open-loop run offers rate x duration frames; "
                             "--requests and --concurrency are for closed-loop runs")
        check_rate(args.rate, args.duration)
    if args.warmup < 0:
        raise InputError(f"--warmup {args.warmup}: expected 0 or more")
    if args.data_root is None:
        raise InputError("--data-root: occ bench sends a frame of a prepared data root")
    images, calibration, _ = frame_from_args(args)
    request = build_request(images, calibration, args.model, args.encoding)
    try:
        result = bench(args.url, request, requests, concurrency, args.duration, args.warmup, args.api_key,
                       args.timeout, rate=args.rate)
    except (GatewayError, httpx.HTTPError) as error:
        return gateway_failure("bench", args.url, error, "warm-up failed: ")
    print(result.summary())
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    if args.rate is not None:  # open loop: refusals under overload are a finding, not a failure
        return 0 if result.ok else 1
    return 0 if result.ok == result.requests else 1


def _bench_sequences(args: argparse.Namespace) -> int:
    """`occ bench --sequences S`: S sequences stream a scene of the data root at once."""
    import httpx

    from clients.bench import SceneFrame, bench_sequences, check_sequences
    from clients.client import GatewayError
    from clients.dataset import scene_frames
    from occupancy.data_root import load_index
    from occupancy.errors import InputError

    if args.rate is not None or args.concurrency is not None:
        raise InputError("--sequences: each sequence has one frame in flight; --rate and --concurrency are "
                         "for single-frame runs")
    if args.data_root is None or args.sample is not None or args.index is not None:
        raise InputError("--sequences: give --data-root (and --scene); the scene's frames are streamed")
    requests = DEFAULT_REQUESTS if args.requests is None else args.requests
    check_sequences(args.sequences, requests, args.duration)
    scene = args.scene or load_index(args.data_root, args.split)[0]["scene_name"]
    frames = [SceneFrame({name: path.read_bytes() for name, path in frame.images.items()}, frame.calibration)
              for frame in scene_frames(args.data_root, args.split, scene)]
    try:
        result = bench_sequences(args.url, frames, args.sequences, requests, args.duration, args.api_key,
                                 args.timeout, args.model, args.encoding)
    except (GatewayError, httpx.HTTPError) as error:
        return gateway_failure("bench", args.url, error)
    print(f"{args.sequences} sequences streaming scene {scene} ({len(frames)} frames)")
    print(result.summary())
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0 if result.ok == result.requests else 1
