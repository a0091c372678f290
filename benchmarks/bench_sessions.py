"""Sessions: batch_step against single steps, and a controller with and without a stalled observer.

Usage::

    python benchmarks/bench_sessions.py            # the tables (medians of --repeat runs)
    python benchmarks/bench_sessions.py --quick    # a smoke run

Everything runs against real ``fastenv serve`` processes on this host.

* ``batch_step``: steps/s of a client stepping ``fastenv.examples:VectorEnv``
  (4 floats) one call per step, against ``batch_step`` of 64 actions in one
  round trip; over TCP (target: at least 10x) and over shared memory.
* ``observer``: steps/s of a controller on ``fastenv.examples:CameraEnv``
  (1.8 MB per observation) alone, and with an observer connected that never
  reads: the publisher drops what the observer cannot take, so the ratio
  should stay near 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import fastenv
from fastenv.server_process import ServerProcess

BATCH = 64


def steps_per_second(run: Callable[[], int], seconds: float) -> float:
    """Call ``run`` (which returns the steps it made) until ``seconds`` pass; steps per second."""
    steps = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        steps += run()
    return steps / elapsed


def batch_rates(address: str, transport: str, seconds: float) -> tuple[float, float]:
    """(single-step steps/s, batch_step steps/s) on one connection."""
    action = np.zeros(4, np.float32)
    actions = [action] * BATCH
    with fastenv.FastRemoteEnv(address, transport=transport, timeout=30) as env:
        env.reset(seed=0)

        def single() -> int:
            result = env.step(action)
            if result[2] or result[3]:
                env.reset()
            return 1

        def batch() -> int:
            results = env.batch_step(actions)
            if results[-1][2] or results[-1][3]:
                env.reset()
            return len(results)

        single()
        batch()
        return steps_per_second(single, seconds), steps_per_second(batch, seconds)


def observer_rates(address: str, seconds: float) -> tuple[float, float]:
    """(controller steps/s alone, with a connected observer that never reads)."""
    action = np.zeros(20, np.float32)
    with fastenv.FastRemoteEnv(address, role="controller", timeout=30) as env:
        env.reset(seed=0)

        def step() -> int:
            env.step(action)
            return 1

        step()
        alone = steps_per_second(step, seconds)
        with fastenv.FastRemoteEnv(address, role="observer", timeout=30) as observer:
            stalled = steps_per_second(step, seconds)
            skipped_some = observer.next_transition(timeout=5) is not None
        assert skipped_some
    return alone, stalled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per row and repeat")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny durations")
    args = parser.parse_args(argv)
    seconds, repeat = (0.1, 1) if args.quick else (args.seconds, args.repeat)

    rows: dict[str, list[tuple[float, float]]] = {"tcp": [], "shm": []}
    observer_rows: list[tuple[float, float]] = []
    with ServerProcess("fastenv.examples:VectorEnv") as vector, ServerProcess("fastenv.examples:CameraEnv") as camera:
        for _ in range(repeat):
            for transport in rows:
                rows[transport].append(batch_rates(vector.address, transport, seconds))
            observer_rows.append(observer_rates(camera.address, seconds))

    print(f"batch_step({BATCH}) vs single steps, fastenv.examples:VectorEnv, median of {repeat}")
    print("| transport | single steps/s | batch_step steps/s | ratio |")
    print("|---|---:|---:|---:|")
    for transport, samples in rows.items():
        single = statistics.median(s for s, _ in samples)
        batch = statistics.median(b for _, b in samples)
        print(f"| {transport} | {single:,.0f} | {batch:,.0f} | {batch / single:.1f}x |")
    alone = statistics.median(a for a, _ in observer_rows)
    stalled = statistics.median(s for _, s in observer_rows)
    print()
    print(f"controller on fastenv.examples:CameraEnv (1.8 MB observations), median of {repeat}")
    print("| controller | steps/s | vs alone |")
    print("|---|---:|---:|")
    print(f"| alone | {alone:,.0f} | 1.00x |")
    print(f"| with a stalled observer | {stalled:,.0f} | {stalled / alone:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
