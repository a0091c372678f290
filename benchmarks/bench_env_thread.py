"""What running every env call on one thread costs: small steps with each ``--env-thread`` choice.

Usage::

    python benchmarks/bench_env_thread.py
    python benchmarks/bench_env_thread.py --steps 5000 --repeat 5 --transports shm,tcp

One ``fastenv serve fastenv.examples:VectorEnv`` per choice (``caller``: the
call runs on the session's worker thread, no hop; ``main``: on the server's
main thread; ``dedicated``: on a thread of the env's own), a client stepping
it; the p50 of a step's round trip, median of ``--repeat`` interleaved runs,
and the hop's share: p50 minus the ``caller`` p50 of the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.steps import step_p50_us
from fastenv.bench.workloads import get_workload
from fastenv.server_process import ServerProcess

CHOICES = ("caller", "main", "dedicated")
TIMEOUT_S = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--transports", default="shm,tcp")
    args = parser.parse_args(argv)
    workload = get_workload("small")
    action = workload.make_action()
    servers = {
        choice: ServerProcess(workload.target, ["--env-thread", choice], env_kwargs=workload.env_kwargs)
        for choice in CHOICES
    }
    try:
        for server in servers.values():
            server.start()
        transports = args.transports.split(",")
        runs: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeat):
            for transport in transports:
                for choice in CHOICES:
                    address = servers[choice].address
                    runs.setdefault((transport, choice), []).append(step_p50_us(address, transport, action, args.steps))
    finally:
        for server in servers.values():
            server.stop()
    print(f"small steps, {args.steps} timed, median p50 of {args.repeat} interleaved runs")
    print("| transport | --env-thread | p50 µs | hop (p50 - caller p50) µs |")
    print("|---|---|---:|---:|")
    for transport in transports:
        base = statistics.median(runs[(transport, "caller")])
        for choice in CHOICES:
            p50 = statistics.median(runs[(transport, choice)])
            print(f"| {transport} | {choice} | {p50:.1f} | {p50 - base:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
