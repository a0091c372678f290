"""Envs for the Ray tests, served by server actors through the ``path/to/file.py:callable`` target form."""

from __future__ import annotations

import time
from typing import Any

import gymnasium


class SlowCartPole(gymnasium.Wrapper):
    """CartPole whose ``step`` first sleeps ``delay`` seconds (settable with ``set_attr("delay", s)``)."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(gymnasium.make("CartPole-v1"))
        self.delay = delay

    def step(self, action: Any) -> Any:
        if self.delay:
            time.sleep(self.delay)
        return self.env.step(action)
