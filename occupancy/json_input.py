"""JSON from outside, parsed within bounds: a nesting depth, integers of a bounded length, no duplicate keys.

Python's parser recurses once per nesting level (100,000 brackets end in a RecursionError) and refuses
integers of more than 4,300 digits with a ValueError; both would escape as tracebacks. The depth is
checked on the text before parsing, and an overlong integer becomes an `OversizedNumber` that schema
validation rejects naming its field.
"""

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from occupancy.errors import InputError, MalformedInput

# The API's deepest value is a row of an intrinsic matrix: body > calibration > cameras > camera >
# intrinsic > row, six levels; the limit leaves room without letting a parser recurse far.
MAX_DEPTH = 16
# int64 has 19 digits: a longer integer is no timestamp, index or coordinate.
MAX_INTEGER_DIGITS = 20

# A JSON string (escapes included) or a bracket; brackets inside strings are skipped with their string.
_STRINGS_AND_BRACKETS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[][{}]', re.DOTALL)
_OPENING = frozenset("[{")


@dataclass(frozen=True)
class OversizedNumber:
    """Stands for an integer literal longer than MAX_INTEGER_DIGITS: no number field accepts it."""

    digits: int


def load_json(text: str | bytes | bytearray | memoryview, field: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text (bytes must be UTF-8); `field` names the input in errors.

    Raises MalformedInput for text that is not UTF-8 JSON or nests deeper than `max_depth`, InputError
    for an object with a duplicate key (json.loads would keep the last: a camera given twice must be
    an error instead).
    """
    if not isinstance(text, str):
        try:
            text = str(text, "utf-8")
        except UnicodeDecodeError as error:
            raise MalformedInput(f"{field}: not valid JSON (not UTF-8: {error})") from error
    _check_depth(text, field, max_depth)
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _unique(pairs, field), parse_int=_integer)
    except json.JSONDecodeError as error:
        raise MalformedInput(f"{field}: not valid JSON ({error})") from error


def _check_depth(text: str, field: str, max_depth: int) -> None:
    depth = 0
    for match in _STRINGS_AND_BRACKETS.finditer(text):
        token = match.group()
        if token in _OPENING:
            depth += 1
            if depth > max_depth:
                raise MalformedInput(f"{field}: JSON nested deeper than {max_depth} levels")
        elif token in "]}":
            depth -= 1


def _unique(pairs: list[tuple[str, Any]], field: str) -> dict[str, Any]:
    duplicates = sorted(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
    if duplicates:
        listed = ", ".join(repr(key[:64]) for key in duplicates[:5])
        more = f" and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        raise InputError(f"{field}: duplicate key(s) {listed}{more}")
    return dict(pairs)


def _integer(literal: str) -> int | OversizedNumber:
    digits = len(literal.lstrip("-"))
    return int(literal) if digits <= MAX_INTEGER_DIGITS else OversizedNumber(digits)
