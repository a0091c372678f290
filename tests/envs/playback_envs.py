"""A small Gymnasium env for recording and serving recordings (tests/test_playback.py)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces


class Arm(gymnasium.Env):
    """A 2-joint arm: the action moves the joints, ``get_state`` reads them, ``explode`` raises.

    Its observation space is a Dict whose keys are not in sorted order.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": [], "render_fps": 50}

    def __init__(self, horizon: int = 100_000) -> None:
        box = spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Dict(OrderedDict(pose=box, joints=box))
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.horizon = horizon
        self.joints = np.zeros(2, dtype=np.float32)
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.joints = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self.steps = 0
        return self._observe(), {"seed": seed}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict[str, Any]]:
        self.joints = np.clip(self.joints + 0.1 * np.asarray(action, dtype=np.float32), -10, 10)
        self.steps += 1
        reward = -float(np.abs(self.joints).sum())
        return self._observe(), reward, False, self.steps >= self.horizon, {"steps": self.steps}

    def get_state(self) -> dict[str, Any]:
        return {"joints": self.joints.copy(), "steps": self.steps}

    def explode(self, message: str) -> None:
        raise KeyError(message)

    def _observe(self) -> dict[str, np.ndarray]:
        return {"pose": np.sin(self.joints).astype(np.float32), "joints": self.joints.copy()}
