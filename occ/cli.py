"""`occ <command>`: dispatches to the module that implements each command.

Each command module defines `HELP`, `add_arguments(parser)` and `run(args) -> int`, and imports
its heavy dependencies (torch, onnxruntime, FastAPI) inside `run`, so that `occ --help` and
`occ serve` never import torch.
"""

import argparse
import importlib
import sys

from occupancy.errors import InputError

# Command name -> module implementing it, in the order `occ --help` lists them.
COMMANDS: dict[str, str] = {
    "models": "training.cli.models",
    "serve": "service.cli",
    "synth": "training.cli.synth",
    "prepare": "training.cli.prepare",
    "train": "training.cli.train",
    "eval": "training.cli.evaluate",
    "export": "training.cli.export",
    "triton-local": "service.triton_local_cli",
    "publish": "training.cli.publish",
    "refresh": "training.cli.refresh",
    "predict": "clients.predict_cli",
    "render": "clients.render_cli",
    "bench": "clients.bench_cli",
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `selected`'s module is imported when a command is named.

    `occ serve` thus loads the gateway's module alone, so a gateway install without the training
    package (or torch) works; `occ --help` imports every command module to list them.
    """
    parser = argparse.ArgumentParser(
        prog="occ", description="Camera-only 3D occupancy: data, training, export and serving."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if selected in COMMANDS and name != selected:
            commands.add_parser(name)
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:  # a command whose package or extra this install lacks
            commands.add_parser(name, help=f"unavailable in this install ({error})")
            continue
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except InputError as error:
        print(f"occ {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"occ {args.command}: interrupted", file=sys.stderr)
        return 130
