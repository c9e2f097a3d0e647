"""The `occ` subcommands of the training package, one module per command (`occ.cli` lists them).

Each defines `HELP`, `add_arguments(parser)` and `run(args) -> int`, and imports torch and the stage it
fronts inside `run`.
"""
