"""Occupancy grid encodings of the HTTP API (API.md): dense zlib+base64, sparse voxel lists, .npy bytes.

A grid is uint8 [X, Y, Z] (200 x 200 x 16 for Occ3D), indexed [x, y, z], one class index per
voxel. Every encoding round-trips exactly; decoders validate what they receive and raise
InputError saying what is wrong.
"""

import base64
import binascii
import io
import json
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from occupancy.classes import FREE_CLASS, NUM_CLASSES
from occupancy.errors import InputError
from occupancy.grid import OCC3D_GRID

DENSE_ENCODING = "dense-uint8-zlib-base64"
SPARSE_ENCODING = "sparse"
NPY_MEDIA_TYPE = "application/x-npy"

Shape = tuple[int, int, int]


def encode_dense(grid: np.ndarray) -> str:
    """uint8 grid -> its bytes in C order, zlib-compressed, base64 (ASCII)."""
    grid = _checked_grid(grid, None, "grid")
    return base64.b64encode(zlib.compress(np.ascontiguousarray(grid).tobytes())).decode("ascii")


def decode_dense(
    data: str | bytes, shape: Shape = OCC3D_GRID.shape, field: str = "occupancy.data"
) -> np.ndarray:
    """The uint8 grid of `shape` that `encode_dense` wrote."""
    try:
        compressed = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InputError(f"{field}: not valid base64 ({error})") from error
    expected = int(np.prod(shape))
    decompressor = zlib.decompressobj()
    try:
        # At most one byte more than a grid: a hostile stream cannot inflate into memory.
        raw = decompressor.decompress(compressed, expected + 1)
    except zlib.error as error:
        raise InputError(f"{field}: not valid zlib data ({error})") from error
    if len(raw) != expected or not decompressor.eof:
        raise InputError(f"{field}: expected {expected} bytes for a grid of shape {list(shape)}, "
                         f"got {'more' if len(raw) > expected else len(raw)}")
    return _checked_grid(np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy(), shape, field)


def encode_sparse(grid: np.ndarray) -> list[list[int]]:
    """[[x, y, z, class], ...] for every voxel that is not free, in C order of (x, y, z)."""
    grid = _checked_grid(grid, None, "grid")
    indices = np.argwhere(grid != FREE_CLASS)
    return np.concatenate([indices, grid[tuple(indices.T)][:, None]], axis=1).tolist()


def encode_sparse_json(grid: np.ndarray) -> bytes:
    """`json.dumps(encode_sparse(grid), separators=(",", ":"))`, byte for byte, built with numpy.

    A Python list of 130,000 [x, y, z, class] lists and its JSON took 110-155 ms in the gateway. Here
    each voxel is a fixed-width record `[xxx,yyy,zzz,ccc],` whose unused digit places hold NUL bytes,
    assembled from lookup tables of `[` or `,` followed by the digits, and the NULs are then dropped
    (benchmarks/encoding_results.md has the options measured).
    """
    grid = _checked_grid(grid, None, "grid")
    flat = np.flatnonzero(grid.reshape(-1) != FREE_CLASS)
    if not flat.size:
        return b"[]"
    columns = (*np.unravel_index(flat, grid.shape), grid.reshape(-1)[flat])
    opening, separated, closing = _json_number_tables(max(max(grid.shape) - 1, NUM_CLASSES - 1))
    record = np.empty((flat.size, 5), dtype=opening.dtype)
    record[:, 0] = opening[columns[0]]
    for index, column in enumerate(columns[1:], start=1):
        record[:, index] = separated[column]
    record[:, 4] = closing
    text = record.view(np.uint8).reshape(-1)
    return b"[" + text[text != 0][:-1].tobytes() + b"]"


