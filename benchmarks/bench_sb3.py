"""Stable-Baselines3 vector envs side by side: fastenv's RemoteVecEnv, SubprocVecEnv, DummyVecEnv.

Usage::

    python benchmarks/bench_sb3.py
    python benchmarks/bench_sb3.py --counts 1,4,16 --steps 2000 --repeat 3

For each env count, the same Gymnasium env (``--env``, CartPole-v1 by
default) stepped with random actions through: ``DummyVecEnv`` (in process,
one env after another), ``SubprocVecEnv`` (one process per env, pipes and
pickle) and ``fastenv.sb3.RemoteVecEnv`` (one session per env on a
``fastenv serve --mode per-client`` server on this host, shared memory).
Reported: env steps per second (vector steps x count), median of
``--repeat`` interleaved runs. Needs ``pip install "fastenv[sb3]"``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gymnasium
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from fastenv.sb3 import RemoteVecEnv
from fastenv.server_process import ServerProcess

TIMEOUT_S = 60.0


def _maker(env_id: str) -> Callable[[], gymnasium.Env]:
    def make() -> gymnasium.Env:
        return gymnasium.make(env_id)

    return make


def steps_per_second(venv: Any, steps: int) -> float:
    """Env steps per second over ``steps`` vector steps with random actions (after a short warmup)."""
    rng = np.random.default_rng(0)
    venv.seed(0)
    venv.reset()
    count = venv.num_envs
    actions = [np.stack([venv.action_space.sample() for _ in range(count)]) for _ in range(64)]
    for index in range(20):
        venv.step(actions[index % len(actions)])
    began = time.perf_counter()
    for index in range(steps):
        venv.step(actions[int(rng.integers(len(actions)))])
    return steps * count / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--counts", default="1,4,16")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    make = _maker(args.env)
    counts = [int(count) for count in args.counts.split(",")]
    kinds = ("fastenv RemoteVecEnv", "SubprocVecEnv", "DummyVecEnv")
    with ServerProcess(args.env, ["--mode", "per-client"], ready_timeout=TIMEOUT_S) as server:
        builders: dict[str, Callable[[int], Any]] = {
            "fastenv RemoteVecEnv": lambda n: RemoteVecEnv(server.address, num_envs=n, timeout=TIMEOUT_S),
            "SubprocVecEnv": lambda n: SubprocVecEnv([make] * n),
            "DummyVecEnv": lambda n: DummyVecEnv([make] * n),
        }
        results: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeat):
            for count in counts:
                for kind in kinds:
                    venv = builders[kind](count)
                    try:
                        results.setdefault((kind, count), []).append(steps_per_second(venv, args.steps))
                    finally:
                        venv.close()
    print(f"env={args.env}, {args.steps} vector steps, median of {args.repeat} interleaved runs, env steps/s")
    print("| vector env | " + " | ".join(f"{count} envs" for count in counts) + " |")
    print("|---|" + "---:|" * len(counts))
    for kind in kinds:
        cells = " | ".join(f"{statistics.median(results[(kind, count)]):,.0f}" for count in counts)
        print(f"| {kind} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
