"""Columnar packing of ``batch_step`` results: K step tuples travel as a few arrays.

K results of the same structure (``(obs, reward, terminated, truncated,
info)``) are turned into one column per tuple position: arrays of one dtype and
shape are stacked, Python floats / ints / bools and numpy scalars of one dtype
become one array with a tag saying how to give each element back, anything
else stays a list. The receiver rebuilds exactly the K tuples the env returned
(same types, same values); an observation comes back as a row of its stacked
column, so one array carries every observation of the batch.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import numpy as np

_DTYPE, _SHAPE, _C_CONTIGUOUS = attrgetter("dtype"), attrgetter("shape"), attrgetter("flags.c_contiguous")
STACKED, FLOATS, INTS, BOOLS, SCALARS, EMPTY_DICTS, ITEMS = (
    "stacked",
    "floats",
    "ints",
    "bools",
    "scalars",
    "empty_dicts",
    "items",
)


def pack_results(results: list[Any]) -> dict[str, Any]:
    """``results`` as columns when they are tuples of one length; otherwise as they are."""
    if not results or not all(type(r) is tuple and len(r) == len(results[0]) for r in results):
        return {"n": len(results), "items": results}
    columns = [pack_column(list(column)) for column in zip(*results)]
    return {"n": len(results), "columns": columns}


def pack_column(values: list[Any]) -> tuple[str, Any]:
    """One ``(kind, data)`` column for ``values`` (see :func:`unpack_column`)."""
    if not values:
        return ITEMS, values
    first = values[0]
    kind = type(first)
    if len(set(map(type, values))) != 1:  # map/attrgetter keep the checks out of the interpreter loop
        return ITEMS, values
    if kind is np.ndarray:
        same = (
            len(set(map(_DTYPE, values))) == 1
            and len(set(map(_SHAPE, values))) == 1
            and all(map(_C_CONTIGUOUS, values))
        )
        if not same or first.ndim == 0 or first.dtype.hasobject:
            return ITEMS, values
        return STACKED, np.concatenate(values).reshape((len(values), *first.shape))  # faster than np.stack
    if kind is dict and not any(values):
        return EMPTY_DICTS, len(values)
    if kind is float:
        return FLOATS, np.array(values, dtype=np.float64)
    if kind is bool:
        return BOOLS, np.array(values, dtype=np.bool_)
    if kind is int and -(2**63) <= min(values) and max(values) < 2**63:
        return INTS, np.array(values, dtype=np.int64)
    if isinstance(first, np.generic) and not first.dtype.hasobject and len(set(map(_DTYPE, values))) == 1:
        return SCALARS, np.array(values, dtype=first.dtype)
    return ITEMS, values


def unpack_results(packed: Any) -> list[Any]:
    """The list of results :func:`pack_results` packed."""
    if not isinstance(packed, dict) or "n" not in packed:
        raise ValueError("not a packed batch_step result")
    if "items" in packed:
        return list(packed["items"])
    n = int(packed["n"])
    columns = [unpack_column(kind, data, n) for kind, data in packed["columns"]]
    return list(zip(*columns))


def unpack_column(kind: str, data: Any, n: int) -> list[Any]:
    """The ``n`` values of a column made by :func:`pack_column`."""
    if kind == EMPTY_DICTS:
        values = [{} for _ in range(int(data))]
    elif kind == ITEMS:
        values = list(data)
    elif kind in (STACKED, SCALARS):
        values = list(data)  # rows of the stacked array (views) / numpy scalars of its dtype
    elif kind in (FLOATS, INTS, BOOLS):
        values = data.tolist()
    else:
        raise ValueError(f"unknown batch column kind {kind!r}")
    if len(values) != n:
        raise ValueError("batch column length does not match the batch")
    return values


__all__ = ["pack_column", "pack_results", "unpack_column", "unpack_results"]
