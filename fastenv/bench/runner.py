"""Time ``step`` round trips over one transport, and check what it delivers.

:func:`run_transport` starts the server for a transport (a baseline from
:mod:`fastenv.bench.baselines`, a floor from :mod:`fastenv.bench.floors`, or
fastenv itself through :class:`fastenv.server_process.ServerProcess`), resets
it with a fixed seed, runs ``warmup`` untimed steps, then ``steps`` timed ones,
and stops it. :func:`measure` is the one client loop, whichever the transport.

fastenv rows:

- ``fastenv-shm``: ``FastRemoteEnv(transport="shm")`` with the default
  ``copy=False`` (read-only views into the arena), native doorbell.
- ``fastenv-shm-py``: the same with the pure-Python doorbell on both sides:
  the server is started with ``FASTENV_NATIVE=0``, and since the client's
  backend is fixed when :mod:`fastenv.shm.futex` is imported, the client loop
  (:func:`measure`) runs in a subprocess started with ``FASTENV_NATIVE=0``
  (``python -m fastenv.bench.runner --connect ADDRESS ...``), which prints its
  samples as JSON. A process already running the pure-Python backend measures
  it in-process.
- ``fastenv-tcp``: ``FastRemoteEnv(transport="tcp")``.

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

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastenv.bench.baselines import BASELINES, GymAsync
from fastenv.bench.floors import FLOORS
from fastenv.bench.stats import Summary, summarize
from fastenv.bench.workloads import get_workload, observations_equal, snapshot
from fastenv.errors import FastEnvError, FastEnvTimeout

__all__ = [
    "FASTENV_TRANSPORTS",
    "FLOOR_TRANSPORTS",
    "TRANSPORTS",
    "RunResult",
    "TransportMismatch",
    "TransportUnavailable",
    "check_result",
    "connect_transport",
    "measure",
    "open_transport",
    "run_transport",
    "start_fastenv_server",
]

FASTENV_TRANSPORTS: tuple[str, ...] = ("fastenv-shm", "fastenv-shm-py", "fastenv-tcp")
FLOOR_TRANSPORTS: tuple[str, ...] = tuple(FLOORS)
TRANSPORTS: tuple[str, ...] = (*FASTENV_TRANSPORTS, GymAsync.name, *BASELINES, *FLOOR_TRANSPORTS)

_PY_BACKEND = {"FASTENV_NATIVE": "0"}


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


def _client_backend() -> str:
    """The doorbell backend of this process's fastenv client (fixed at import)."""
    from fastenv.shm import futex

    return futex.BACKEND


def start_fastenv_server(
    name: str,
    payload: str,
    *,
    args: Sequence[str] = (),
    timeout: float = 30.0,
    server_env: Mapping[str, str] | None = None,
) -> Any:
    """A started ``fastenv serve`` (a :class:`~fastenv.server_process.ServerProcess`) for fastenv row ``name``.

    Serves ``payload``'s env with the extra command-line ``args`` (for example
    ``["--mode", "per-client"]``) and the pure-Python doorbell for
    ``fastenv-shm-py``. The caller stops it.

    Raises:
        KeyError: ``name`` is not a fastenv row, or the payload is unknown.
    """
    from fastenv.server_process import ServerProcess

    if name not in FASTENV_TRANSPORTS:
        raise KeyError(f"{name!r} is not a fastenv transport; choose from {', '.join(FASTENV_TRANSPORTS)}")
    workload = get_workload(payload)
    server = ServerProcess(
        workload.target,
        args,
        env_kwargs=workload.env_kwargs or None,
        ready_timeout=timeout,
        extra_env={**(server_env or {}), **(_PY_BACKEND if name == "fastenv-shm-py" else {})},
    )
    server.start()
    return server


def _start_server(name: str, payload: str, timeout: float, server_env: Mapping[str, str] | None) -> Any:
    """A started ``fastenv serve`` for fastenv row ``name`` (pure-Python doorbell for ``-py``)."""
    return start_fastenv_server(name, payload, timeout=timeout, server_env=server_env)


