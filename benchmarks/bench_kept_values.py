"""What keeping returned values costs: step latency and client memory in three caller patterns.

Usage::

    python benchmarks/bench_kept_values.py
    python benchmarks/bench_kept_values.py --small-steps 3000 --camera-steps 200 --repeat 3

Patterns: ``drop`` (each observation is dropped before the next step, the
steady state of a control loop), ``keep8`` (the last 8 are kept, a frame
stack), ``keepall`` (every one is kept, a replay buffer). For each payload
(``small``: 4 floats; ``camera``: two 480x640x3 frames + 20 floats, 1.8 MB)
and transport, one ``fastenv serve`` process; each pattern gets a fresh
client, warms up, then times ``steps`` steps, repeated ``--repeat`` times
with the patterns interleaved. Reported: the median p50 step latency, and
the client's RSS growth over the timed steps; and, as the reference for what
keeping a value must cost at least, copying an observation into new memory
and keeping it, in process. At the end every kept
observation is checked against a local env stepped with the same actions:
a value that changed after it was returned is reported as a failure.
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import statistics
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil

import fastenv
from fastenv.bench.workloads import get_workload, observations_equal
from fastenv.server_process import ServerProcess

MIB = 2**20
TIMEOUT_S = 60.0
WARMUP = 20
PATTERNS = ("drop", "keep8", "keepall")


def run_pattern(address: str, transport: str, payload: str, pattern: str, steps: int) -> dict[str, float]:
    """Time ``steps`` steps keeping observations as ``pattern`` says; check the kept ones at the end."""
    workload = get_workload(payload)
    action = workload.make_action()
    me = psutil.Process()
    with fastenv.FastRemoteEnv(address, transport=transport, timeout=TIMEOUT_S) as env:
        env.reset(seed=workload.seed)
        for _ in range(WARMUP):
            env.step(action)
        kept: collections.deque = collections.deque(maxlen=8 if pattern == "keep8" else None)
        latencies = []
        start_rss = me.memory_info().rss
        for _ in range(steps):
            began = time.perf_counter_ns()
            obs = env.step(action)[0]
            latencies.append(time.perf_counter_ns() - began)
            if pattern != "drop":
                kept.append(obs)
            del obs
        growth = (me.memory_info().rss - start_rss) / MIB
    local = workload.make_env()
    local.reset(seed=workload.seed)
    for _ in range(WARMUP):
        local.step(action)
    expected = [local.step(action)[0] for _ in range(steps)][-len(kept) :] if kept else []
    changed = sum(not observations_equal(got, want) for got, want in zip(kept, expected))
    return {"p50_us": statistics.median(latencies) / 1000, "rss_growth_mib": growth, "changed": changed, "kept": len(kept)}


def copy_reference(payload: str, steps: int) -> float:
    """p50 µs of copying an observation of ``payload`` into new memory and keeping it (in process, no transport)."""
    workload = get_workload(payload)
    env = workload.make_env()
    env.reset(seed=workload.seed)
    obs = env.step(workload.make_action())[0]
    kept, latencies = [], []
    for _ in range(steps):
        began = time.perf_counter_ns()
        kept.append(copy.deepcopy(obs))
        latencies.append(time.perf_counter_ns() - began)
    return statistics.median(latencies) / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small-steps", type=int, default=3000)
    parser.add_argument("--camera-steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transports", default="shm,tcp")
    args = parser.parse_args(argv)
    failures = 0
    print("| payload | transport | pattern | p50 µs (median of repeats) | client RSS growth MiB | kept | changed |")
    print("|---|---|---|---:|---:|---:|---:|")
    for payload, steps in (("small", args.small_steps), ("camera", args.camera_steps)):
        workload = get_workload(payload)
        with ServerProcess(workload.target, env_kwargs=workload.env_kwargs, ready_timeout=TIMEOUT_S) as server:
            for transport in args.transports.split(","):
                runs: dict[str, list[dict[str, float]]] = {pattern: [] for pattern in PATTERNS}
                for _ in range(args.repeat):
                    for pattern in PATTERNS:
                        runs[pattern].append(run_pattern(server.address, transport, payload, pattern, steps))
                for pattern in PATTERNS:
                    got = runs[pattern]
                    changed = sum(int(run["changed"]) for run in got)
                    failures += changed
                    print(
                        f"| {payload} | {transport} | {pattern} | {statistics.median(r['p50_us'] for r in got):.1f} "
                        f"| {statistics.median(r['rss_growth_mib'] for r in got):.1f} | {int(got[0]['kept'])} | {changed} |"
                    )
        print(f"| {payload} | in process | copy into new memory, kept | {copy_reference(payload, steps):.1f} | | | |")
    if failures:
        print(f"FAIL: {failures} kept observations changed after they were returned", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
