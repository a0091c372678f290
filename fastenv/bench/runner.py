"""Time ``step`` round trips over one transport, and check what it delivers.

:func:`run_transport` starts the server for a transport (a baseline from
:mod:`fastenv.bench.baselines`, or fastenv itself through
:class:`fastenv.server_process.ServerProcess`), resets it with a fixed seed,
runs ``warmup`` untimed steps, then ``steps`` timed ones, and stops it.

Timing: each step is bracketed by :func:`time.perf_counter_ns` (round trip)
and :func:`time.process_time_ns` (client CPU: every thread of this process,
so the I/O threads of pyzmq count too). The brackets themselves cost well
under a microsecond.

Correctness: the reset observation and every warmup step are compared with a
local instance of the same env fed the same seed and actions; after the timed
loop the local env is advanced by the same number of steps (untimed) and one
more step is compared, so a transport that corrupts data during the timed
phase is caught as well. A mismatch raises :class:`TransportMismatch`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastenv.bench.baselines import BASELINES
from fastenv.bench.stats import Summary, summarize
from fastenv.bench.workloads import get_workload, observations_equal
from fastenv.errors import FastEnvError

__all__ = [
    "FASTENV_TRANSPORTS",
    "TRANSPORTS",
    "RunResult",
    "TransportMismatch",
    "TransportUnavailable",
    "open_transport",
    "run_transport",
]

FASTENV_TRANSPORTS: tuple[str, ...] = ("fastenv-tcp",)
TRANSPORTS: tuple[str, ...] = (*BASELINES, *FASTENV_TRANSPORTS)


class TransportMismatch(FastEnvError):
    """A transport delivered something other than what the local env returns."""


class TransportUnavailable(FastEnvError):
    """The transport cannot be started here (for example fastenv's core is missing)."""


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


class _FastEnvClient:
    """fastenv's own client behind the same ``reset`` / ``step`` / ``close`` shape as a baseline."""

    def __init__(self, payload: str, transport: str, timeout: float) -> None:
        try:
            import fastenv
            from fastenv.server_process import ServerProcess

            remote_env_cls = fastenv.FastRemoteEnv
        except (ImportError, AttributeError) as exc:
            raise TransportUnavailable(f"fastenv core is not importable: {exc}") from exc
        workload = get_workload(payload)
        self._server = ServerProcess(
            workload.target, env_kwargs=workload.env_kwargs or None, ready_timeout=timeout
        )
        self._server.start()
        try:
            try:
                self._env = remote_env_cls(self._server.address, transport=transport)
            except TypeError:  # an early core without the transport= keyword
                self._env = remote_env_cls(self._server.address)
        except BaseException:
            self._server.stop()
            raise

    def reset(self, seed: int | None = None) -> Any:
        return self._env.reset(seed=seed)

    def step(self, action: Any) -> Any:
        return self._env.step(action)

    def close(self) -> None:
        try:
            self._env.close()
        finally:
            self._server.stop()


@contextlib.contextmanager
def open_transport(name: str, payload: str, *, timeout: float = 30.0) -> Iterator[Any]:
    """Start the server for transport ``name`` and yield a client with ``reset``/``step``/``close``.

    Raises:
        KeyError: unknown transport or payload.
        TransportUnavailable: the transport cannot run here.
    """
    get_workload(payload)
    if name in BASELINES:
        client: Any = BASELINES[name](payload, timeout=timeout)
    elif name in FASTENV_TRANSPORTS:
        client = _FastEnvClient(payload, name.removeprefix("fastenv-"), timeout)
    else:
        raise KeyError(f"unknown transport {name!r}; choose from {', '.join(TRANSPORTS)}")
    try:
        yield client
    finally:
        client.close()


def _check(where: str, got: Any, expected: Any, transport: str) -> None:
    if not observations_equal(got, expected):
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
) -> RunResult:
    """Reset ``client``, verify and warm it up, then time ``steps`` step round trips."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps} warmup={warmup}")
    workload = get_workload(payload)
    local = workload.make_env()
    action = workload.make_action()
    seed = workload.seed

    _check("reset observation", client.reset(seed=seed)[0], local.reset(seed=seed)[0], transport)
    for i in range(warmup):
        _check(f"warmup step {i} result", client.step(action), local.step(action), transport)

    rtt = np.zeros(steps, dtype=np.int64)
    cpu = np.zeros(steps, dtype=np.int64)
    step, cpu_clock = client.step, time.process_time_ns
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
    rtt, cpu = rtt[:done], cpu[:done]

    for _ in range(done):
        local.step(action)
    _check("step result after the timed loop", client.step(action), local.step(action), transport)
    local.close()
    return RunResult(
        transport=transport,
        payload=payload,
        steps=steps,
        warmup=warmup,
        rtt_ns=rtt,
        cpu_ns=cpu,
        wall_s=wall_s,
        verified_steps=warmup + 2,
        summary=summarize(rtt, cpu),
    )


def run_transport(
    name: str,
    payload: str,
    steps: int,
    warmup: int,
    *,
    max_seconds: float | None = None,
    timeout: float = 30.0,
) -> RunResult:
    """Start transport ``name`` serving ``payload``, time ``steps`` step round trips, stop it.

    Args:
        name: a name from :data:`TRANSPORTS`.
        payload: a name from :data:`fastenv.bench.workloads.PAYLOADS`.
        steps: timed steps.
        warmup: untimed (but verified) steps before them.
        max_seconds: stop the timed loop after this much wall time (for
            slow transports such as ``seed-pickle``); ``None`` for no limit.
        timeout: server start-up and per-request timeout, in seconds.
    """
    with open_transport(name, payload, timeout=timeout) as client:
        return measure(client, name, payload, steps, warmup, max_seconds=max_seconds)
