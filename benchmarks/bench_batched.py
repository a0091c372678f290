"""A batched (Isaac Lab-shaped) env through fastenv against the same env stepped in-process.

Usage::

    python benchmarks/bench_batched.py
    python benchmarks/bench_batched.py --rows 64,1024,4096 --steps 500 --repeat 5 --backend numpy
    python benchmarks/bench_batched.py --quick          # a tiny run, for CI

Serves :class:`fastenv.examples.isaac_shape.IsaacShapeEnv` (``num_envs`` rows,
observation groups ``policy`` / ``critic``, same-step autoreset with the
final observations in ``extras``) with ``fastenv serve ... --env-thread main``,
drives it through ``FastVectorEnv.batched`` on each transport, and steps the
same env in this process. Reports env steps per second (rows x steps / s),
the median of ``--repeat`` interleaved runs, and each transport's share of
the local rate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import fastenv
from fastenv.examples.isaac_shape import TARGET, IsaacShapeEnv
from fastenv.examples.replay_remote import leaves
from fastenv.server_process import ServerProcess

TIMEOUT_S = 60.0
WARMUP = 20


def _actions(backend: str, rows: int, dof: int, count: int = 8) -> list[Any]:
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1.0, 1.0, (rows, dof)).astype(np.float32) for _ in range(count)]
    if backend == "torch":
        import torch

        actions = [torch.from_numpy(action) for action in actions]
    return actions


def _timed(step: Any, actions: list[Any], steps: int) -> float:
    """Seconds ``steps`` calls of ``step`` take (after a warm-up)."""
    for index in range(WARMUP):
        step(actions[index % len(actions)])
    began = time.perf_counter()
    for index in range(steps):
        step(actions[index % len(actions)])
    return time.perf_counter() - began


def local_rate(env_kwargs: dict[str, Any], actions: list[Any], steps: int) -> float:
    """Env steps per second of the env stepped in this process."""
    env = IsaacShapeEnv(**env_kwargs)
    env.reset(seed=0)
    return env_kwargs["num_envs"] * steps / _timed(env.step, actions, steps)


def remote_rate(address: str, transport: str, rows: int, actions: list[Any], steps: int) -> float:
    """Env steps per second through ``FastVectorEnv.batched`` on ``transport``."""
    with fastenv.FastVectorEnv.batched(address, transport=transport, timeout=TIMEOUT_S) as envs:
        envs.reset(seed=0)
        return rows * steps / _timed(envs.step, actions, steps)


def reply_bytes(env_kwargs: dict[str, Any], actions: list[Any]) -> int:
    """Bytes of arrays / tensors in one step's result."""
    env = IsaacShapeEnv(**env_kwargs)
    env.reset(seed=0)
    total = 0
    for _, value in leaves(env.step(actions[0])):
        total += int(value.nbytes) if hasattr(value, "nbytes") else int(value.numel() * value.element_size())
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="64,1024", help="num_envs values, comma-separated (default: 64,1024)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run (default: 300)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs; the median is reported (default: 3)")
    parser.add_argument("--transports", default="shm,tcp")
    parser.add_argument("--backend", choices=("torch", "numpy"), default=None, help="default: torch if installed")
    parser.add_argument("--autoreset-mode", choices=("same_step", "next_step"), default="same_step")
    parser.add_argument("--env-thread", choices=("caller", "main", "dedicated"), default="main")
    parser.add_argument("--device", default=None, help="torch device of the env, served and local (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="a tiny run (CI): 10 steps, one run")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeat = 10, 1
    backend = args.backend
    if backend is None:
        try:
            import torch  # noqa: F401
        except ImportError:
            backend = "numpy"
        else:
            backend = "torch"
    rows_list = [int(rows) for rows in args.rows.split(",")]
    transports = args.transports.split(",")

    results: dict[tuple[int, str], list[float]] = {}
    sizes: dict[int, int] = {}
    for rows in rows_list:
        env_kwargs = {"num_envs": rows, "autoreset_mode": args.autoreset_mode, "backend": backend}
        if args.device is not None:
            env_kwargs["device"] = args.device
        actions = _actions(backend, rows, 7)
        sizes[rows] = reply_bytes(env_kwargs, actions)
        with ServerProcess(
            TARGET, ["--env-thread", args.env_thread], env_kwargs=env_kwargs, ready_timeout=TIMEOUT_S
        ) as server:
            for _ in range(args.repeat):
                results.setdefault((rows, "local"), []).append(local_rate(env_kwargs, actions, args.steps))
                for transport in transports:
                    rate = remote_rate(server.address, transport, rows, actions, args.steps)
                    results.setdefault((rows, transport), []).append(rate)

    print(
        f"IsaacShapeEnv ({backend} on {args.device or 'cpu'}, {args.autoreset_mode} autoreset), "
        f"--env-thread {args.env_thread}, {os.cpu_count()} CPUs: "
        f"env steps/s (rows x steps / s), median of {args.repeat} interleaved run(s) of {args.steps} steps"
    )
    header = "| rows | reply KiB | local steps/s |"
    rule = "|---:|---:|---:|"
    for transport in transports:
        header += f" {transport} steps/s | {transport} µs/step | {transport}/local |"
        rule += "---:|---:|---:|"
    print(header)
    print(rule)
    for rows in rows_list:
        local = statistics.median(results[(rows, "local")])
        line = f"| {rows} | {sizes[rows] / 1024:.1f} | {local:,.0f} |"
        for transport in transports:
            rate = statistics.median(results[(rows, transport)])
            line += f" {rate:,.0f} | {rows / rate * 1e6:.0f} | {rate / local:.2f} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
