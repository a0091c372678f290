"""The arguments and results of vector calls, checked and spread over the envs.

What every vector env of fastenv shares, host or client: Gymnasium's seeding
of N envs (:func:`per_env_seeds`), its ``reset_mask`` (:func:`check_reset_mask`),
``set_attr`` values (:func:`attr_values`, :func:`set_env_attrs`), the
autoreset modes a host supports (:func:`autoreset_mode`) and the 5-tuple a
step must return (:func:`step_result`).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

from fastenv.errors import ServerConfigError, UnknownMethodError

#: ``get_attr(WORKER_PID_ATTR)``: the pid of the process stepping each env (this one, or a worker's).
WORKER_PID_ATTR = "fastenv_worker_pid"


def step_result(env: Any, result: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """``result`` of ``env.step``, checked to be Gymnasium's 5-tuple."""
    if not isinstance(result, tuple) or len(result) != 5:
        raise TypeError(
            f"{type(env).__name__}.step() must return Gymnasium's 5-tuple "
            "(obs, reward, terminated, truncated, info) to be vectorised"
        )
    return result


def autoreset_mode(mode: Any) -> AutoresetMode:
    """``mode`` (an ``AutoresetMode``, its name or value, ``"same-step"``) if a host supports it."""
    from fastenv.vector.batched import parse_autoreset_mode

    supported = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
    try:
        parsed = parse_autoreset_mode(mode.replace("-", "_") if isinstance(mode, str) else mode)
    except ValueError:
        parsed = None
    if parsed not in supported:
        choices = ", ".join(f"{item.name.lower().replace('_', '-')!r}" for item in supported)
        raise ServerConfigError(f"{mode!r:.100} is not an autoreset mode a vector host supports: {choices}")
    return parsed


def per_env_seeds(seed: int | Sequence[int | None] | None, num_envs: int) -> list[int | None]:
    """Gymnasium's vector seeding: None for all, ``seed + i`` from an int, or one per env."""
    if seed is None:
        return [None] * num_envs
    if isinstance(seed, Integral) and not isinstance(seed, bool):
        return [int(seed) + index for index in range(num_envs)]
    seeds = [None if item is None else int(item) for item in seed]
    if len(seeds) != num_envs:
        raise ValueError(f"a list of seeds needs one seed per env: got {len(seeds)} for {num_envs} envs")
    return seeds


def check_reset_mask(mask: Any, num_envs: int, *, allow_empty: bool = False) -> np.ndarray:
    """Validate ``options["reset_mask"]`` as Gymnasium does (bool array, one entry per env)."""
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"options['reset_mask'] must be a numpy array, got {type(mask).__name__}")
    if mask.shape != (num_envs,):
        raise ValueError(f"options['reset_mask'] must have shape ({num_envs},), got {mask.shape}")
    if mask.dtype != np.bool_:
        raise TypeError(f"options['reset_mask'] must have dtype bool, got {mask.dtype}")
    if not allow_empty and not mask.any():
        raise ValueError("options['reset_mask'] must mark at least one env to reset")
    return mask


def attr_values(name: Any, values: Any, num_envs: int) -> list[Any]:
    """One value per env for ``set_attr(name, values)``, checked (a single value is given to every env)."""
    if not isinstance(name, str) or not name or name.startswith("_"):
        raise UnknownMethodError(f"{name!r} is not a public attribute name")
    if not isinstance(values, (list, tuple)):
        values = [values] * num_envs
    if len(values) != num_envs:
        raise ValueError(f"set_attr needs one value per env: got {len(values)} values for {num_envs} envs")
    return list(values)


def set_env_attrs(envs: Sequence[Any], name: str, values: Sequence[Any]) -> None:
    """Set attribute ``name`` of each env to its value (through Gymnasium's wrappers when it has them)."""
    for env, value in zip(envs, values, strict=True):
        setter = getattr(env, "set_wrapper_attr", None)
        if setter is not None:
            setter(name, value)
        else:
            setattr(env, name, value)
