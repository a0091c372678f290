"""Serve your own env class: plain ``reset`` / ``step`` / ``get_state``, no Gymnasium.

The env below is a point mass pushed toward the origin. It is a plain Python
class: ``reset(seed)`` returns an observation dict, ``step(action)`` returns
``(obs, reward, done, info)``, ``get_state`` / ``set_state`` save and restore
it, and ``energy()`` is a method of its own. Serving it takes three lines
(see :func:`serve`); ``fastenv serve examples/own_env.py:PointMass`` does the
same from the shell.

Usage::

    python examples/own_env.py                  # serve in a child process, then drive it
    python examples/own_env.py serve --port 5555
    python examples/own_env.py drive 127.0.0.1:5555
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import numpy as np


class PointMass:
    """A 2-D point mass with friction; the action is a force, the goal the origin."""

    def __init__(self, dt: float = 0.05, max_steps: int = 200) -> None:
        self.dt = dt
        self.max_steps = max_steps
        self.position = np.zeros(2)
        self.velocity = np.zeros(2)
        self.steps = 0

    def _obs(self) -> dict[str, Any]:
        return {"position": self.position.copy(), "velocity": self.velocity.copy(), "steps": self.steps}

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        """Start at a random position (from ``seed``) at rest."""
        rng = np.random.default_rng(seed)
        self.position = rng.uniform(-1.0, 1.0, 2)
        self.velocity = np.zeros(2)
        self.steps = 0
        return self._obs()

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        """Apply a force (clipped to [-1, 1] per axis) for one time step."""
        force = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.velocity = 0.95 * self.velocity + force * self.dt
        self.position = self.position + self.velocity * self.dt
        self.steps += 1
        distance = float(np.linalg.norm(self.position))
        done = distance < 0.02 or self.steps >= self.max_steps
        return self._obs(), -distance, done, {"distance": distance}

    def get_state(self) -> dict[str, Any]:
        """Position, velocity and step counter."""
        return {"position": self.position.copy(), "velocity": self.velocity.copy(), "steps": self.steps}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`get_state`."""
        self.position = np.array(state["position"], dtype=np.float64)
        self.velocity = np.array(state["velocity"], dtype=np.float64)
        self.steps = int(state["steps"])

    def energy(self) -> float:
        """Kinetic energy of the unit mass: an env method of its own, callable remotely."""
        return 0.5 * float(self.velocity @ self.velocity)


def serve(port: int = 0) -> None:
    """Serve :class:`PointMass` (one env per client) until SIGINT or SIGTERM."""
    import fastenv

    with fastenv.EnvServer(factory=PointMass, port=port) as server:  # 1. serve the class
        signal.signal(signal.SIGTERM, lambda *_: server.stop(timeout=0))  # (stop cleanly on SIGTERM)
        print(f"fastenv: ready {server.address}", flush=True)  # 2. tell clients where
        server.serve_forever()  # 3. serve


def drive(address: str, steps: int = 300) -> int:
    """Drive the served env with a PD controller, the same way one would drive a local instance."""
    import fastenv

    with fastenv.FastRemoteEnv(address, timeout=30) as env:
        print(f"connected to {env.env_info['class']} at {address} over {env.transport}")
        obs = env.reset(seed=1)
        print(f"reset -> position {np.round(obs['position'], 3)}")
        saved = env.get_state()
        done, step, info = False, 0, {}
        while not done and step < steps:
            action = -2.0 * obs["position"] - 1.5 * obs["velocity"]
            obs, _reward, done, info = env.step(action)
            step += 1
        print(f"reached distance {info['distance']:.4f} after {step} steps; energy() = {env.energy():.2e}")
        env.set_state(saved)
        print(f"set_state(saved) -> back at {np.round(env.get_state()['position'], 3)}, step {env.get_state()['steps']}")
        return 0 if info["distance"] < 0.02 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="serve PointMass and print the ready line")
    serve_parser.add_argument("--port", type=int, default=0)
    drive_parser = commands.add_parser("drive", help="drive a served PointMass")
    drive_parser.add_argument("address")
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve(args.port)
        return 0
    if args.command == "drive":
        return drive(args.address)
    # Both: this very file as the server, in a child process (waits for its ready line).
    from fastenv.server_process import ServerProcess

    with ServerProcess("", command=[sys.executable, __file__, "serve"]) as server:
        return drive(server.address)


if __name__ == "__main__":
    sys.exit(main())
