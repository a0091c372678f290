"""``fastenv demo``: serve a built-in env in a child process, drive it, report speed."""

from __future__ import annotations

import time

import numpy as np

from fastenv.client import FastRemoteEnv
from fastenv.server_process import ServerProcess

DEMO_ENVS = {"vector": "fastenv.examples:VectorEnv", "camera": "fastenv.examples:CameraEnv"}


def _percentile_us(samples_ns: np.ndarray, q: float) -> float:
    return float(np.percentile(samples_ns, q)) / 1000.0


def run_demo(env_name: str = "vector", steps: int = 3000, warmup: int = 200) -> str:
    """Run the demo and return its report (a few lines of text)."""
    target = DEMO_ENVS[env_name]
    lines = [f"fastenv demo: serving {target} with `fastenv serve` in a child process"]
    with ServerProcess(target) as server, FastRemoteEnv(server.address, timeout=30) as env:
        lines.append(f"  server   {server.address} (pid {server.pid})")
        lines.append(f"  env      {env.env_info['class']}  obs space {env.observation_space}")
        lines.append(f"  transport {env.transport}: {env.transport_reason}")
        action = np.zeros(env.action_space.shape, dtype=env.action_space.dtype)
        env.reset(seed=0)
        for _ in range(warmup):
            env.step(action)
        samples = np.empty(steps, dtype=np.int64)
        episodes = 0
        started = time.perf_counter_ns()
        for i in range(steps):
            t0 = time.perf_counter_ns()
            _, _, terminated, truncated, _ = env.step(action)
            samples[i] = time.perf_counter_ns() - t0
            if terminated or truncated:
                env.reset()
                episodes += 1
        elapsed_s = (time.perf_counter_ns() - started) / 1e9
    lines.append(
        f"  {steps} steps in {elapsed_s:.2f}s: {steps / elapsed_s:,.0f} steps/s, "
        f"round trip p50 {_percentile_us(samples, 50):.0f} µs, p99 {_percentile_us(samples, 99):.0f} µs"
    )
    return "\n".join(lines)
