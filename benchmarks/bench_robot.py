"""Robot-grade sessions: what metrics cost, and how closely a missed deadline's fallback follows it.

Usage::

    python benchmarks/bench_robot.py
    python benchmarks/bench_robot.py --steps 3000 --repeat 5 --misses 200

1. **Metrics on against off**, and **recording on against off**: small
   steps (``fastenv.examples:VectorEnv``; recording also camera steps,
   ``fastenv.examples:CameraEnv``) against a server with ``--metrics-port``
   (``--record PATH``) and one without, interleaved; the p50 round trip of
   each, median of ``--repeat`` runs, on shared memory and TCP. Each run
   starts a fresh pair of servers (which goes first alternates): a server
   process placed luckily or not counts once, not in every run.
2. **Deadline accuracy**: a controller declares a 20 ms period (5 ms
   tolerance) and stops stepping; the server applies the fallback each
   period. Lateness = when each fallback ran minus when it was due (the
   last step + period + tolerance, then one period more each time), as the
   server measures it (``deadline_report.lateness``), p50 and p99 over
   ``--misses`` fallbacks, on an idle machine and with every core kept busy
   by other processes.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import fastenv
from benchmarks.steps import step_p50_us
from fastenv.server_process import ServerProcess

TIMEOUT_S = 30.0
NEVER = 2**31 - 1
PERIOD, TOLERANCE = 0.02, 0.005
ACTION = np.zeros(4, np.float32)


SMALL = ("fastenv.examples:VectorEnv", {"max_steps": NEVER}, np.zeros(4, np.float32))
CAMERA = ("fastenv.examples:CameraEnv", {"max_steps": NEVER, "reply_arrays": False}, np.zeros(20, np.float32))


def on_off_table(feature: str, flags: list[str], payloads: dict[str, tuple], steps: int, repeat: int) -> None:
    """p50 step round trip with ``flags`` against without, interleaved, per payload and transport."""
    runs: dict[tuple[str, str, str], list[float]] = {}
    for payload, (target, kwargs, action) in payloads.items():
        count = steps if payload == "small" else max(steps // 10, 20)
        for turn in range(repeat):  # a fresh pair of servers each run: no process's luck counts twice
            servers = {
                "off": ServerProcess(target, [], env_kwargs=kwargs),
                "on": ServerProcess(target, flags, env_kwargs=kwargs),
            }
            order = list(servers.items()) if turn % 2 == 0 else list(servers.items())[::-1]
            try:
                for server in servers.values():
                    server.start()
                for transport in ("shm", "tcp"):
                    for state, server in order:
                        p50 = step_p50_us(server.address, transport, action, count)
                        runs.setdefault((payload, transport, state), []).append(p50)
            finally:
                for server in servers.values():
                    server.stop()
    print(
        f"\n{feature}: step p50 (µs), median of {repeat} runs, each on a fresh pair of servers "
        f"({steps} small steps, a tenth for camera)"
    )
    print(f"| payload | transport | {feature} off | {feature} on | on / off |")
    print("|---|---|---:|---:|---:|")
    for payload in payloads:
        for transport in ("shm", "tcp"):
            off, on = (statistics.median(runs[(payload, transport, state)]) for state in ("off", "on"))
            print(f"| {payload} | {transport} | {off:.1f} | {on:.1f} | {on / off:.3f} |")


def _burn(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        sum(range(10_000))


@contextlib.contextmanager
def busy_machine(loaded: bool):
    """Every core kept busy by a process of its own (when ``loaded``)."""
    if not loaded:
        yield
        return
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(os.cpu_count() or 1)]
    for burner in burners:
        burner.start()
    try:
        yield
    finally:
        stop.set()
        for burner in burners:
            burner.join(5)


def lateness_ms(address: str, misses: int) -> list[float]:
    """How late each of ``misses`` fallbacks ran after it was due (ms)."""
    with fastenv.FastRemoteEnv(address, role="controller", timeout=TIMEOUT_S) as env:
        env.reset(seed=0)
        env.set_deadline(PERIOD, fastenv.Fallback.action(np.zeros(4, np.float32)), tolerance=TOLERANCE)
        env.step(np.zeros(4, np.float32))
        give_up = time.monotonic() + TIMEOUT_S + misses * PERIOD
        while env.deadline_report.missed < misses and time.monotonic() < give_up:
            time.sleep(PERIOD * 5)
        report = env.deadline_report
        env.clear_deadline()
    return [late * 1000 for late in report.lateness[:misses]]  # the server's own measure


def deadline_table(misses: int) -> None:
    server = ServerProcess("fastenv.examples:VectorEnv", [], env_kwargs={"max_steps": NEVER})
    server.start()
    rows = []
    try:
        for loaded in (False, True):
            with busy_machine(loaded):
                late = sorted(lateness_ms(server.address, misses))
            rows.append(("loaded" if loaded else "idle", late))
    finally:
        server.stop()
    print(f"\ndeadline: fallback time after it was due (ms), period {PERIOD * 1000:g} ms, {misses} fallbacks")
    print("| machine | p50 | p99 | max |")
    print("|---|---:|---:|---:|")
    for name, late in rows:
        p99 = late[min(len(late) - 1, int(0.99 * len(late)))]
        print(f"| {name} | {statistics.median(late):.2f} | {p99:.2f} | {late[-1]:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--misses", type=int, default=60, help="fallbacks timed per machine state (at most 64)")
    args = parser.parse_args(argv)
    on_off_table("metrics", ["--metrics-port", "0"], {"small": SMALL}, args.steps, args.repeat)
    with tempfile.TemporaryDirectory() as folder:
        recording = os.path.join(folder, "bench.mcap")
        on_off_table("recording", ["--record", recording], {"small": SMALL, "camera": CAMERA}, args.steps, args.repeat)
    deadline_table(min(args.misses, 64))
    return 0


if __name__ == "__main__":
    sys.exit(main())
