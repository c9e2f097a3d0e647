"""Grid encodings: exact round trips, the API's byte layout, and clear errors on bad data."""

import base64
import io
import json
import tracemalloc
import zlib

import numpy as np
import pytest

from occupancy.classes import FREE_CLASS
from occupancy.encoding import (
    DENSE_ENCODING,
    SPARSE_ENCODING,
    decode_dense,
    decode_npy,
    decode_occupancy,
    decode_sparse,
    encode_dense,
    encode_npy,
    encode_occupancy,
    encode_occupancy_json,
    encode_sparse,
    encode_sparse_json,
)
from occupancy.errors import InputError

SHAPE = (200, 200, 16)


def random_grid(seed=0, occupied=0.1):
    rng = np.random.default_rng(seed)
    grid = np.full(SHAPE, FREE_CLASS, dtype=np.uint8)
    mask = rng.random(SHAPE) < occupied
    grid[mask] = rng.integers(0, FREE_CLASS, size=mask.sum())
    return grid


def test_dense_round_trip_and_layout():
    grid = random_grid()
    text = encode_dense(grid)
    assert isinstance(text, str)
    # The API's layout, decoded by hand: base64 -> zlib -> C-order uint8 bytes.
    raw = zlib.decompress(base64.b64decode(text))
    np.testing.assert_array_equal(np.frombuffer(raw, np.uint8).reshape(SHAPE), grid)
    decoded = decode_dense(text)
    assert decoded.dtype == np.uint8 and decoded.flags.writeable
    np.testing.assert_array_equal(decoded, grid)


def test_sparse_lists_every_non_free_voxel():
    grid = np.full((3, 4, 2), FREE_CLASS, dtype=np.uint8)
    grid[0, 1, 1] = 4
    grid[2, 3, 0] = 0
    grid[1, 0, 0] = 16
    assert encode_sparse(grid) == [[0, 1, 1, 4], [1, 0, 0, 16], [2, 3, 0, 0]]
    np.testing.assert_array_equal(decode_sparse(encode_sparse(grid), grid.shape), grid)


def test_sparse_round_trip_full_grid():
    grid = random_grid(1)
    voxels = encode_sparse(grid)
    assert len(voxels) == int((grid != FREE_CLASS).sum())
    assert all(isinstance(value, int) for value in voxels[0])  # JSON-ready Python ints
    np.testing.assert_array_equal(decode_sparse(voxels), grid)


def test_sparse_empty_is_all_free():
    assert encode_sparse(np.full(SHAPE, FREE_CLASS, np.uint8)) == []
    assert (decode_sparse([]) == FREE_CLASS).all()


def compact_json(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize("grid", [
    random_grid(4, occupied=0.3),
    np.full(SHAPE, 0, np.uint8),  # every voxel listed, the single-digit class 0
    np.full(SHAPE, FREE_CLASS, np.uint8),  # nothing listed
    # x up to 1199: four digits
    np.where(np.arange(1200 * 3 * 2).reshape(1200, 3, 2) % 7 == 0, 16, FREE_CLASS).astype(np.uint8),
], ids=["random", "full", "empty", "4-digit"])
def test_sparse_json_is_the_lists_json_byte_for_byte(grid):
    assert encode_sparse_json(grid) == compact_json(encode_sparse(grid))


@pytest.mark.parametrize("encoding", [DENSE_ENCODING, SPARSE_ENCODING])
def test_occupancy_json_is_the_objects_json(encoding):
    grid = random_grid(5)
    data = encode_occupancy_json(grid, encoding)
    assert data == compact_json(encode_occupancy(grid, encoding))
    np.testing.assert_array_equal(decode_occupancy(json.loads(data)), grid)


def test_npy_round_trip():
    grid = random_grid(2)
    data = encode_npy(grid)
    np.testing.assert_array_equal(np.load(io.BytesIO(data), allow_pickle=False), grid)
    np.testing.assert_array_equal(decode_npy(data), grid)


@pytest.mark.parametrize("encoding", [DENSE_ENCODING, SPARSE_ENCODING])
def test_occupancy_object_round_trip(encoding):
    grid = random_grid(3)
    occupancy = encode_occupancy(grid, encoding)
    assert occupancy["encoding"] == encoding
    np.testing.assert_array_equal(decode_occupancy(occupancy), grid)


def test_unknown_encoding():
    with pytest.raises(InputError, match="encoding"):
        encode_occupancy(random_grid(), "rle")
    with pytest.raises(InputError, match=r"occupancy\.encoding"):
        decode_occupancy({"encoding": "rle"})
    with pytest.raises(InputError, match="'data'"):
        decode_occupancy({"encoding": DENSE_ENCODING})


def zlib_base64(raw: bytes) -> str:
    return base64.b64encode(zlib.compress(raw)).decode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not base64!!", "base64"),
        (base64.b64encode(b"plain bytes, not zlib").decode(), "zlib"),
        (zlib_base64(bytes(100)), "640000 bytes"),
        (zlib_base64(bytes(200 * 200 * 16 + 1)), "640000 bytes"),
        (zlib_base64(bytes([200]) * (200 * 200 * 16)), "class index 200"),
    ],
)
def test_dense_bad_data(data, message):
    with pytest.raises(InputError, match=message):
        decode_dense(data)


def test_dense_decompression_is_bounded():
    """A zlib bomb is refused after inflating at most one grid and a byte: the decoder's peak memory stays
    within a few grids (640 KB each), where an unbounded inflate would hold all 100 MB before refusing."""
    bomb = zlib_base64(bytes(100_000_000))  # 100 MB of zeros compress to ~100 KB
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="more"):
            decode_dense(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grid_bytes = int(np.prod(SHAPE))
    assert peak < 4 * grid_bytes, f"peak {peak} bytes"  # measured 1.5 MB: the grid, its buffers, the input


@pytest.mark.parametrize(
    ("voxels", "message"),
    [
        ([[0, 0, 0]], "x, y, z, class"),
        ([[0, 0, 0, 1], [1, 1]], "x, y, z, class"),
        ([[0.5, 0, 0, 1]], "integer"),
        ([[True, False, False, True]], "integer"),
        ([[200, 0, 0, 1]], "outside the grid"),
        ([[0, -1, 0, 1]], "outside the grid"),
        ([[0, 0, 16, 1]], "outside the grid"),
        ([[0, 0, 0, 17]], "free class"),
        ([[0, 0, 0, 18]], "class"),
        ([[0, 0, 0, 1], [0, 0, 0, 2]], "more than once"),
        ("abc", "x, y, z, class"),
    ],
)
def test_sparse_bad_data(voxels, message):
    with pytest.raises(InputError, match=message):
        decode_sparse(voxels)


def test_npy_bad_data():
    with pytest.raises(InputError, match="npy"):
        decode_npy(b"garbage")
    wrong_shape = io.BytesIO()
    np.save(wrong_shape, np.zeros((200, 200), np.uint8))
    with pytest.raises(InputError, match=r"\[200, 200, 16\]"):
        decode_npy(wrong_shape.getvalue())
    wrong_type = io.BytesIO()
    np.save(wrong_type, np.zeros(SHAPE, np.int64))
    with pytest.raises(InputError, match="int64"):
        decode_npy(wrong_type.getvalue())
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="npy"):
        decode_npy(pickled.getvalue())


def test_encoders_reject_non_grids():
    with pytest.raises(InputError, match="uint8"):
        encode_dense(np.zeros(SHAPE, np.int32))
    with pytest.raises(InputError, match="3-D"):
        encode_sparse(np.zeros((4, 4), np.uint8))
