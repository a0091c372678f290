"""Slicing and joining batches of a Gymnasium space, recursively over Dict and Tuple.

A *batch* is what ``gymnasium.vector.utils.batch_space(space, n)`` describes:
an array with a leading axis of ``n`` for Box / Discrete / MultiDiscrete /
MultiBinary, a dict of batches for Dict, a tuple of batches for Tuple, and a
plain tuple of ``n`` items for every other space (Text, Sequence, Graph, ...).
:func:`split` cuts rows ``start:stop`` out of a batch (a view where numpy
allows it); :func:`take` copies out the rows of a list of indices; :func:`join`
writes batches of consecutive rows one after the other into an output batch
made by :func:`empty`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import singledispatch
from typing import Any

import numpy as np
from gymnasium import Space
from gymnasium.spaces import Box, Dict, Discrete, MultiBinary, MultiDiscrete, Tuple
from gymnasium.vector.utils import create_empty_array

ARRAY_SPACES = (Box, Discrete, MultiDiscrete, MultiBinary)


@singledispatch
def split(space: Space, batch: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of ``batch``, a batch of the single-env space ``space``.

    Arrays and sequences are sliced (numpy slices are views); Dict and Tuple
    batches are split entry by entry.
    """
    return batch[start:stop]


@split.register(Dict)
def _split_dict(space: Dict, batch: Any, start: int, stop: int) -> dict[str, Any]:
    return {key: split(sub, batch[key], start, stop) for key, sub in space.spaces.items()}


@split.register(Tuple)
def _split_tuple(space: Tuple, batch: Any, start: int, stop: int) -> tuple[Any, ...]:
    return tuple(split(sub, batch[i], start, stop) for i, sub in enumerate(space.spaces))


@singledispatch
def take(space: Space, batch: Any, indices: np.ndarray) -> Any:
    """Rows ``indices`` of ``batch`` (in that order), copied: the result shares no memory with ``batch``."""
    return tuple(batch[int(index)] for index in indices)


@take.register(Box)
@take.register(Discrete)
@take.register(MultiDiscrete)
@take.register(MultiBinary)
def _take_array(space: Space, batch: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return batch[indices]  # fancy indexing copies


@take.register(Dict)
def _take_dict(space: Dict, batch: Any, indices: np.ndarray) -> dict[str, Any]:
    return {key: take(sub, batch[key], indices) for key, sub in space.spaces.items()}


@take.register(Tuple)
def _take_tuple(space: Tuple, batch: Any, indices: np.ndarray) -> tuple[Any, ...]:
    return tuple(take(sub, batch[i], indices) for i, sub in enumerate(space.spaces))


@singledispatch
def put(space: Space, batch: Any, indices: np.ndarray, values: Any, path: str = "actions") -> None:
    """Write ``values`` (a batch of ``len(indices)`` rows) into rows ``indices`` of ``batch``, shapes checked.

    Only array, Dict and Tuple spaces have a fixed batch to write into; others raise TypeError.
    """
    raise TypeError(f"{type(space).__name__} batches cannot be written row by row")


@put.register(Box)
@put.register(Discrete)
@put.register(MultiDiscrete)
@put.register(MultiBinary)
def _put_array(space: Space, batch: np.ndarray, indices: np.ndarray, values: Any, path: str = "actions") -> None:
    want = (len(indices), *batch.shape[1:])
    got = np.shape(values)
    if got != want:
        raise ValueError(f"{path} must have shape {want} (one row per env id), got {got}")
    batch[indices] = values


@put.register(Dict)
def _put_dict(space: Dict, batch: Any, indices: np.ndarray, values: Any, path: str = "actions") -> None:
    for key, sub in space.spaces.items():
        put(sub, batch[key], indices, values[key], f"{path}[{key!r}]")


@put.register(Tuple)
def _put_tuple(space: Tuple, batch: Any, indices: np.ndarray, values: Any, path: str = "actions") -> None:
    if len(values) != len(space.spaces):
        raise ValueError(f"{path} must have {len(space.spaces)} parts, got {len(values)}")
    for i, sub in enumerate(space.spaces):
        put(sub, batch[i], indices, values[i], f"{path}[{i}]")


def empty(space: Space, n: int, fn: Callable[..., np.ndarray] = np.empty) -> Any:
    """An output batch of ``n`` rows for :func:`join` (``None`` leaves for non-array spaces)."""
    return _empty(space, n, fn)


@singledispatch
def _empty(space: Space, n: int, fn: Callable[..., np.ndarray]) -> Any:
    return None  # joined as a fresh tuple


@_empty.register(Box)
@_empty.register(Discrete)
@_empty.register(MultiDiscrete)
@_empty.register(MultiBinary)
def _empty_array(space: Space, n: int, fn: Callable[..., np.ndarray]) -> np.ndarray:
    return create_empty_array(space, n=n, fn=fn)


@_empty.register(Dict)
def _empty_dict(space: Dict, n: int, fn: Callable[..., np.ndarray]) -> dict[str, Any]:
    return {key: _empty(sub, n, fn) for key, sub in space.spaces.items()}


@_empty.register(Tuple)
def _empty_tuple(space: Tuple, n: int, fn: Callable[..., np.ndarray]) -> tuple[Any, ...]:
    return tuple(_empty(sub, n, fn) for sub in space.spaces)


@singledispatch
def join(space: Space, parts: Sequence[Any], out: Any) -> Any:
    """Write the batches ``parts`` (consecutive rows) into ``out``; returns the joined batch.

    Array leaves are copied into ``out`` (one copy per part, no intermediate);
    non-array spaces are joined into a new tuple.
    """
    return tuple(item for part in parts for item in part)


@join.register(Box)
@join.register(Discrete)
@join.register(MultiDiscrete)
@join.register(MultiBinary)
def _join_array(space: Space, parts: Sequence[Any], out: np.ndarray) -> np.ndarray:
    return np.concatenate(parts, axis=0, out=out)


@join.register(Dict)
def _join_dict(space: Dict, parts: Sequence[Any], out: dict[str, Any]) -> dict[str, Any]:
    return {key: join(sub, [part[key] for part in parts], out[key]) for key, sub in space.spaces.items()}


@join.register(Tuple)
def _join_tuple(space: Tuple, parts: Sequence[Any], out: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(join(sub, [part[i] for part in parts], out[i]) for i, sub in enumerate(space.spaces))
