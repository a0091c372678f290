"""Envs for the session tests: they count what was applied to them."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fastenv


@dataclass
class Pose:
    """A registered dataclass (RoboVerse style: states are nested dataclasses of tensors)."""

    position: Any
    orientation: Any


@dataclass(frozen=True)
class RobotState:
    """A registered frozen dataclass holding a dataclass, a dict and tensors."""

    name: str
    root: Pose
    joints: dict[str, Any] = field(default_factory=dict)


@dataclass
class Unregistered:
    """A dataclass nobody registered: sending it is a typed error."""

    value: int = 0


fastenv.register_dataclass(Pose, "tests.Pose")
fastenv.register_dataclass(RobotState, "tests.RobotState")


class Counter:
    """Counts steps and state reads; ``step("slow:S")`` and ``step(-MS)`` drop a marker file, then sleep.

    Episodes end after ``horizon`` steps (terminated). Observations are
    ``obs_size`` float64 copies of the total step count, so every step's
    observation is distinct.
    """

    metadata = {"render_modes": []}

    def __init__(
        self, marker_dir: str | None = None, horizon: int = 1000, obs_size: int = 4, init_delay: float = 0.0
    ) -> None:
        self.marker_dir = Path(marker_dir) if marker_dir else None
        if self.marker_dir is not None:
            (self.marker_dir / f"opened-{os.getpid()}-{id(self)}").write_text("opened")
        if init_delay:  # a slow env to build: a handshake stays pending that long
            if self.marker_dir is not None:
                (self.marker_dir / f"init-started-{time.monotonic_ns()}").write_text(str(os.getpid()))
            time.sleep(init_delay)
        self.horizon = horizon
        self.obs_size = obs_size
        self.steps = 0
        self.total_steps = 0
        self.state_reads = 0
        self.safe_stops = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.steps = 0
        return np.zeros(self.obs_size), {"seed": seed}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if isinstance(action, str) and action.startswith("slow"):
            self._slow(float(action.partition(":")[2] or 0.5))
        elif isinstance(action, (int, np.integer)) and action < 0:  # same structure as a plain step
            self._slow(-int(action) / 1000)
        self.steps += 1
        self.total_steps += 1
        obs = np.full(self.obs_size, float(self.total_steps))
        return obs, float(self.steps), self.steps >= self.horizon, False, {"steps": self.steps}

    def _slow(self, seconds: float) -> None:
        if self.marker_dir is not None:
            (self.marker_dir / "slow-started").write_text(str(os.getpid()))
        time.sleep(seconds)

    def get_state(self) -> dict[str, int]:
        self.state_reads += 1
        return {"steps": self.steps, "total": self.total_steps}

    def set_state(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])

    def session_threads(self) -> list[str]:
        """The names of the server's threads that serve one session's requests (shared memory or TCP stream)."""
        return sorted(t.name for t in threading.enumerate() if t.name in ("fastenv-shm-worker", "fastenv-tcp-worker"))

    def safe_stop(self) -> str:
        """A deadline's fallback: counts how often the server applied it."""
        self.safe_stops += 1
        return "stopped"

    def echo(self, value: Any) -> Any:
        """Return ``value`` as received (the conformance suite's round trip)."""
        return value

    def torch_step(self, action: Any) -> tuple[dict[str, Any], Any, Any, Any, dict]:
        """A step in torch (Isaac Lab's shape): the action is a tensor, and so is everything returned."""
        import torch

        self.steps += 1
        self.total_steps += 1
        obs = {"policy": action * 2, "count": torch.full((self.obs_size,), float(self.total_steps))}
        done = torch.tensor(self.steps >= self.horizon)
        return obs, torch.tensor(float(self.steps)), done, torch.tensor(False), {"steps": torch.tensor(self.steps)}

    def hold(self, action: Any, how: str) -> None:
        """Keep the received tensor ``action`` as ``how`` says: itself, a view, its numpy array, or nothing."""
        held = {"tensor": lambda: action, "view": lambda: action[1:], "numpy": action.numpy, "nothing": lambda: None}
        kept = held[how]()
        if kept is not None:
            self.__dict__.setdefault("held", []).append(kept)

    def held_values(self) -> list[Any]:
        """Owned copies of what :meth:`hold` kept, in order."""
        import torch

        return [torch.as_tensor(kept).clone() for kept in self.__dict__.get("held", [])]

    def on_device(self, tensor: Any, device: str) -> Any:
        """``tensor`` moved to ``device``: an env whose results live on a GPU."""
        return {"moved": tensor.to(device), "twice": (tensor * 2).to(device), "host": tensor}

    def placed(self, value: Any, device: str) -> Any:
        """``value`` with every tensor in it moved to ``device`` (kept strides, views of one storage)."""
        from fastenv.tensors import map_tensors

        return map_tensors(value, lambda tensor: tensor.to(device))

    def unregistered(self) -> Unregistered:
        """A value the codec cannot carry."""
        return Unregistered(self.steps)

    def explode(self, message: str) -> None:
        """Raise ``ValueError(message)`` (an env that raises)."""
        raise ValueError(message)

    def close(self) -> None:
        if self.marker_dir is not None:
            (self.marker_dir / f"closed-{os.getpid()}-{id(self)}").write_text("closed")


class Sensor(Counter):
    """A Counter whose state moves on its own, like a robot's sensors: every read is a new reading.

    It says so in its metadata, so the server asks it on every ``get_state()``.
    """

    metadata = {"render_modes": [], "fastenv.state_cache": False}

    def get_state(self) -> dict[str, int]:
        self.state_reads += 1
        return {"steps": self.steps, "reading": self.state_reads}
