"""Step round trips on real rendered frames: the MuJoCo stack-cube task through fastenv and its baselines.

Usage::

    python benchmarks/bench_mujoco.py                          # two 240×320 cameras, 200 steps, 3 repeats
    python benchmarks/bench_mujoco.py --size 480x640 --steps 100
    python benchmarks/bench_mujoco.py --transports fastenv-shm fastenv-tcp
    FASTENV_BENCH_QUICK=1 python benchmarks/bench_mujoco.py    # smoke run: tiny images, 5 steps

Every row serves the same env (:class:`fastenv.examples.mujoco_stack.StackCubeEnv`,
the ``mujoco-<H>x<W>`` workload of :mod:`fastenv.bench.workloads`: physics,
then both cameras rendered offscreen, every step) and times ``step(action)``
with the runner of ``fastenv-bench`` (:func:`fastenv.bench.timing.measure`:
results checked against a local env before and after the timed loop).

What part of a round trip is the env, and what part the transport:

- ``in-process``: the env's ``step`` called directly in this process: the
  env's own simulation + rendering time, no transport.
- fastenv rows: the server runs :class:`TimedStackCube` (the same env, timing
  its own ``step``) on a thread of its own (``--env-thread dedicated``: the
  env's OpenGL context is bound to the thread that built it), so every timed round trip is paired with the env time of
  that very step, measured inside the server: "env ms" is the median of those,
  "added ms" the median of (round trip - env time) per step, "env share" the
  median of env time / round trip per step. Other load on the machine moves
  both halves of a pair alike.
- baselines (their servers are not ours to instrument): the in-process row is
  timed again right before each of their runs, and "added" compares the two
  p50s (marked ``~``): an estimate, only as good as the machine is quiet.

Repeats run the rows interleaved; each cell is the median over repeats.

On a machine without a GPU, MuJoCo renders with Mesa's llvmpipe on the CPU,
which is slow and spreads over every core: the server's renderer competes
with the client (and with a spinning shared-memory doorbell) for the cores.
Compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import fastenv
from fastenv.bench.runner import TransportUnavailable, run_transport
from fastenv.bench.timing import RunResult, measure
from fastenv.bench.workloads import get_workload, observation_nbytes
from fastenv.errors import MissingDependency
from fastenv.examples.mujoco_stack import StackCubeEnv
from fastenv.server_process import ServerProcess

IN_PROCESS = "in-process"
FASTENV_ROWS = {"fastenv-shm": "shm", "fastenv-tcp": "tcp"}
DEFAULT_TRANSPORTS = (
    IN_PROCESS,
    "fastenv-shm",
    "fastenv-tcp",
    "gym-async",
    "mp-pipe",
    "zmq-pickle",
    "seed-pickle-nodelay",
)
QUICK = os.environ.get("FASTENV_BENCH_QUICK", "") not in ("", "0")
TIMEOUT_S = 60.0


class TimedStackCube(StackCubeEnv):
    """The stack-cube task timing its own ``step`` (simulation + rendering); results unchanged.

    Served by the fastenv rows (``fastenv serve benchmarks/bench_mujoco.py:TimedStackCube --env-thread dedicated``);
    :meth:`step_times` hands the durations over and forgets them.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._step_ns: list[int] = []

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        """:meth:`StackCubeEnv.step`, timed with ``time.perf_counter_ns``."""
        start = time.perf_counter_ns()
        result = super().step(action)
        self._step_ns.append(time.perf_counter_ns() - start)
        return result

    def step_times(self) -> np.ndarray:
        """Nanoseconds of every ``step`` since the last call, in order."""
        times, self._step_ns = np.array(self._step_ns, dtype=np.int64), []
        return times


class InProcess:
    """The env itself behind the client shape the runner times: ``reset`` / ``step`` / ``close``."""

    def __init__(self, payload: str) -> None:
        self.env = get_workload(payload).make_env()

    def reset(self, seed: int | None = None) -> Any:
        return self.env.reset(seed=seed)

    def step(self, action: Any) -> Any:
        return self.env.step(action)

    def close(self) -> None:
        self.env.close()


@dataclass
class Row:
    """One run of one transport: its round trips and, where known, the env time of each timed step."""

    result: RunResult
    env_ns: np.ndarray | None = None  # the server's own step time, paired with result.rtt_ns
    paired: RunResult | None = None  # an in-process run timed right before (baselines)


def run_in_process(payload: str, steps: int, warmup: int) -> RunResult:
    """The env's own step, in this process."""
    client = InProcess(payload)
    try:
        return measure(client, IN_PROCESS, payload, steps, warmup)
    finally:
        client.close()


def run_fastenv(transport: str, payload: str, steps: int, warmup: int) -> Row:
    """A fastenv row: :class:`TimedStackCube` served by ``fastenv serve``, env time read back per step."""
    workload = get_workload(payload)
    target = f"{os.path.abspath(__file__)}:TimedStackCube"
    with ServerProcess(target, workload.serve_args, env_kwargs=workload.env_kwargs, ready_timeout=TIMEOUT_S) as server:
        wanted = FASTENV_ROWS[transport]
        with fastenv.FastRemoteEnv(
            server.address, transport=wanted, timeout=TIMEOUT_S, connect_timeout=TIMEOUT_S
        ) as env:
            if env.transport != wanted:
                raise TransportUnavailable(f"{transport}: got transport {env.transport!r}")
            result = measure(env, transport, payload, steps, warmup)
            times = np.array(env.step_times())  # an owned copy: shared-memory views die with the client
    # The server stepped warmup + timed + 1 checking step; keep the timed ones.
    timed = result.rtt_ns.size
    return Row(result, env_ns=times[warmup : warmup + timed])


