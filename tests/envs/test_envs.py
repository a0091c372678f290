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