class _FastEnvClient:
    """fastenv's own client behind the same ``reset`` / ``step`` / ``close`` shape as a baseline.

    Starts its own server unless ``address`` is given (then it only connects).
    """

    def __init__(
        self,
        name: str,
        payload: str,
        timeout: float,
        address: str | None = None,
        server_env: Mapping[str, str] | None = None,
        server_pid: int | None = None,
    ) -> None:
        self._server_pid = server_pid
        try:
            import fastenv

            remote_env_cls = fastenv.FastRemoteEnv
        except (ImportError, AttributeError) as exc:
            raise TransportUnavailable(f"fastenv core is not importable: {exc}") from exc
        transport = "shm" if name.startswith("fastenv-shm") else "tcp"
        if name == "fastenv-shm-py" and _client_backend() != "python":
            raise TransportUnavailable(
                "fastenv-shm-py needs the pure-Python doorbell in this process (FASTENV_NATIVE=0 "
                "before import); run_transport() runs its client in such a subprocess"
            )
        self._server = _start_server(name, payload, timeout, server_env) if address is None else None
        try:
            address = self._server.address if self._server is not None else address
            self._env = remote_env_cls(address, transport=transport, copy=False, timeout=timeout,
                                       connect_timeout=timeout)
            if self._env.transport != transport:
                self._env.close()
                raise TransportUnavailable(f"{name}: got transport {self._env.transport!r}")
        except BaseException:
            if self._server is not None:
                self._server.stop()
            raise

    @property
    def server_pid(self) -> int | None:
        """The ``fastenv serve`` process's id (started here, or given with ``address``), else ``None``."""
        return self._server.pid if self._server is not None else self._server_pid

    def reset(self, seed: int | None = None) -> Any:
        return self._env.reset(seed=seed)

    def step(self, action: Any) -> Any:
        return self._env.step(action)

    def close(self) -> None:
        try:
            self._env.close()
        finally:
            if self._server is not None:
                self._server.stop()


def _client(name: str, payload: str, timeout: float, server_env: Mapping[str, str] | None) -> Any:
    if name in BASELINES:
        return BASELINES[name](payload, timeout=timeout, server_env=server_env)
    if name in FLOORS:
        return FLOORS[name](payload, timeout=timeout, server_env=server_env)
    if name == GymAsync.name:
        return GymAsync(payload, timeout=timeout, server_env=server_env)
    if name in FASTENV_TRANSPORTS:
        return _FastEnvClient(name, payload, timeout, server_env=server_env)
    raise KeyError(f"unknown transport {name!r}; choose from {', '.join(TRANSPORTS)}")


@contextlib.contextmanager
def open_transport(
    name: str, payload: str, *, timeout: float = 30.0, server_env: Mapping[str, str] | None = None
) -> Iterator[Any]:
    """Start the server for transport ``name`` and yield a client with ``reset``/``step``/``close``.

    ``server_env`` is added to the environment of the server process (or
    Gymnasium's worker, see :class:`~fastenv.bench.baselines.GymAsync`).

    ``fastenv-shm-py`` works in-process only where the pure-Python doorbell
    is already active (``FASTENV_NATIVE=0``); elsewhere it is unavailable here
    and :func:`run_transport` runs it in a subprocess.

    Raises:
        KeyError: unknown transport or payload.
        TransportUnavailable: the transport cannot run here.
    """
    get_workload(payload)
    client = _client(name, payload, timeout, server_env)
    try:
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def connect_transport(name: str, payload: str, address: str, *, timeout: float = 30.0) -> Iterator[Any]:
    """A client of fastenv row ``name`` connected to the running server at ``address``; closed on exit.

    ``fastenv-shm-py`` needs this process to run the pure-Python doorbell
    (``FASTENV_NATIVE=0`` before fastenv is imported).

    Raises:
        KeyError: ``name`` is not a fastenv row, or the payload is unknown.
        TransportUnavailable: the transport cannot run here.
    """
    if name not in FASTENV_TRANSPORTS:
        raise KeyError(f"{name!r} is not a fastenv transport; choose from {', '.join(FASTENV_TRANSPORTS)}")
    get_workload(payload)
    client = _FastEnvClient(name, payload, timeout, address=address)
    try:
        yield client
    finally:
        client.close()


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
    return _result(transport, payload, steps, warmup, rtt, cpu, wall_s, server_cpu)


def _result(
    transport: str,
    payload: str,
    steps: int,
    warmup: int,
    rtt: np.ndarray,
    cpu: np.ndarray,
    wall_s: float,
    server_cpu: int | None = None,
) -> RunResult:
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


