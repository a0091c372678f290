"""The fixed observation layout both ends of a floor learn from a local ``reset``.

A floor's segment (shared memory) or buffer (raw TCP) starts with the control
words (request and reply counters on separate cache lines, the command and the
seed), then the action, then each observation array at a 64-byte aligned
offset. Both ends compute the same :class:`FloorLayout` from the payload.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastenv.bench.serverproc import Baseline
from fastenv.bench.workloads import get_workload, observation_arrays

__all__ = ["CLOSE", "COMMAND", "DATA", "REPLY", "REQUEST", "RESET", "SEED", "STEP", "FloorClient", "FloorLayout", "serve_command"]

REQUEST, REPLY, COMMAND, SEED = 0, 64, 128, 136  # separate cache lines for the two counters
DATA = 192
_ALIGN = 64
STEP, RESET, CLOSE = 0, 1, 2


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


@dataclass(frozen=True)
class FloorLayout:
    """Where the action and each observation array live in the segment."""

    action: tuple[int, tuple[int, ...], np.dtype]
    observation: tuple[tuple[str | None, int, tuple[int, ...], np.dtype], ...]
    size: int

    @classmethod
    def of(cls, payload: str) -> FloorLayout:
        """The layout for ``payload``, from a local env's reset observation (both sides agree)."""
        workload = get_workload(payload)
        env = workload.make_env()
        try:
            observation = env.reset(seed=workload.seed)[0]
        finally:
            env.close()
        action = workload.make_action()
        offset = DATA
        action_entry = (offset, action.shape, action.dtype)
        offset = _aligned(offset + action.nbytes)
        entries = []
        for key, array in observation_arrays(observation):
            entries.append((key, offset, array.shape, array.dtype))
            offset = _aligned(offset + array.nbytes)
        return cls(action_entry, tuple(entries), max(offset, mmap.PAGESIZE))

    def action_view(self, buf: Any) -> np.ndarray:
        offset, shape, dtype = self.action
        return np.ndarray(shape, dtype, buffer=buf, offset=offset)

    def observation_views(self, buf: Any, *, readonly: bool) -> list[tuple[str | None, np.ndarray]]:
        views = []
        for key, offset, shape, dtype in self.observation:
            view = np.ndarray(shape, dtype, buffer=buf, offset=offset)
            if readonly:
                view.flags.writeable = False
            views.append((key, view))
        return views


class FloorClient(Baseline):
    """A floor's client side: it copies the action into place and transports only the observation."""

    _action: np.ndarray
    _call: Callable[[int], Any]  # the floor's own round trip

    def step(self, action: Any) -> Any:
        """Step the server's env; ``(observation views, None, None, None, None)``."""
        np.copyto(self._action, action)
        return self._call(STEP), None, None, None, None

    @staticmethod
    def comparable(result: Any, expected: Any) -> tuple[Any, Any]:
        """Only the observation is transported: compare that."""
        return result[0], expected[0]


def serve_command(env: Any, command: int, seed: int, action: np.ndarray, views: list[tuple[str | None, np.ndarray]]) -> None:
    """A floor server's work for one request: reset or step ``env`` and copy the observation into ``views``."""
    if command == RESET:
        observation = env.reset(seed=seed)[0]
    else:
        observation = env.step(action.copy())[0]
    if views[0][0] is None:
        np.copyto(views[0][1], observation)
    else:
        for key, view in views:
            np.copyto(view, observation[key])
