"""Errors a user can fix: bad input files, configs, checkpoints or calibrations.

Every command line entry point turns these into one clear message and a non-zero exit code,
and the gateway turns them into 4xx answers, never into tracebacks.
"""


class InputError(ValueError):
    """Input from outside the program (a file, a config, a request) is unusable; the message says why."""


class MalformedInput(InputError):
    """Input that does not even parse (not JSON, nested too deeply, not an image): the gateway's 400,
    where an InputError that parses but breaks a schema is its 422."""
