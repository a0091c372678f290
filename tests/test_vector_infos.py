"""Merging per-env infos column by column gives exactly what Gymnasium's ``_add_info`` gives."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
from gymnasium.vector import VectorEnv

from fastenv.vector.infos import merge_infos


class _Vector(VectorEnv):
    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs


def gymnasium_merge(infos: list[dict[str, Any]]) -> dict[str, Any]:
    vector = _Vector(len(infos))
    merged: dict[str, Any] = {}
    for index, info in enumerate(infos):
        if info:
            merged = vector._add_info(merged, info, index)
    return merged


def assert_same_infos(got: Any, expected: Any) -> None:
    assert type(got) is type(expected)
    if isinstance(expected, dict):
        assert list(got) == list(expected)
        for key in expected:
            assert_same_infos(got[key], expected[key])
    elif isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        if expected.dtype == object:
            assert all(a is b or a == b for a, b in zip(got, expected))
        else:
            assert np.array_equal(got, expected)
    else:
        assert got == expected


CASES = {
    "empty": lambda i: {},
    "same keys": lambda i: {"steps": i, "reward_sum": i * 0.5, "ok": i % 2 == 0},
    "numpy scalars": lambda i: {"value": np.float32(i), "count": np.int16(i)},
    "arrays": lambda i: {"position": np.full(3, i, np.float32)},
    "nested": lambda i: {"stats": {"a": i, "b": float(i)}, "tag": f"env{i}"},
    "ordered dicts": lambda i: {"od": OrderedDict([("b", i), ("a", 1)])},
    "objects": lambda i: {"items": [i, i + 1], "pair": (i,), "none": None},
    "mixed int and float": lambda i: {"x": i if i % 2 else float(i)},
    "some empty": lambda i: {"steps": i} if i % 3 else {},
    "keys differ": lambda i: {"a": i} if i % 2 else {"b": i},
    "key order differs": lambda i: {"a": i, "b": i} if i % 2 else {"b": i, "a": i},
    "final obs": lambda i: {"final_obs": np.zeros(2) + i, "final_info": {"x": i}},
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("num_envs", [1, 5])
def test_merge_matches_gymnasium(case: str, num_envs: int) -> None:
    infos = [CASES[case](i) for i in range(num_envs)]
    expected = gymnasium_merge(infos)
    assert_same_infos(merge_infos(infos, num_envs, _Vector(num_envs)._add_info), expected)
