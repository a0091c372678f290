"""Codec registrations for Gymnasium spaces and ``EnvSpec``.

Spaces travel as their defining data (bounds, shapes, dtypes, sizes) and are
rebuilt with their public constructors; nothing else from the peer is called.
Importing this module is a no-op when Gymnasium is not installed.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

from fastenv.codec import register_type

try:
    import gymnasium
    from gymnasium import spaces
except ImportError:  # pragma: no cover - Gymnasium is optional
    gymnasium = None
    spaces = None


def _register_spaces() -> None:
    register_type(
        spaces.Box,
        "gymnasium.Box",
        lambda s: {"low": s.low, "high": s.high, "dtype": s.dtype.str},
        lambda d: spaces.Box(low=d["low"], high=d["high"], dtype=np.dtype(d["dtype"])),
    )
    register_type(
        spaces.Discrete,
        "gymnasium.Discrete",
        lambda s: {"n": int(s.n), "start": int(s.start), "dtype": s.dtype.str},
        lambda d: spaces.Discrete(d["n"], start=d["start"], dtype=np.dtype(d["dtype"])),
    )
    register_type(
        spaces.MultiDiscrete,
        "gymnasium.MultiDiscrete",
        lambda s: {"nvec": s.nvec, "start": s.start, "dtype": s.dtype.str},
        lambda d: spaces.MultiDiscrete(d["nvec"], dtype=np.dtype(d["dtype"]), start=d["start"]),
    )
    register_type(
        spaces.MultiBinary,
        "gymnasium.MultiBinary",
        lambda s: {"n": s.n if isinstance(s.n, int) else list(s.n)},
        lambda d: spaces.MultiBinary(d["n"]),
    )
    register_type(
        spaces.Dict,
        "gymnasium.Dict",
        lambda s: list(s.spaces.items()),
        lambda d: spaces.Dict(collections.OrderedDict(d)),  # in the sender's order (a plain dict is sorted)
    )
    register_type(
        spaces.Tuple,
        "gymnasium.Tuple",
        lambda s: list(s.spaces),
        lambda d: spaces.Tuple(tuple(d)),
    )
    register_type(
        spaces.Text,
        "gymnasium.Text",
        lambda s: {"max_length": s.max_length, "min_length": s.min_length, "charset": "".join(sorted(s.character_set))},
        lambda d: spaces.Text(d["max_length"], min_length=d["min_length"], charset=d["charset"]),
    )
    register_type(
        spaces.Sequence,
        "gymnasium.Sequence",
        lambda s: {"space": s.feature_space, "stack": bool(s.stack)},
        lambda d: spaces.Sequence(d["space"], stack=d["stack"]),
    )


def _spec_to_data(spec: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for field in dataclasses.fields(spec):
        if not field.init:
            continue
        value = getattr(spec, field.name)
        if field.name in ("entry_point", "vector_entry_point") and value is not None and not isinstance(value, str):
            value = f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
        elif field.name == "additional_wrappers":
            value = [
                {"name": w.name, "entry_point": w.entry_point, "kwargs": _plain_or_repr(w.kwargs)} for w in value
            ]
        elif field.name == "kwargs":
            value = _plain_or_repr(value)
        data[field.name] = value
    return data


def _plain_or_repr(value: Any) -> Any:
    """Keep ``value`` if the codec can carry it, otherwise its repr (specs are informational)."""
    from fastenv.codec import encode
    from fastenv.errors import EncodeError

    try:
        encode(value)
    except EncodeError:
        return repr(value)
    return value


def _spec_from_data(data: dict[str, Any]) -> Any:
    from gymnasium.envs.registration import EnvSpec, WrapperSpec

    data = dict(data)
    wrappers = data.pop("additional_wrappers", ())
    known = {f.name for f in dataclasses.fields(EnvSpec) if f.init}
    spec = EnvSpec(**{k: v for k, v in data.items() if k in known})
    spec.additional_wrappers = tuple(
        WrapperSpec(w["name"], w["entry_point"], w["kwargs"] if isinstance(w["kwargs"], dict) else None)
        for w in wrappers
    )
    return spec


def _register_spec() -> None:
    from gymnasium.envs.registration import EnvSpec

    register_type(EnvSpec, "gymnasium.EnvSpec", _spec_to_data, _spec_from_data)


def _register_autoreset_mode() -> None:
    """Vector envs report ``metadata["autoreset_mode"]`` as an enum member; it travels as its value."""
    import gymnasium.vector

    mode = getattr(gymnasium.vector, "AutoresetMode", None)  # Gymnasium >= 1.1
    if mode is not None:
        register_type(mode, "gymnasium.AutoresetMode", lambda member: member.value, mode)


if spaces is not None:
    _register_spaces()
    _register_spec()
    _register_autoreset_mode()
