"""An env whose step costs what you ask: a few numpy operations, then an optional busy-wait.

``benchmarks/bench_vector.py --workers-table`` serves it as ``fastenv.bench.cost_env:CostEnv``
with ``--env-kwargs '{"step_us": 92}'``: a cheap env (``step_us=0``, about 3 µs a step)
and a costly one (about 96 µs), the two points ``bench_vector.py --workers-table`` measures;
``fastenv-bench --scaling envs`` steps them as the ``costly`` and ``uneven`` payloads
(:mod:`fastenv.bench.workloads`).

With ``spread`` above 1 the envs are uneven: each env's step costs between
``step_us`` and ``spread * step_us``, picked by the first seed it is reset
with (``seed % levels`` on a geometric scale), so a vector env reset with
``seed=0`` has env ``i`` of ``levels`` envs cost ``step_us * spread ** (i / (levels - 1))``
in every vectorizer (``bench_vector.py --pool-table``).
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces


class CostEnv(gymnasium.Env):
    """Observation float32[obs_dim], action Discrete(2); episodes of ``horizon`` steps (truncated).

    Args:
        step_us: microseconds each step busy-waits on top of its numpy work (0: none).
        obs_dim: length of the observation vector.
        horizon: steps per episode.
        spread: ratio of the dearest env's step cost to the cheapest one's (1: all equal).
        levels: how many cost levels the first seed picks from (``seed % levels``).
        action_dim: 0 for the Discrete(2) action; above 0, a float32 Box of this
            length in [-1, 1] instead (its first ``obs_dim`` entries push the state).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        step_us: float = 0.0,
        obs_dim: int = 8,
        horizon: int = 200,
        spread: float = 1.0,
        levels: int = 16,
        action_dim: int = 0,
    ) -> None:
        self.step_s = float(step_us) * 1e-6
        self.spread = float(spread)
        self.levels = max(2, int(levels))
        self._costed = self.spread == 1.0
        self.horizon = int(horizon)
        self.observation_space = spaces.Box(-np.inf, np.inf, (int(obs_dim),), np.float32)
        self.action_space: spaces.Space = spaces.Discrete(2)
        if action_dim > 0:
            self.action_space = spaces.Box(-1.0, 1.0, (int(action_dim),), np.float32)
        self._box = action_dim > 0
        self._push = np.stack([-np.ones(obs_dim, np.float32), np.ones(obs_dim, np.float32)]) * np.float32(0.01)
        self._state = np.zeros(obs_dim, np.float32)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None and not self._costed:  # the first seed picks this env's cost
            self.step_s *= self.spread ** ((seed % self.levels) / (self.levels - 1))
            self._costed = True
        self._state = self.np_random.uniform(-1, 1, self._state.shape).astype(np.float32)
        self._t = 0
        return self._state.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.step_s:
            end = time.perf_counter() + self.step_s
            while time.perf_counter() < end:
                pass
        self._t += 1
        self._state *= np.float32(0.99)
        if self._box:
            push = np.asarray(action, np.float32)[: self._state.size] * np.float32(0.01)
            self._state[: push.size] += push
        else:
            self._state += self._push[action]
        np.tanh(self._state, out=self._state)
        return self._state.copy(), 1.0, False, self._t >= self.horizon, {}
