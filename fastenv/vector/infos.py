"""Per-env info dicts merged into Gymnasium's vector form, column by column when their structure repeats.

Gymnasium's ``VectorEnv._add_info`` merges one env's info at a time: a
dictionary walk and an array write per key and env. Most envs return the
same keys every step (or nothing), so :func:`merge_infos` first checks that
every info has the same keys, in the same order, with values of one kind per
key; then it builds each key's array and mask in one call. Anything else (a
missing key, a ``final_obs``, a value of another kind) goes through
``_add_info`` itself. Either way the result is what ``_add_info`` would give,
key order, dtypes and masks included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

AddInfo = Callable[[dict[str, Any], dict[str, Any], int], dict[str, Any]]
_PLAIN = (int, float, bool)


def merge_infos(infos: Sequence[dict[str, Any]], num_envs: int, add_info: AddInfo) -> dict[str, Any]:
    """The vector info of ``infos`` (one dict per env, in env order; empty dicts add nothing).

    Args:
        infos: each env's info dict.
        num_envs: the vector env's size (``len(infos)``).
        add_info: the vector env's ``_add_info``, for what has no column form.
    """
    if infos and infos[0]:
        keys = tuple(infos[0])
        if all(tuple(info) == keys for info in infos):
            merged = _columns(infos, keys, num_envs)
            if merged is not None:
                return merged
    merged_infos: dict[str, Any] = {}
    for index, info in enumerate(infos):
        if info:
            merged_infos = add_info(merged_infos, info, index)
    return merged_infos


def _columns(infos: Sequence[dict[str, Any]], keys: tuple[str, ...], num_envs: int) -> dict[str, Any] | None:
    """Every key's column and mask, or None if some key's values have no column form."""
    merged: dict[str, Any] = {}
    for key in keys:
        if key == "final_obs":
            return None
        values = [info[key] for info in infos]
        first = values[0]
        kind = type(first)
        if any(type(value) is not kind for value in values):
            return None
        if issubclass(kind, dict):
            sub_keys = tuple(first)
            if not sub_keys or any(tuple(value) != sub_keys for value in values):
                return None
            column = _columns(values, sub_keys, num_envs)
            if column is None:
                return None
        elif kind in _PLAIN or issubclass(kind, np.number):
            column = np.array(values, dtype=kind)
        elif kind is np.ndarray:
            if any(value.shape != first.shape for value in values):
                return None
            column = np.stack(values).astype(first.dtype, copy=False)
        else:
            column = np.full(num_envs, None, dtype=object)
            for index, value in enumerate(values):
                column[index] = value
        merged[key] = column
        merged[f"_{key}"] = np.ones(num_envs, dtype=np.bool_)
    return merged
