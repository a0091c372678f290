"""The client loop of every row: time ``step`` round trips and check them against a local env.

:func:`measure` is the one loop, whichever the transport (see
:mod:`fastenv.bench.runner` for starting one); :class:`RunResult` is what it
returns.

Timing: each step is bracketed by :func:`time.perf_counter_ns` (round trip)
and :func:`time.process_time_ns` (client CPU: every thread of this process,
so the I/O threads of pyzmq count too). The brackets themselves cost well
under a microsecond. Server CPU: where the client has a separate server
process (its ``server_pid``: ``fastenv serve``, the baselines' and floors'
servers, Gymnasium's worker), that process's user + system CPU time (its
live and reaped children included, :func:`server_cpu_ns`) is read with
psutil right before and right after the timed loop; the difference divided
by the timed steps is the row's server CPU per step.

Correctness: the reset observation and every warmup step are compared with a
local instance of the same env fed the same seed and actions; after the timed
loop the local env is advanced by the same number of steps (untimed) and one
more step is compared, so a transport that corrupts data during the timed
phase is caught as well. A mismatch raises :class:`TransportMismatch`. What is
compared is a :func:`~fastenv.bench.workloads.snapshot` (zero-copy views are
reused after a few calls); a client with a ``comparable(result, expected)``
method (Gymnasium's batched results, the floors) says what to compare.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastenv.bench.stats import Summary, summarize
from fastenv.bench.workloads import get_workload, observations_equal, snapshot
from fastenv.errors import FastEnvError

__all__ = ["RunResult", "TransportMismatch", "check_result", "measure", "run_result", "server_cpu_ns"]


class TransportMismatch(FastEnvError):
    """A transport delivered something other than what the local env returns."""


@dataclass
class RunResult:
    """One timed run of one transport.

    ``rtt_ns`` and ``cpu_ns`` hold one entry per timed step. ``steps`` may be
    smaller than requested when ``max_seconds`` cut the run short.
    """

    transport: str
    payload: str
    steps: int
    warmup: int
    rtt_ns: np.ndarray = field(repr=False)
    cpu_ns: np.ndarray = field(repr=False)
    wall_s: float
    verified_steps: int
    summary: Summary

    @property
    def truncated(self) -> bool:
        """True when the time limit stopped the run before ``steps`` were timed."""
        return self.rtt_ns.size < self.steps

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the raw samples are not included)."""
        return {
            "transport": self.transport,
            "payload": self.payload,
            "steps_requested": self.steps,
            "steps_timed": int(self.rtt_ns.size),
            "warmup": self.warmup,
            "wall_s": self.wall_s,
            "verified_steps": self.verified_steps,
            "summary": self.summary.as_dict(),
        }


def _process_clock_ns(pid: int) -> int | None:
    """CPU time (ns) of process ``pid``'s thread group from its Linux CPU-time clock; ``None`` where unreadable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the whole process (clock_getcpuclockid)
    except (OSError, OverflowError):
        return None


def server_cpu_ns(pid: int | None) -> int | None:
    """CPU time (ns, user + system) used so far by process ``pid`` and its live children; ``None`` if unknown.

    psutil's ``cpu_times()`` (user + system, plus the reaped children's) counts
    in clock ticks (10 ms); where Linux's process CPU-time clock is readable
    (ns, the same user + system total) it is used for the live processes instead.
    """
    if pid is None:
        return None
    import psutil

    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
        total = 0
        for proc in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                precise = _process_clock_ns(proc.pid)
                total += precise if precise is not None else int((times.user + times.system) * 1e9)
                if proc is process:
                    total += int((times.children_user + times.children_system) * 1e9)
    except (psutil.Error, OSError):  # gone, or not ours to read
        return None
    return total


def check_result(client: Any, got: Any, expected: Any) -> bool:
    """Whether a transport's reset/step result ``got`` matches the local env's ``expected``.

    Compares whole results, or what the client's ``comparable(got, expected)``
    picks (the observation, for transports that carry only that).
    """
    comparable = getattr(client, "comparable", None)
    if comparable is not None:
        got, expected = comparable(got, expected)
    return observations_equal(snapshot(got), expected)


def _check(client: Any, where: str, got: Any, expected: Any, transport: str) -> None:
    if not check_result(client, got, expected):
        raise TransportMismatch(f"{transport}: {where} differs from the local env")


def measure(
    client: Any,
    transport: str,
    payload: str,
    steps: int,
    warmup: int,
    *,
    max_seconds: float | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
    before_timing: Callable[[], None] | None = None,
    local: Any = None,
    action: Any = None,
) -> RunResult:
    """Reset ``client``, verify and warm it up, then time ``steps`` step round trips.

    ``before_timing`` is called after the warmup, right before the timed loop
    (the scaling suite waits there until every client is ready). ``local``
    and ``action`` replace the payload's local reference env and action (a
    vector env and a batch of actions for ``--scaling envs``); a ``local``
    passed in is left open for the caller to close.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps} warmup={warmup}")
    workload = get_workload(payload)
    owned = local is None
    if local is None:
        local = workload.make_env()
    if action is None:
        action = workload.make_action()
    seed = workload.seed

    got, expected = client.reset(seed=seed), local.reset(seed=seed)
    _check(client, "reset observation", (got[0],), (expected[0],), transport)
    for i in range(warmup):
        _check(client, f"warmup step {i} result", client.step(action), local.step(action), transport)
    if before_timing is not None:
        before_timing()

    rtt = np.zeros(steps, dtype=np.int64)
    cpu = np.zeros(steps, dtype=np.int64)
    step, cpu_clock = client.step, time.process_time_ns
    pid = getattr(client, "server_pid", None)
    server_before = server_cpu_ns(pid)
    deadline = None if max_seconds is None else clock() + int(max_seconds * 1e9)
    start = clock()
    done = 0
    for done in range(1, steps + 1):
        c0 = cpu_clock()
        t0 = clock()
        step(action)
        t1 = clock()
        c1 = cpu_clock()
        rtt[done - 1] = t1 - t0
        cpu[done - 1] = c1 - c0
        if deadline is not None and t1 >= deadline:
            break
    wall_s = (clock() - start) / 1e9
    server_after = server_cpu_ns(pid) if server_before is not None else None
    server_cpu = None if server_after is None or server_before is None else server_after - server_before
    rtt, cpu = rtt[:done], cpu[:done]

    for _ in range(done):
        local.step(action)
    _check(client, "step result after the timed loop", client.step(action), local.step(action), transport)
    if owned:
        local.close()
    return run_result(transport, payload, steps, warmup, rtt, cpu, wall_s, server_cpu)


def run_result(
    transport: str,
    payload: str,
    steps: int,
    warmup: int,
    rtt: np.ndarray,
    cpu: np.ndarray,
    wall_s: float,
    server_cpu: int | None = None,
) -> RunResult:
    """A :class:`RunResult` from the timed samples (``verified_steps``: the warmup, the reset and the last check)."""
    return RunResult(
        transport=transport,
        payload=payload,
        steps=steps,
        warmup=warmup,
        rtt_ns=rtt,
        cpu_ns=cpu,
        wall_s=wall_s,
        verified_steps=warmup + 2,
        summary=summarize(rtt, cpu, server_cpu),
    )
