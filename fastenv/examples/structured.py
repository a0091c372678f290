"""An env with nested Dict/Tuple observations, numpy scalars and a rich info dict."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from fastenv.examples import _spaces


class StructuredEnv:
    """Exercises every kind of value the codec must carry unchanged.

    Observation: ``{"pose": float64[7], "grid": int8[4,5] (Fortran order),
    "pair": (int64 scalar, bool_[3])}``. Info holds numpy scalars of several
    dtypes, a complex number, bytes, an OrderedDict, a non-contiguous view and
    a nested list.
    """

    metadata: dict[str, Any] = {"render_modes": [], "render_fps": 10, "tags": ("structured", 1)}
    render_mode = None

    def __init__(self, max_steps: int = 50) -> None:
        self.max_steps = int(max_steps)
        self.observation_space = _spaces.dict_space(
            {
                "pose": _spaces.box(-np.inf, np.inf, (7,), np.float64),
                "grid": _spaces.box(-128, 127, (4, 5), np.int8),
                "pair": _spaces.tuple_space(
                    (_spaces.discrete(1000), _spaces.box(0, 1, (3,), np.bool_))
                ),
            }
        )
        self.action_space = _spaces.discrete(3)
        self._rng = np.random.default_rng()
        self._steps = 0

    def _observe(self) -> dict[str, Any]:
        grid = np.asfortranarray(self._rng.integers(-128, 128, (4, 5), dtype=np.int8))
        return {
            "pose": self._rng.standard_normal(7),
            "grid": grid,
            "pair": (np.int64(self._steps), self._rng.random(3) > 0.5),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode; ``options={"note": ...}`` is echoed back in ``info``."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._steps = 0
        info: dict[str, Any] = {"seeded": seed is not None}
        if options:
            info["options"] = options
        return self._observe(), info

    def step(self, action: Any) -> tuple[dict, np.float32, np.bool_, bool, dict]:
        """One step; the reward is a ``np.float32`` and ``terminated`` a ``np.bool_``."""
        self._steps += 1
        matrix = self._rng.standard_normal((6, 6))
        info = {
            "step": np.int32(self._steps),
            "energy": np.float16(0.5 * self._steps),
            "phase": complex(self._steps, -1.0),
            "tag": b"\x00fastenv\xff",
            "order": OrderedDict([("b", 2), ("a", 1)]),
            "diagonal": matrix[::2, ::3],  # non-contiguous view
            "history": [self._steps, [float(action), None], ("x", True)],
            "timestamp": np.datetime64("2026-01-01T00:00:00") + np.timedelta64(self._steps, "s"),
        }
        reward = np.float32(1.0 / self._steps)
        terminated = np.bool_(int(action) == 2 and self._steps > 5)
        return self._observe(), reward, terminated, self._steps >= self.max_steps, info

    def get_state(self) -> dict[str, Any]:
        """Step counter and RNG state (a nested dict of plain values)."""
        return {"steps": self._steps, "rng": self._rng.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state returned by :meth:`get_state`."""
        self._steps = int(state["steps"])
        self._rng.bit_generator.state = state["rng"]

    def close(self) -> None:
        """Nothing to release."""
