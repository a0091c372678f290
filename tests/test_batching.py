"""batch_step's columnar packing gives back exactly the results it packed."""

from __future__ import annotations

import numpy as np
import pytest

from fastenv import codec
from fastenv.batching import pack_column, pack_results, unpack_column, unpack_results
from tests.assertions import assert_same


def _step(i: int) -> tuple:
    return (np.full((2, 3), i, np.float32), float(i), i % 3 == 0, False, {})


CASES = {
    "gymnasium steps": [_step(i) for i in range(5)],
    "numpy scalars and ints": [(np.float32(i), np.int64(i), i, {"k": i}) for i in range(4)],
    "legacy 4-tuples": [(np.arange(3) + i, 1.0, False, {"x": 1}) for i in range(3)],
    "mixed types in a column": [(1.0, np.zeros(2)), (2, np.zeros(3)), (np.float64(3), np.zeros(2))],
    "fortran and 0-d arrays": [(np.asfortranarray(np.ones((2, 2))), np.array(i)) for i in range(3)],
    "object and huge ints": [(object, 2**70), (None, 1)],
    "not tuples": [[1, 2], [3, 4]],
    "empty": [],
}


@pytest.mark.parametrize("name", CASES)
def test_round_trip_through_the_codec_is_exact(name: str) -> None:
    results = CASES[name]
    packed = pack_results(results)
    if name == "object and huge ints":
        unpacked = unpack_results(packed)  # not encodable; the packing itself must still be exact
    else:
        unpacked = unpack_results(codec.roundtrip(packed))
    assert len(unpacked) == len(results)
    for got, want in zip(unpacked, results):
        assert type(got) is type(want) or (type(want) is list and type(got) is tuple)
        for a, b in zip(got, want):
            assert_same(a, b)


def test_observations_travel_as_one_array() -> None:
    kind, data = pack_column([np.zeros(4, np.float32) + i for i in range(64)])
    assert kind == "stacked" and data.shape == (64, 4)
    rows = unpack_column(kind, data, 64)
    assert all(np.shares_memory(row, data) for row in rows)


def test_malformed_packing_is_refused() -> None:
    with pytest.raises(ValueError):
        unpack_results({"columns": []})
    with pytest.raises(ValueError):
        unpack_column("nonsense", [], 0)
    with pytest.raises(ValueError):
        unpack_column("floats", np.zeros(3), 4)
