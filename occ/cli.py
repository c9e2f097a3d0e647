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
    "models": "training.models_cli",
    "serve": "service.cli",
    "synth": "training.data.synth_cli",
    "prepare": "training.data.prepare_cli",
    "train": "training.train_cli",
    "eval": "training.eval_cli",
    "triton-local": "service.triton_local_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="occ", description="Camera-only 3D occupancy: data, training, export and serving."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except InputError as error:
        print(f"occ {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"occ {args.command}: interrupted", file=sys.stderr)
        return 130
