"""An env with the pre-Gymnasium API: ``reset() -> obs``, ``step -> (obs, reward, done, info)``."""

from __future__ import annotations

from typing import Any

import numpy as np


class LegacyEnv:
    """A 1-D random walk in the old Gym 4-tuple style (what the seed wrapper served)."""

    def __init__(self, max_steps: int = 100) -> None:
        self.max_steps = int(max_steps)
        self._rng = np.random.default_rng(0)
        self._x = 0.0
        self._steps = 0

    def seed(self, seed: int) -> list[int]:
        """Old-style seeding."""
        self._rng = np.random.default_rng(seed)
        return [seed]

    def reset(self) -> np.ndarray:
        """Start an episode and return only the observation."""
        self._x = float(self._rng.uniform(-1, 1))
        self._steps = 0
        return np.array([self._x, 0.0])

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, dict]:
        """Move by ``action`` plus noise."""
        self._x += float(np.sum(action)) * 0.1 + float(self._rng.normal(0, 0.01))
        self._steps += 1
        done = abs(self._x) > 5 or self._steps >= self.max_steps
        return np.array([self._x, float(self._steps)]), -abs(self._x), done, {"steps": self._steps}

    def get_state(self) -> dict[str, Any]:
        """Position and step counter."""
        return {"x": self._x, "steps": self._steps}

    def close(self) -> None:
        """Nothing to release."""
