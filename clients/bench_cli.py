"""`occ bench`: a bounded load test of a gateway on this machine."""

import argparse
import json
from pathlib import Path

from clients.cli_args import add_frame_arguments, add_gateway_arguments

HELP = "load-test a local gateway with one frame: throughput, latency percentiles, errors, stage times"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_gateway_arguments(parser)
    add_frame_arguments(parser, with_files=False)
    # Bounded (clients.bench): at most 10,000 requests, 64 in flight, 600 s.
    parser.add_argument("--requests", type=int, default=20, help="requests to send (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests in flight (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=120.0,
                        help="stop sending after this many seconds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="uncounted first requests (default: %(default)s)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    import sys

    import httpx

    from clients.bench import bench, check_bounds, require_loopback
    from clients.cli_args import frame_from_args
    from clients.client import GatewayError, build_request
    from occupancy.errors import InputError

    require_loopback(args.url)
    check_bounds(args.requests, args.concurrency, args.duration)
    if args.warmup < 0:
        raise InputError(f"--warmup {args.warmup}: expected 0 or more")
    if args.data_root is None:
        raise InputError("--data-root: occ bench sends a frame of a prepared data root")
    images, calibration, _ = frame_from_args(args)
    request = build_request(images, calibration, args.model, args.encoding)
    try:
        result = bench(args.url, request, args.requests, args.concurrency, args.duration, args.warmup,
                       args.api_key, args.timeout)
    except GatewayError as error:
        print(f"occ bench: warm-up failed: {error}", file=sys.stderr)
        return 1
    except httpx.HTTPError as error:
        print(f"occ bench: cannot reach {args.url} ({error})", file=sys.stderr)
        return 1
    print(result.summary())
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))
    return 0 if result.ok == result.requests else 1
