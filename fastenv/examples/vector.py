"""A tiny vector-observation environment: the small-step workload."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastenv.examples import _spaces


class VectorEnv:
    """A damped point mass in ``obs_dim`` dimensions, pushed by the action.

    Observation: ``float32[obs_dim]`` position. Action: ``float32[obs_dim]``
    force in [-1, 1]. Reward: minus the distance to the origin. The episode is
    truncated after ``max_steps`` steps and terminates when the mass leaves the
    box [-10, 10].
    """

    metadata: dict[str, Any] = {"render_modes": [], "render_fps": 50}
    render_mode = None

    def __init__(self, obs_dim: int = 4, max_steps: int = 1000) -> None:
        self.obs_dim = int(obs_dim)
        self.max_steps = int(max_steps)
        self.observation_space = _spaces.box(-10.0, 10.0, (self.obs_dim,), np.float32)
        self.action_space = _spaces.box(-1.0, 1.0, (self.obs_dim,), np.float32)
        self._rng = np.random.default_rng()
        self._position = np.zeros(self.obs_dim, dtype=np.float32)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode at a random position; ``seed`` makes it reproducible."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._position = self._rng.uniform(-1.0, 1.0, self.obs_dim).astype(np.float32)
        self._steps = 0
        return self._position.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply the force ``action`` for one tick."""
        force = np.asarray(action, dtype=np.float32).clip(-1.0, 1.0)
        position = self._position * np.float32(0.98) + force * np.float32(0.1)
        self._position = position
        self._steps += 1
        squared = float(position.dot(position))
        reward = -(squared**0.5)
        terminated = bool(squared > 100.0 and np.abs(position).max() > 10.0)
        truncated = self._steps >= self.max_steps
        return position.copy(), reward, terminated, truncated, {}

    def get_state(self) -> dict[str, Any]:
        """The full state: position and step counter."""
        return {"position": self._position.copy(), "steps": self._steps}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state returned by :meth:`get_state`."""
        self._position = np.asarray(state["position"], dtype=np.float32).copy()
        self._steps = int(state["steps"])

    def close(self) -> None:
        """Nothing to release."""
