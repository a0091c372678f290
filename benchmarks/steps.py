"""Timing a client's steps: what the benchmark scripts share."""

from __future__ import annotations

import statistics
import time
from typing import Any

import fastenv


def step_p50_us(address: str, transport: str, action: Any, steps: int, warmup: int = 200, **options: Any) -> float:
    """The p50 round trip (µs) of ``steps`` steps with ``action``, after ``warmup`` untimed ones."""
    with fastenv.FastRemoteEnv(address, transport=transport, timeout=30.0, **options) as env:
        env.reset(seed=0)
        for _ in range(warmup):
            env.step(action)
        latencies = []
        for _ in range(steps):
            began = time.perf_counter_ns()
            env.step(action)
            latencies.append(time.perf_counter_ns() - began)
    return statistics.median(latencies) / 1000
