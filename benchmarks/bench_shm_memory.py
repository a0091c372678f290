"""Client memory over many shared-memory steps: does RSS stay flat?

Usage::

    python benchmarks/bench_shm_memory.py
    python benchmarks/bench_shm_memory.py --small-steps 100000 --camera-steps 20000 --every 1000

For each payload (``small``: 4 floats; ``camera``: two 480×640×3 frames and 20
floats, ~1.8 MB) a ``fastenv serve`` process is started and a
``FastRemoteEnv(transport="shm")`` client (zero-copy views, the default) steps
it the given number of times. The client's resident set size (RSS, psutil) is
sampled before the first step and every ``--every`` steps; the report gives
start, end and maximum RSS and the growth end-start and max-start, plus the
server's RSS at start and end. The arena is mapped into the client, so the
touched part of it counts toward the client's RSS once, at the first steps;
what must not happen is growth proportional to the number of steps. The
observation of the last step is checked against a local env.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil

import fastenv
from fastenv.bench.workloads import get_workload, observations_equal
from fastenv.server_process import ServerProcess

MIB = 2**20
TIMEOUT_S = 30.0


def run(payload: str, steps: int, every: int) -> dict[str, float]:
    """Step the shm client ``steps`` times; return RSS figures in MiB."""
    workload = get_workload(payload)
    me = psutil.Process()
    with ServerProcess(workload.target, env_kwargs=workload.env_kwargs, ready_timeout=TIMEOUT_S) as server:
        server_proc = psutil.Process(server.pid)
        with fastenv.FastRemoteEnv(server.address, transport="shm", timeout=TIMEOUT_S) as env:
            local, action = workload.make_env(), workload.make_action()
            env.reset(seed=workload.seed)
            local.reset(seed=workload.seed)
            server_start = server_proc.memory_info().rss
            start = me.memory_info().rss
            samples = [start]
            t0 = time.perf_counter()
            for i in range(1, steps + 1):
                result = env.step(action)
                if i % every == 0:
                    samples.append(me.memory_info().rss)
            wall = time.perf_counter() - t0
            end = me.memory_info().rss
            server_end = server_proc.memory_info().rss
            for _ in range(steps - 1):
                local.step(action)
            if not observations_equal(result[0], local.step(action)[0]):
                raise SystemExit(f"{payload}: the last observation differs from the local env")
            del result
    samples.append(end)
    return {
        "steps": steps,
        "samples": len(samples),
        "us_per_step": wall / steps * 1e6,
        "start": start / MIB,
        "end": end / MIB,
        "max": max(samples) / MIB,
        "growth_end": (end - start) / MIB,
        "growth_max": (max(samples) - start) / MIB,
        "server_start": server_start / MIB,
        "server_end": server_end / MIB,
    }


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-steps", type=_positive, default=100_000, help="small steps (default 100000)")
    parser.add_argument("--camera-steps", type=_positive, default=20_000, help="camera steps (default 20000)")
    parser.add_argument("--every", type=_positive, default=1000, help="sample RSS every N steps (default 1000)")
    args = parser.parse_args(argv)
    print(f"client RSS over shared-memory steps (FastRemoteEnv transport='shm', copy=False); "
          f"sampled every {args.every} steps; MiB")
    header = (f"{'payload':<8} {'steps':>7} {'µs/step':>8} {'start':>8} {'end':>8} {'max':>8} "
              f"{'end-start':>10} {'max-start':>10} {'server start→end':>18}")
    print(header)
    print("-" * len(header))
    for payload, steps in (("small", args.small_steps), ("camera", args.camera_steps)):
        r = run(payload, steps, args.every)
        print(f"{payload:<8} {r['steps']:>7} {r['us_per_step']:>8.1f} {r['start']:>8.1f} {r['end']:>8.1f} "
              f"{r['max']:>8.1f} {r['growth_end']:>+10.2f} {r['growth_max']:>+10.2f} "
              f"{r['server_start']:>8.1f}→{r['server_end']:<8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
