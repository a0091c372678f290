"""Assertions shared by the test modules."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_same(a: Any, b: Any) -> None:
    """Equal values *and* equal types, recursively; arrays bit for bit."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes(order="A") == b.tobytes(order="A")
        assert a.flags.f_contiguous == b.flags.f_contiguous or a.ndim < 2
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def same(a: Any, b: Any) -> None:
    """:func:`assert_same`, also through dicts, tuples and merged infos (object arrays element by element)."""
    if isinstance(a, np.ndarray) and a.dtype == object:
        assert isinstance(b, np.ndarray) and b.dtype == object and a.shape == b.shape
        for x, y in zip(a.ravel(), b.ravel()):
            same(x, y)
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a) == list(b), (a, b)
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, tuple):
        assert type(b) is tuple and len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    else:
        assert_same(a, b)


def against_sync(envs: Any, sync: Any, steps: int, seed: int) -> int:
    """Reset both with ``seed``, step both with the same random actions (:func:`same` results); episodes ended."""
    same(envs.reset(seed=seed), sync.reset(seed=seed))
    sync.action_space.seed(seed)
    ended = 0
    for _ in range(steps):
        actions = sync.action_space.sample()
        expected = sync.step(actions)
        same(envs.step(actions), expected)
        ended += int(expected[2].sum() + expected[3].sum())
    return ended
