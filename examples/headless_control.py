"""Headless control: simulation and rendering on the server, a scripted controller in the client.

The server steps MuJoCo and renders both cameras every step (the stack-cube
task from ``fastenv.examples.mujoco_stack``); this client never looks at the
images: it reads the gripper and cube state from each observation, decides
the next action and sends it. On one host the images stay in the server's
shared memory (the client gets views it never touches); across hosts use
``--transport tcp`` and they travel with every step.

Usage::

    python examples/headless_control.py                      # starts `fastenv serve` itself
    python examples/headless_control.py --connect HOST:PORT  # drive a running server
    fastenv serve fastenv.examples.mujoco_stack:make_stack_cube --env-thread main   # ... started like this

The env renders with OpenGL, whose context is bound to one thread, so the
server builds and calls it on its main thread (``--env-thread main``).

Prints each phase of the pick-and-place, whether the red cube ended on the
green one, and steps per second.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

import fastenv
from fastenv.server_process import ServerProcess

TARGET = "fastenv.examples.mujoco_stack:make_stack_cube"
SERVE_ARGS = ("--env-thread", "main")  # the env's OpenGL context is bound to the thread that built it
CUBE_HALF = 0.02  # the task's cubes are 4 cm
FINGER_DROP = 0.045  # finger centres sit this far below the hand


class Stacker:
    """A scripted pick-and-place controller that reads only the state part of an observation.

    Phases: move above the red cube, descend, close the fingers, lift, move
    above the green cube, lower, open, retreat. Each call takes an
    observation and returns the next action (``float32[4]``: hand velocity
    x, y, z in units of the env's ``max_move`` per step, then the grip).
    """

    PHASES = ("above_red", "descend", "close", "lift", "above_green", "lower", "release", "retreat")
    SAFE_Z = 0.60  # hand height for moves (m)
    TOLERANCE = 0.003  # how close (m) the hand must get to a waypoint
    CLOSE_STEPS = 15  # steps the fingers get to close
    RELEASE_STEPS = 30

    def __init__(self, max_move: float = 0.01) -> None:
        self.max_move = max_move
        self.phase = self.PHASES[0]
        self._waited = 0

    def _toward(self, hand: np.ndarray, target: np.ndarray, grip: float) -> tuple[np.ndarray, bool]:
        velocity = (target - hand) / self.max_move
        peak = float(np.abs(velocity).max())
        if peak > 1.0:
            velocity /= peak
        action = np.array([*velocity, grip], dtype=np.float32)
        return action, bool(np.linalg.norm(target - hand) < self.TOLERANCE)

    def _wait(self, steps: int, grip: float) -> tuple[np.ndarray, bool]:
        self._waited += 1
        return np.array([0.0, 0.0, 0.0, grip], dtype=np.float32), self._waited > steps

    def __call__(self, obs: dict[str, Any]) -> np.ndarray:
        hand = np.asarray(obs["gripper"][:3], dtype=np.float64)
        cubes = np.asarray(obs["cubes"], dtype=np.float64)
        red, green = cubes[0:3], cubes[7:10]
        grasp_height = FINGER_DROP + 0.005  # finger centres just above the cube centre
        if self.phase == "above_red":
            action, done = self._toward(hand, np.array([red[0], red[1], self.SAFE_Z]), -1.0)
        elif self.phase == "descend":
            action, done = self._toward(hand, red + [0.0, 0.0, grasp_height], -1.0)
        elif self.phase == "close":
            action, done = self._wait(self.CLOSE_STEPS, 1.0)
        elif self.phase == "lift":
            action, done = self._toward(hand, np.array([hand[0], hand[1], self.SAFE_Z]), 1.0)
        elif self.phase == "above_green":
            action, done = self._toward(hand, np.array([green[0], green[1], self.SAFE_Z]), 1.0)
        elif self.phase == "lower":
            action, done = self._toward(hand, green + [0.0, 0.0, 2 * CUBE_HALF + grasp_height + 0.002], 1.0)
        elif self.phase == "release":
            action, done = self._wait(self.RELEASE_STEPS, -1.0)
        else:
            action, done = self._toward(hand, np.array([hand[0], hand[1], self.SAFE_Z]), -1.0)
        if done and self.phase != self.PHASES[-1]:
            self.phase = self.PHASES[self.PHASES.index(self.phase) + 1]
            self._waited = 0
        return action


def run_episode(env: Any, seed: int, max_steps: int, verbose: bool = True) -> tuple[bool, int]:
    """One scripted episode; returns (stacked?, steps taken)."""
    obs, _ = env.reset(seed=seed)
    controller = Stacker(max_move=float(env.max_move))
    phase = controller.phase
    for step in range(1, max_steps + 1):
        obs, _reward, terminated, truncated, info = env.step(controller(obs))
        if verbose and controller.phase != phase:
            phase = controller.phase
            print(f"  step {step:4d}: {phase:<12} hand at {np.round(obs['gripper'][:3], 3)}")
        if terminated or truncated:
            return bool(info["is_success"]), step
    return False, max_steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", metavar="ADDRESS", help="drive this server instead of starting one")
    parser.add_argument("--transport", choices=("auto", "shm", "tcp"), default="auto")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=300, help="steps per episode at most")
    parser.add_argument("--height", type=int, default=240, help="camera image height (server started here)")
    parser.add_argument("--width", type=int, default=320, help="camera image width (server started here)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds any call may take")
    args = parser.parse_args(argv)

    server = None
    if args.connect is None:
        server = ServerProcess(TARGET, SERVE_ARGS, env_kwargs={"height": args.height, "width": args.width})
        address = server.start()
    else:
        address = args.connect
    try:
        with fastenv.FastRemoteEnv(address, transport=args.transport, timeout=args.timeout) as env:
            images = [k for k, space in env.observation_space.spaces.items() if len(space.shape) == 3]
            print(f"connected to {address} over {env.transport}; the server renders {images} every step")
            stacked, total_steps = 0, 0
            start = time.perf_counter()
            for episode in range(args.episodes):
                print(f"episode {episode} (seed {episode}):")
                success, steps = run_episode(env, seed=episode, max_steps=args.max_steps)
                stacked += success
                total_steps += steps
                print(f"  {'stacked' if success else 'NOT stacked'} after {steps} steps")
            elapsed = time.perf_counter() - start
    finally:
        if server is not None:
            server.stop()
    rate = total_steps / elapsed if elapsed > 0 else float("inf")
    print(
        f"{stacked}/{args.episodes} episodes stacked; {total_steps} steps in {elapsed:.2f} s: "
        f"{rate:.1f} steps/s, {1e3 / rate:.2f} ms per step (simulation + rendering + round trip)"
    )
    return 0 if stacked == args.episodes else 1


if __name__ == "__main__":
    sys.exit(main())
