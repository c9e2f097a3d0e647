"""`occ triton-local`: run the tritonserver that nvidia-pytriton bundles on loopback, in the foreground.

CPU only: onnxruntime models are served through a python-backend view of the repository
(service/triton_local.py).
"""

import argparse
from pathlib import Path

HELP = "run a local Triton server (the binary nvidia-pytriton bundles) on 127.0.0.1 until Ctrl-C"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, required=True, help="Triton model repository folder")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-control", choices=("explicit", "poll", "none"), default="explicit",
                        help="explicit: models load through the repository API or --load-model (default)")
    parser.add_argument("--load-model", action="append", default=[], metavar="NAME",
                        help="load this model at start (repeatable; with --model-control explicit; "
                             "default: every model of the repository)")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for readiness")


def run(args: argparse.Namespace) -> int:
    import signal
    import sys

    from service.triton_local import TritonLocal

    # SIGTERM (docker stop, a supervisor, a test) ends the server too, through the `finally` below. Ctrl-C
    # (SIGINT) as well, even where this process was started with SIGINT ignored (a non-interactive shell's
    # background job), where Python would otherwise leave it ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = TritonLocal(
        args.repository, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        model_control=args.model_control, load_models=tuple(args.load_model) or None,
    )
    server.start()
    try:
        try:
            seconds = server.wait_ready(args.ready_timeout)
        except RuntimeError as error:
            print(f"occ triton-local: error: {error}")
            return 1
        for name, outcome in server.view.items():
            print(f"{name}: {outcome} (a view of {server.repository} made at start-up, in "
                  f"{server.served_repository})")
        print(f"triton ready in {seconds:.1f} s: http {server.http_url}, grpc {server.grpc_url}, "
              f"metrics {server.metrics_url}; log {server.log_path}; Ctrl-C stops it", flush=True)
        code = server.wait()
        print(f"tritonserver exited with {code}:\n{server.log_tail()}")
        return 1
    finally:
        server.stop()