def run_row(transport: str, payload: str, steps: int, warmup: int, paired: bool) -> Row:
    """Time one row (starting and stopping its server)."""
    if transport == IN_PROCESS:
        return Row(run_in_process(payload, steps, warmup))
    if transport in FASTENV_ROWS:
        return run_fastenv(transport, payload, steps, warmup)
    reference = run_in_process(payload, steps, warmup) if paired else None
    return Row(run_transport(transport, payload, steps, warmup, timeout=TIMEOUT_S), paired=reference)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def format_table(rows: dict[str, list[Row]]) -> str:
    """The comparison table (milliseconds), medians over repeats."""
    header = (
        f"{'transport':<22} {'p50 ms':>8} {'p99 ms':>8} {'steps/s':>8} {'env ms':>8} "
        f"{'added ms':>9} {'env share':>9} {'client CPU ms':>13}"
    )
    lines = [header, "-" * len(header)]
    for transport, runs in rows.items():
        p50 = _median([r.result.summary.p50_us for r in runs]) / 1e3
        p99 = _median([r.result.summary.p99_us for r in runs]) / 1e3
        rate = _median([r.result.summary.steps_per_s for r in runs])
        cpu = _median([r.result.summary.cpu_us for r in runs]) / 1e3
        env_cell, added, share = f"{'':>8}", f"{'':>9}", f"{'':>9}"
        if transport == IN_PROCESS:
            env_cell = f"{p50:>8.2f}"
        elif all(r.env_ns is not None and r.env_ns.size == r.result.rtt_ns.size for r in runs):
            env = _median([float(np.median(r.env_ns)) for r in runs]) / 1e6
            gap = _median([float(np.median(r.result.rtt_ns - r.env_ns)) for r in runs]) / 1e6
            part = _median([float(np.median(r.env_ns / r.result.rtt_ns)) for r in runs])
            env_cell, added, share = f"{env:>8.2f}", f"{gap:>+9.2f}", f"{part:>9.0%}"
        elif all(r.paired is not None for r in runs):
            env = _median([r.paired.summary.p50_us for r in runs]) / 1e3
            gap = _median([(r.result.summary.p50_us - r.paired.summary.p50_us) / 1e3 for r in runs])
            part = _median([r.paired.summary.p50_us / r.result.summary.p50_us for r in runs])
            env_cell, added, share = f"{'~':>2}{env:>6.2f}", f"{'~':>2}{gap:>+7.2f}", f"{'~':>5}{part:>4.0%}"
        lines.append(
            f"{transport:<22} {p50:>8.2f} {p99:>8.2f} {rate:>8.1f} {env_cell} {added} {share} {cpu:>13.2f}"
        )
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 240x320, got {text!r}")
    return int(match[1]), int(match[2])


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=_size, default=(48, 64) if QUICK else (240, 320), help="camera HxW")
    parser.add_argument("--steps", type=_positive, default=5 if QUICK else 200, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=1 if QUICK else 10, help="verified untimed steps per row")
    parser.add_argument("--repeat", type=_positive, default=1 if QUICK else 3, help="interleaved repeats")
    parser.add_argument("--transports", nargs="+", default=list(DEFAULT_TRANSPORTS), metavar="NAME")
    parser.add_argument(
        "--no-paired",
        dest="paired",
        action="store_false",
        help="do not time the env in-process before every baseline run (faster; no env columns for them)",
    )
    args = parser.parse_args(argv)

    height, width = args.size
    payload = f"mujoco-{height}x{width}"
    try:
        nbytes = observation_nbytes(payload)
    except MissingDependency as exc:
        print(f"cannot run the MuJoCo benchmark here: {exc}", file=sys.stderr)
        return 2
    print(
        f"MuJoCo stack-cube, 2 cameras {height}x{width} ({nbytes / 1e6:.2f} MB per observation), "
        f"{args.steps} timed steps after {args.warmup} verified, median of {args.repeat} interleaved repeat(s); "
        f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}",
        flush=True,
    )
    rows: dict[str, list[Row]] = {}
    skipped: dict[str, str] = {}
    for repeat in range(args.repeat):
        for transport in args.transports:
            if transport in skipped:
                continue
            start = time.perf_counter()
            try:
                row = run_row(transport, payload, args.steps, args.warmup, args.paired)
            except TransportUnavailable as exc:
                skipped[transport] = str(exc)
                continue
            rows.setdefault(transport, []).append(row)
            print(
                f"  [{repeat + 1}/{args.repeat}] {transport:<22} p50 {row.result.summary.p50_us / 1e3:8.2f} ms "
                f"({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    print(format_table(rows))
    for transport, reason in skipped.items():
        print(f"skipped {transport}: {reason}")
    print(
        "env ms: the env's own step (simulation + rendering); for fastenv rows timed inside the server for the "
        "same steps, per step; ~: baselines, estimated from an in-process run right before. added ms: round trip "
        "minus env. env share: env / round trip. client CPU: all threads of the client process, per step."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
