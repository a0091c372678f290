"""Envs used by the tests, served through the `path/to/file.py:callable` target form."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


class Faulty:
    """An env whose methods fail in controlled ways."""

    metadata = {"render_modes": []}

    def __init__(self, marker_dir: str | None = None) -> None:
        self.marker_dir = Path(marker_dir) if marker_dir else None
        self.steps = 0
        self.label = "faulty"  # a public data attribute

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.steps = 0
        return np.zeros(2), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if action == "boom":
            raise ValueError("the env exploded on purpose")
        if action == "custom":
            raise _CustomEnvFailure("a non-builtin exception")
        if action == "unsendable":
            return object(), 0.0, False, False, {}
        self.steps += 1
        return np.full(2, self.steps, dtype=np.float64), 1.0, False, False, {}

    def get_state(self) -> dict[str, int]:
        return {"steps": self.steps}

    def slow(self, seconds: float) -> str:
        """Sleeps; drops a marker file first so a test knows the call is in progress."""
        if self.marker_dir is not None:
            (self.marker_dir / "slow-started").write_text(str(os.getpid()))
        time.sleep(seconds)
        return "done"

    def close(self) -> None:
        if self.marker_dir is not None:
            (self.marker_dir / f"closed-{os.getpid()}-{id(self)}").write_text("closed")


class _CustomEnvFailure(Exception):
    pass


def make_faulty(**kwargs: Any) -> Faulty:
    """A factory function (not a class) target."""
    return Faulty(**kwargs)


class BrokenAtInit:
    """Fails while being built (per-client mode reports it at connect)."""

    def __init__(self) -> None:
        raise RuntimeError("cannot build this env")


class Growing:
    """Observations whose size the client chooses: exercises arena growth and large actions."""

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        return np.zeros(1, dtype=np.uint8), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if isinstance(action, np.ndarray):  # echo a large action back with its checksum
            return action, float(action.sum()), False, False, {"n": int(action.size)}
        n = int(action)
        return np.arange(n, dtype=np.uint32), 0.0, False, False, {"n": n}


class Lending:
    """Renders two frames into :func:`fastenv.reply_array` arrays, and misuses them on a schedule.

    ``schedule`` names what each step does (cycled); every pattern is what a
    careless env might do with lent arrays, and none may change the reply:

    - ``normal``: render into the two arrays and return them in order;
    - ``swapped``: return them the other way round;
    - ``fresh_first``: return a fresh array where the first one belongs, the first one second;
    - ``unused``: borrow both, return fresh arrays;
    - ``extra``: return an extra key (another structure);
    - ``odd_shape``: ask for a differently shaped first array;
    - ``mixed_into_scalar``: also return a lent array's sum (reads it after it is in place).

    ``slot_hits`` counts the arrays that were slot memory (their base is not None).
    """

    PATTERNS = ("normal", "swapped", "fresh_first", "unused", "extra", "odd_shape", "mixed_into_scalar")

    def __init__(self, schedule: tuple[str, ...] = ("normal",), height: int = 8, width: int = 12) -> None:
        unknown = set(schedule) - set(self.PATTERNS)
        if unknown:
            raise ValueError(f"unknown patterns {sorted(unknown)}")
        self.schedule = tuple(schedule)
        self.shape = (height, width, 3)
        self.steps = 0
        self.slot_hits = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        self.steps = 0
        return self._observe("normal"), {}

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        self.steps += 1
        pattern = self.schedule[(self.steps - 1) % len(self.schedule)]
        observation = self._observe(pattern)
        reward = float(observation.pop("sum")) if "sum" in observation else 0.0
        # the pattern as a number: a changing string would change the structure and hide the misuse
        return observation, reward, False, False, {"pattern": self.PATTERNS.index(pattern)}

    def _render(self, frame: np.ndarray, salt: int) -> np.ndarray:
        frame[...] = (np.arange(frame.size, dtype=np.uint32).reshape(frame.shape) * 7 + self.steps * 13 + salt) % 251
        return frame

    def _observe(self, pattern: str) -> dict:
        from fastenv import reply_array

        first_shape = (self.shape[0] + 1, *self.shape[1:]) if pattern == "odd_shape" else self.shape
        first = self._render(reply_array(first_shape, np.uint8), 1)
        second = self._render(reply_array(self.shape, np.uint8), 2)
        self.slot_hits += (first.base is not None) + (second.base is not None)
        if pattern == "swapped":
            return {"left": second, "right": first}
        if pattern == "fresh_first":
            return {"left": self._render(np.empty(self.shape, np.uint8), 3), "right": first}
        if pattern == "unused":
            return {"left": first.copy() + 1, "right": second.copy() + 2}
        if pattern == "extra":
            return {"left": first, "right": second, "extra": np.full(3, self.steps, np.int64)}
        if pattern == "mixed_into_scalar":
            return {"left": first, "right": second, "sum": int(first.sum())}
        return {"left": first, "right": second}
