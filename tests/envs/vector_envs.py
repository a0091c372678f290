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


class DictEnv(gymnasium.Env):
    """Dict observations (float, int and uint8 leaves), Box actions, random episode ends, sparse infos.

    Observation: ``{"pos": float32[3], "phase": Discrete(4), "grid": uint8[2, 2]}``.
    An episode terminates with probability 0.1 per step (from the env's seeded
    ``np_random``) and is truncated after ``horizon`` steps. The info is empty
    except every fourth step (``{"quarter": n}``); ``fail`` raises, and so does
    ``step`` while ``fail_on_step`` is set.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, horizon: int = 12) -> None:
        self.horizon = int(horizon)
        self.observation_space = spaces.Dict(
            {
                "pos": spaces.Box(-np.inf, np.inf, (3,), np.float32),
                "phase": spaces.Discrete(4),
                "grid": spaces.Box(0, 255, (2, 2), np.uint8),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.label = "dict"
        self.fail_on_step = False
        self._pos = np.zeros(3, np.float32)
        self._t = 0

    def _observe(self) -> dict[str, Any]:
        grid = self.np_random.integers(0, 256, (2, 2), dtype=np.uint8)
        return {"pos": self._pos.copy(), "phase": int(self._t % 4), "grid": grid}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        self._t = 0
        return self._observe(), {"seeded": seed is not None} if seed is not None else {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        if self.fail_on_step:
            raise ValueError("asked to fail in step")
        self._t += 1
        self._pos[:2] += np.asarray(action, np.float32)
        terminated = bool(self.np_random.random() < 0.1)
        info = {"quarter": self._t // 4} if self._t % 4 == 0 else {}
        return self._observe(), float(self._pos.sum()), terminated, self._t >= self.horizon, info

    def fail(self) -> None:
        raise KeyError("asked to fail")


class TextEnv(gymnasium.Env):
    """Text observations: a space no fixed-size batch buffer can hold (``--workers`` refuses it)."""

    def __init__(self) -> None:
        self.observation_space = spaces.Text(8)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        return "start", {}

    def step(self, action: int) -> tuple[str, float, bool, bool, dict]:
        return "step", 0.0, False, False, {}