def run_transport(
    name: str,
    payload: str,
    steps: int,
    warmup: int,
    *,
    max_seconds: float | None = None,
    timeout: float = 30.0,
    server_env: Mapping[str, str] | None = None,
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
        server_env: environment variables for the server process (and for
            ``fastenv-shm-py``'s client subprocess).
    """
    get_workload(payload)
    if name == "fastenv-shm-py" and _client_backend() != "python":
        return _run_in_subprocess(
            name, payload, steps, warmup, max_seconds=max_seconds, timeout=timeout, server_env=server_env
        )
    with open_transport(name, payload, timeout=timeout, server_env=server_env) as client:
        return measure(client, name, payload, steps, warmup, max_seconds=max_seconds)


# --------------------------------------------------------------------------
# fastenv-shm-py: the client loop in a subprocess with FASTENV_NATIVE=0.
# --------------------------------------------------------------------------


def _run_in_subprocess(
    name: str,
    payload: str,
    steps: int,
    warmup: int,
    *,
    max_seconds: float | None,
    timeout: float,
    server_env: Mapping[str, str] | None,
) -> RunResult:
    """Serve with the pure-Python doorbell and run :func:`measure` in a ``FASTENV_NATIVE=0`` child."""
    server = _start_server(name, payload, timeout, server_env)
    try:
        command = [
            sys.executable, "-m", "fastenv.bench.runner", "--connect", server.address, "--transport", name,
            "--payload", payload, "--steps", str(steps), "--warmup", str(warmup), "--timeout", str(timeout),
            "--server-pid", str(server.pid),
        ]  # fmt: skip
        if max_seconds is not None:
            command += ["--max-seconds", str(max_seconds)]
        # start-up and every call are bounded by ``timeout``; the timed loop by max_seconds
        limit = 4 * timeout + (max_seconds if max_seconds is not None else steps * timeout)
        try:
            done = subprocess.run(
                command,
                check=False,
                capture_output=True,
                text=True,
                timeout=limit,
                env={**os.environ, **(server_env or {}), **_PY_BACKEND},
            )
        except subprocess.TimeoutExpired:
            raise FastEnvTimeout(f"{name}: the client subprocess did not finish within {limit:.0f}s") from None
    finally:
        server.stop()
    lines = done.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise TransportUnavailable(
            f"{name}: the client subprocess exited with code {done.returncode}:\n{done.stderr.strip()}"
        ) from None
    if report.get("error") == "mismatch":
        raise TransportMismatch(report["message"])
    if report.get("error"):
        raise TransportUnavailable(f"{name}: {report['message']}")
    if report["backend"] != "python":
        raise TransportUnavailable(f"{name}: the client subprocess used the {report['backend']} doorbell")
    rtt = np.asarray(report["rtt_ns"], dtype=np.int64)
    cpu = np.asarray(report["cpu_ns"], dtype=np.int64)
    server_cpu = report.get("server_cpu_ns")
    return _result(name, payload, steps, warmup, rtt, cpu, float(report["wall_s"]),
                   None if server_cpu is None else int(server_cpu))  # fmt: skip


def _client_main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastenv.bench.runner --connect ADDRESS ...``: run :func:`measure`, print JSON.

    The last stdout line is ``{"backend", "rtt_ns", "cpu_ns", "wall_s"}``, or
    ``{"error": "mismatch" | "unavailable", "message"}``.
    """
    parser = argparse.ArgumentParser(prog="python -m fastenv.bench.runner")
    parser.add_argument("--connect", required=True, metavar="ADDRESS", help="a running fastenv server")
    parser.add_argument("--transport", choices=FASTENV_TRANSPORTS, required=True)
    parser.add_argument("--payload", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--server-pid", type=int, default=None, help="the server's pid, for its CPU time")
    args = parser.parse_args(argv)
    report: dict[str, Any]
    try:
        client = _FastEnvClient(args.transport, args.payload, args.timeout, address=args.connect,
                                server_pid=args.server_pid)  # fmt: skip
        try:
            result = measure(client, args.transport, args.payload, args.steps, args.warmup,
                             max_seconds=args.max_seconds)
        finally:
            client.close()
    except TransportMismatch as exc:
        report = {"error": "mismatch", "message": str(exc)}
    except (FastEnvError, OSError) as exc:
        report = {"error": "unavailable", "message": f"{type(exc).__name__}: {exc}"}
    else:
        report = {
            "backend": _client_backend(),
            "rtt_ns": result.rtt_ns.tolist(),
            "cpu_ns": result.cpu_ns.tolist(),
            "wall_s": result.wall_s,
            "server_cpu_ns": _server_cpu_total(result),
        }
    print(json.dumps(report), flush=True)
    return 0


def _server_cpu_total(result: RunResult) -> int | None:
    """The server CPU time (ns) of the whole timed loop, back from the per-step summary; ``None`` if unknown."""
    per_step = result.summary.server_cpu_us
    return None if per_step != per_step else round(per_step * 1e3 * result.summary.count)


if __name__ == "__main__":
    sys.exit(_client_main())
