"""Envs for the vector tests, served through the `path/to/file.py:callable` target form."""

from __future__ import annotations

import time
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces


class NestedEnv(gymnasium.Env):
    """Nested Tuple/Dict observations and Dict actions; per-env state for call/get_attr/set_attr.

    Observation: ``(float32[3] position, Discrete(5) phase, {"hits": MultiBinary(2)})``.
    Action: ``{"push": float32[2] in [-1, 1], "mode": Discrete(3)}``. An episode
    terminates on ``mode == 2`` after the third step and is truncated after
    ``horizon`` steps. Info carries ``count`` every step and ``tick`` every third
    step (so the merged info masks differ between envs).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, horizon: int = 9, render_mode: str | None = None) -> None:
        self.horizon = int(horizon)
        self.render_mode = render_mode
        self.observation_space = spaces.Tuple(
            (
                spaces.Box(-np.inf, np.inf, (3,), np.float32),
                spaces.Discrete(5),
                spaces.Dict({"hits": spaces.MultiBinary(2)}),
            )
        )
        self.action_space = spaces.Dict({"push": spaces.Box(-1.0, 1.0, (2,), np.float32), "mode": spaces.Discrete(3)})
        self.delay = 0.0  # seconds each step sleeps (set through set_attr to make a server slow)
        self.label = "nested"
        self._position = np.zeros(3, np.float32)
        self._count = 0

    def _observe(self) -> tuple[np.ndarray, np.int64, dict[str, np.ndarray]]:
        hits = (self.np_random.random(2) > 0.5).astype(np.int8)
        return self._position.copy(), np.int64(self._count % 5), {"hits": hits}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._position = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        self._count = 0
        info: dict[str, Any] = {"seeded": seed is not None}
        if options:
            info["scale"] = float(options.get("scale", 1.0))
        return self._observe(), info

    def step(self, action: dict[str, Any]) -> tuple[Any, float, bool, bool, dict]:
        if self.delay:
            time.sleep(self.delay)
        self._count += 1
        self._position[:2] += np.asarray(action["push"], np.float32)
        self._position[2] = np.float32(self._count)
        info: dict[str, Any] = {"count": self._count}
        if self._count % 3 == 0:
            info["tick"] = np.float32(self._count / 3)
        terminated = int(action["mode"]) == 2 and self._count > 3
        reward = float(-np.abs(self._position[:2]).sum())
        return self._observe(), reward, terminated, self._count >= self.horizon, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return np.full((2, 2, 3), self._count, dtype=np.uint8)

    def describe(self, prefix: str, *, suffix: str = "") -> str:
        return f"{prefix}{self.label}{suffix}"

    def fail(self) -> None:
        raise ValueError("asked to fail")
