"""`occ models`: the named model configs with their parameter counts, or one model's state dict layout."""

import argparse
import json

HELP = "list the model configs (parameter counts, input sizes), or one model's parameter names and shapes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print JSON: name, params, input_size, description per config")
    parser.add_argument("--state-dict", metavar="NAME",
                        help="print every parameter and buffer of config NAME with its shape, as JSON")


def run(args: argparse.Namespace) -> int:
    import torch

    from training.models.configs import CONFIGS, build_model, get_config

    def build_on_meta(name: str) -> torch.nn.Module:
        # Shapes only: the meta device allocates and initialises nothing, so full-size models build instantly.
        with torch.device("meta"):
            return build_model(get_config(name))

    if args.state_dict:
        state = build_on_meta(args.state_dict).state_dict()
        lines = [f" {json.dumps(key)}: {list(value.shape)}" for key, value in state.items()]
        print("{\n" + ",\n".join(lines) + "\n}")
        return 0
    rows = [
        {
            "name": name,
            "params": sum(p.numel() for p in build_on_meta(name).parameters()),
            "input_size": list(config.input_size),
            "description": config.description,
        }
        for name, config in CONFIGS.items()
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    width = max(len(row["name"]) for row in rows)
    print(f"{'name':<{width}}  {'params':>12}  {'input':>8}  description")
    for row in rows:
        height, wide = row["input_size"]
        print(f"{row['name']:<{width}}  {row['params']:>12,}  {f'{height}x{wide}':>8}  {row['description']}")
    return 0
