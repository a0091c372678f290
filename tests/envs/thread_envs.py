"""An env that must be called from the thread that created it (as Isaac Sim's and OpenGL's are)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np


class ThreadBound:
    """Raises from any thread but its creator's (and, with ``main=True``, unless that is the main thread).

    ``marker_dir``: ``closed-ok-<id>`` or ``closed-foreign-<id>`` is written there by ``close``.
    """

    def __init__(self, main: bool = False, marker_dir: str | None = None) -> None:
        self._owner = threading.get_ident()
        self._marker_dir = Path(marker_dir) if marker_dir else None
        if main and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("ThreadBound(main=True) must be created on the main thread")
        self.steps = 0

    def _check(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError("called from a foreign thread")

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self._check()
        self.steps = 0
        return np.zeros(3), {"thread": threading.current_thread().name}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._check()
        self.steps += 1
        return np.full(3, float(self.steps)), 1.0, False, False, {}

    def get_state(self) -> dict[str, int]:
        self._check()
        return {"steps": self.steps}

    def close(self) -> None:
        ok = threading.get_ident() == self._owner
        if self._marker_dir is not None:
            (self._marker_dir / f"closed-{'ok' if ok else 'foreign'}-{id(self)}").write_text("")