@lru_cache(maxsize=4)
def _json_number_tables(largest: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For 0..largest: `[` + digits and `,` + digits as fixed-width byte strings (digits right-aligned,
    NUL-padded), of a void dtype so that a gather copies whole entries; and the record's end `],`."""
    width = len(str(largest)) + 1
    entry = np.dtype((np.void, width))

    def table(prefix: bytes) -> np.ndarray:
        return np.frombuffer(b"".join(prefix + str(value).encode().rjust(width - 1, b"\0")
                                      for value in range(largest + 1)), dtype=entry)

    return table(b"["), table(b","), np.frombuffer(b"],".ljust(width, b"\0"), dtype=entry)[0]


def decode_sparse(
    voxels: Sequence[Sequence[int]] | np.ndarray,
    shape: Shape = OCC3D_GRID.shape,
    field: str = "occupancy.voxels",
) -> np.ndarray:
    """The uint8 grid of `shape`: free everywhere except the listed [x, y, z, class] voxels."""
    try:
        table = np.asarray(voxels)
    except ValueError as error:  # ragged lists
        raise InputError(f"{field}: expected a list of [x, y, z, class] integer lists ({error})") from error
    if table.size == 0:
        table = np.zeros((0, 4), dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 4 or table.dtype.kind not in "iu":
        raise InputError(f"{field}: expected a list of [x, y, z, class] integer lists, "
                         f"got an array of shape {list(table.shape)} and type {table.dtype}")
    coordinates, classes = table[:, :3], table[:, 3]
    outside = np.any((coordinates < 0) | (coordinates >= np.asarray(shape)), axis=1)
    if outside.any():
        raise InputError(f"{field}: voxel {table[outside][0].tolist()} lies outside the grid {list(shape)}")
    bad_class = (classes < 0) | (classes >= NUM_CLASSES) | (classes == FREE_CLASS)
    if bad_class.any():
        raise InputError(f"{field}: voxel {table[bad_class][0].tolist()} has a class outside "
                         f"0..{NUM_CLASSES - 1} or the free class {FREE_CLASS}, which is never listed")
    flat = np.ravel_multi_index(tuple(coordinates.T), shape)
    if np.unique(flat).size != flat.size:
        raise InputError(f"{field}: a voxel is listed more than once")
    grid = np.full(shape, FREE_CLASS, dtype=np.uint8)
    grid.reshape(-1)[flat] = classes
    return grid


def encode_npy(grid: np.ndarray) -> bytes:
    """The grid as the bytes of a .npy file (uint8, no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, _checked_grid(grid, None, "grid"), allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes, shape: Shape = OCC3D_GRID.shape, field: str = "body") -> np.ndarray:
    """The grid in .npy bytes, checked to be uint8 of `shape` with class indices."""
    try:
        grid = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InputError(f"{field}: not a valid .npy array ({error})") from error
    if not isinstance(grid, np.ndarray):
        raise InputError(f"{field}: expected one .npy array, got {type(grid).__name__}")
    return _checked_grid(grid, shape, field)


def encode_occupancy(grid: np.ndarray, encoding: str = DENSE_ENCODING) -> dict[str, Any]:
    """The response's `occupancy` object: {"encoding", "data"} (dense) or {"encoding", "voxels"} (sparse)."""
    if encoding == DENSE_ENCODING:
        return {"encoding": DENSE_ENCODING, "data": encode_dense(grid)}
    if encoding == SPARSE_ENCODING:
        return {"encoding": SPARSE_ENCODING, "voxels": encode_sparse(grid)}
    raise _unknown_encoding(encoding, "encoding")


def encode_occupancy_json(grid: np.ndarray, encoding: str = DENSE_ENCODING) -> bytes:
    """`encode_occupancy(grid, encoding)` serialised as compact JSON, the sparse list the fast way."""
    if encoding == SPARSE_ENCODING:
        return f'{{"encoding":"{SPARSE_ENCODING}","voxels":'.encode() + encode_sparse_json(grid) + b"}"
    return json.dumps(encode_occupancy(grid, encoding), separators=(",", ":")).encode()


def decode_occupancy(occupancy: Mapping[str, Any], shape: Shape = OCC3D_GRID.shape) -> np.ndarray:
    """The grid of a response's `occupancy` object, whichever encoding it uses."""
    encoding = occupancy.get("encoding")
    try:
        if encoding == DENSE_ENCODING:
            return decode_dense(occupancy["data"], shape)
        if encoding == SPARSE_ENCODING:
            return decode_sparse(occupancy["voxels"], shape)
    except KeyError as error:
        raise InputError(f"occupancy: the {encoding} encoding needs the field {error.args[0]!r}") from error
    raise _unknown_encoding(encoding, "occupancy.encoding")


def _unknown_encoding(encoding: Any, field: str) -> InputError:
    return InputError(f"{field}: unknown {encoding!r}, expected {DENSE_ENCODING!r} or {SPARSE_ENCODING!r}")


def _checked_grid(grid: np.ndarray, shape: Shape | None, field: str) -> np.ndarray:
    """`grid` if it is uint8 of `shape` (any 3-D shape for None) with class indices; else InputError."""
    wrong_shape = grid.ndim != 3 if shape is None else grid.shape != tuple(shape)
    if grid.dtype != np.uint8 or wrong_shape:
        expected = "3-D" if shape is None else f"of shape {list(shape)}"
        raise InputError(f"{field}: expected a uint8 grid {expected}, "
                         f"got {grid.dtype} of shape {list(grid.shape)}")
    if grid.size and grid.max() >= NUM_CLASSES:
        raise InputError(f"{field}: class index {int(grid.max())} outside 0..{NUM_CLASSES - 1}")
    return grid
