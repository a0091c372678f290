"""Replaying a recording on a fresh env and reporting the first call whose result differs.

Calls are re-run in the order the server made them. A recording of a server
in shared mode replays on one env; in per-client mode each recorded session
gets an env of its own. Replay stops at a gap in the call numbers (calls the
recorder dropped): past it, the fresh env's state is no longer the recorded one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastenv import envinfo, tensors
from fastenv.recording.reader import RecordedCall, read_calls, read_metadata
from fastenv.wire import type_name

PSEUDO_PREFIX = "__"  # lease and deadline messages: not env calls


@dataclass(frozen=True)
class Difference:
    """The first replayed call whose outcome differs from the recording.

    Attributes:
        call: the recorded call.
        index: its position among the replayed calls (0-based).
        path: where in the result the values differ (``"0/3"``: item 3 of item 0).
        recorded: the recorded value at ``path``.
        replayed: the replayed value at ``path``.
    """

    call: RecordedCall
    index: int
    path: str
    recorded: Any
    replayed: Any

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return (
            f"call {self.index} (#{self.call.seq}, {self.call.method} of session {self.call.session}) differs{where}: "
            f"recorded {self.recorded!r}, replayed {self.replayed!r}"
        )


@dataclass(frozen=True)
class ReplayReport:
    """What a replay found: ``difference`` is None when every replayed call matched."""

    replayed: int
    difference: Difference | None
    gap_at: int | None = None  # the call number after which the recording has a gap (replay stopped there)


def replay(path: str, make_env: Callable[[], Any]) -> ReplayReport:
    """Re-run the calls recorded in ``path`` on envs from ``make_env``; report the first difference."""
    mode = read_metadata(path).get("fastenv.recording", {}).get("mode", "shared")
    envs: dict[str, Any] = {}
    replayed, last_seq = 0, None
    try:
        for call in read_calls(path):
            if last_seq is not None and call.seq != last_seq + 1:
                return ReplayReport(replayed, None, gap_at=last_seq)
            last_seq = call.seq
            if call.method.startswith(PSEUDO_PREFIX):
                continue
            key = call.session if mode == "per-client" else ""
            env = envs.get(key)
            if env is None:
                env = envs[key] = make_env()
            try:
                value, ok = envinfo.resolve_member(env, call.method)(*call.args, **call.kwargs), True
            except Exception as exc:  # the env raised: compare with a recorded error
                value, ok = {"type": type_name(exc), "message": str(exc)}, False
            found = _compare_outcome(call, ok, value)
            if found is not None:
                path_in, recorded, replayed_value = found
                return ReplayReport(replayed + 1, Difference(call, replayed, path_in, recorded, replayed_value))
            replayed += 1
    finally:
        for env in envs.values():
            close = getattr(env, "close", None)
            if close is not None:
                close()
    return ReplayReport(replayed, None)


def _compare_outcome(call: RecordedCall, ok: bool, value: Any) -> tuple[str, Any, Any] | None:
    if call.ok != ok:
        recorded = call.value if call.ok else f"error {call.value.get('type')}: {call.value.get('message')}"
        replayed = value if ok else f"error {value['type']}: {value['message']}"
        return "", recorded, replayed
    if not ok:
        same = call.value.get("type") == value["type"]
        return None if same else ("", call.value.get("type"), value["type"])
    return first_difference(call.value, value)


def first_difference(recorded: Any, replayed: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """``(path, recorded, replayed)`` of the first place two values differ, or None if they are equal.

    Arrays and tensors must match in type, dtype, shape and values (NaN equals NaN).
    """
    if tensors.is_tensor(recorded) or tensors.is_tensor(replayed):
        if type(recorded) is not type(replayed) or recorded.dtype != replayed.dtype:
            return path, recorded, replayed
        return first_difference(tensors.as_numpy(recorded), tensors.as_numpy(replayed), path)
    if isinstance(recorded, np.ndarray) or isinstance(replayed, np.ndarray):
        if type(recorded) is not type(replayed) or recorded.dtype != replayed.dtype or recorded.shape != replayed.shape:
            return path, recorded, replayed
        equal_nan = recorded.dtype.kind in "fc"
        return None if np.array_equal(recorded, replayed, equal_nan=equal_nan) else (path, recorded, replayed)
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        if list(recorded) != list(replayed):
            return path, sorted(map(str, recorded)), sorted(map(str, replayed))
        for key in recorded:
            found = first_difference(recorded[key], replayed[key], f"{path}/{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if isinstance(recorded, (tuple, list)) and isinstance(replayed, (tuple, list)):
        if type(recorded) is not type(replayed) or len(recorded) != len(replayed):
            return path, recorded, replayed
        for index, (left, right) in enumerate(zip(recorded, replayed)):
            found = first_difference(left, right, f"{path}/{index}" if path else str(index))
            if found is not None:
                return found
        return None
    if dataclasses.is_dataclass(recorded) and type(recorded) is type(replayed):
        return first_difference(dataclasses.asdict(recorded), dataclasses.asdict(replayed), path)
    if isinstance(recorded, float) and isinstance(replayed, float) and math.isnan(recorded) and math.isnan(replayed):
        return None  # NaN
    if type(recorded) is not type(replayed) or recorded != replayed:
        return path, recorded, replayed
    return None
