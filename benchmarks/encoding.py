"""The `occupancy` JSON of a response, by encoding and serialiser, in one run (interleaved repeats).

The grid: a real prediction with ~130,000 non-free voxels (`--grid pred.npy`: for example the demo
model's answer to examples/frame/ with `Accept: application/x-npy`), or by default the ground truth
of examples/frame/ (162,186 non-free voxels). Every option's bytes are checked to parse to the same
object as the baseline's. orjson rows need orjson importable (it is not a dependency of the project).

Run: `.venv/bin/python -m benchmarks.encoding [--grid pred.npy] [--repeats 30]`
"""

import argparse
import json
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.http_predict import load_average
from benchmarks.timing import interleaved, markdown_table, report_header
from occupancy.classes import FREE_CLASS
from occupancy.encoding import (
    DENSE_ENCODING,
    SPARSE_ENCODING,
    encode_npy,
    encode_occupancy,
    encode_occupancy_json,
    encode_sparse,
)

EXAMPLE_LABELS = Path("examples/frame/labels.npz")


def sparse_list_json(grid: np.ndarray) -> bytes:
    """The gateway before: a Python list of lists through the standard json module."""
    return json.dumps(encode_occupancy(grid, SPARSE_ENCODING), separators=(",", ":")).encode()


def sparse_uint32_records(grid: np.ndarray) -> bytes:
    """encode_sparse_json's records with uint32 entries instead of 4-byte void ones (grids < 1000)."""
    flat = np.flatnonzero(grid.reshape(-1) != FREE_CLASS)
    columns = (*np.unravel_index(flat, grid.shape), grid.reshape(-1)[flat])

    def table(prefix: bytes) -> np.ndarray:
        entries = (prefix + str(value).encode().rjust(3, b"\0") for value in range(1000))
        return np.frombuffer(b"".join(entries), np.uint32)

    opening, separated = table(b"["), table(b",")
    record = np.empty((flat.size, 5), dtype=np.uint32)
    record[:, 0] = opening[columns[0]]
    for index, column in enumerate(columns[1:], start=1):
        record[:, index] = separated[column]
    record[:, 4] = np.frombuffer(b"],\0\0", np.uint32)[0]
    text = record.view(np.uint8).reshape(-1)
    voxels = b"[" + text[text != 0][:-1].tobytes() + b"]"
    return f'{{"encoding":"{SPARSE_ENCODING}","voxels":'.encode() + voxels + b"}"


def orjson_options() -> dict[str, Callable[[np.ndarray], bytes]]:
    try:
        import orjson
    except ImportError:
        return {}

    def table(grid: np.ndarray) -> np.ndarray:
        indices = np.argwhere(grid != FREE_CLASS)
        return np.ascontiguousarray(np.concatenate([indices, grid[tuple(indices.T)][:, None]], axis=1))

    def numpy_table(dtype: type) -> Callable[[np.ndarray], bytes]:
        return lambda grid: orjson.dumps({"encoding": SPARSE_ENCODING, "voxels": table(grid).astype(dtype)},
                                         option=orjson.OPT_SERIALIZE_NUMPY)

    return {
        f"orjson {orjson.__version__}, numpy (N, 4) int64 table (OPT_SERIALIZE_NUMPY)": numpy_table(np.int64),
        f"orjson {orjson.__version__}, numpy (N, 4) uint8 table (OPT_SERIALIZE_NUMPY)": numpy_table(np.uint8),
        f"orjson {orjson.__version__}, Python list of lists": lambda grid: orjson.dumps(
            {"encoding": SPARSE_ENCODING, "voxels": encode_sparse(grid)}),
    }


def options() -> dict[str, Callable[[np.ndarray], bytes]]:
    return {
        "sparse: list of lists + json.dumps (the gateway before)": sparse_list_json,
        "sparse: numpy fixed-width records, NULs dropped (encode_occupancy_json)":
            lambda grid: encode_occupancy_json(grid, SPARSE_ENCODING),
        "sparse: the same with uint32 table entries": sparse_uint32_records,
        **{f"sparse: {name}": option for name, option in orjson_options().items()},
        "dense: zlib + base64 (encode_occupancy_json)":
            lambda grid: encode_occupancy_json(grid, DENSE_ENCODING),
        ".npy bytes (encode_npy)": encode_npy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, help="a .npy grid (uint8 200 x 200 x 16); default: "
                        f"the semantics of {EXAMPLE_LABELS}")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    grid = np.load(args.grid) if args.grid else np.load(EXAMPLE_LABELS)["semantics"]
    chosen = options()
    baseline = json.loads(sparse_list_json(grid))
    for name, option in chosen.items():
        if name.startswith("sparse") and json.loads(option(grid)) != baseline:
            raise SystemExit(f"{name}: not the same JSON as the baseline")
    started_load = load_average()
    seconds = interleaved({name: partial(option, grid) for name, option in chosen.items()}, args.repeats)
    print(*report_header(started_load), sep="\n")
    print(f"- grid: {args.grid or EXAMPLE_LABELS}, {int((grid != FREE_CLASS).sum())} non-free voxels; "
          f"median and min of {args.repeats} interleaved runs\n")
    rows = [[name, f"{1000 * statistics.median(seconds[name]):.2f}", f"{1000 * min(seconds[name]):.2f}",
             f"{len(option(grid)):,}"] for name, option in chosen.items()]
    print(markdown_table(["encoding", "median ms", "min ms", "bytes"], rows))


if __name__ == "__main__":
    main()
