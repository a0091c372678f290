"""Time ``step`` round trips over one transport, and check what it delivers.

:func:`run_transport` starts the server for a transport (a baseline from
:mod:`fastenv.bench.baselines`, a floor from :mod:`fastenv.bench.floors`, or
fastenv itself through :class:`fastenv.server_process.ServerProcess`), resets
it with a fixed seed, runs ``warmup`` untimed steps, then ``steps`` timed ones,
and stops it. :func:`~fastenv.bench.timing.measure` is the one client loop,
whichever the transport.

fastenv rows:

- ``fastenv-shm``: ``FastRemoteEnv(transport="shm")`` with the default
  ``copy=False`` (views into the arena), native doorbell.
- ``fastenv-shm-py``: the same with the pure-Python doorbell on both sides:
  the server is started with ``FASTENV_NATIVE=0``, and since the client's
  backend is fixed when :mod:`fastenv.shm.futex` is imported, the client loop
  (:func:`~fastenv.bench.timing.measure`) runs in a subprocess started with ``FASTENV_NATIVE=0``
  (``python -m fastenv.bench.runner --connect ADDRESS ...``), which prints its
  samples as JSON. A process already running the pure-Python backend measures
  it in-process.
- ``fastenv-tcp``: ``FastRemoteEnv(transport="tcp")``.

See :mod:`fastenv.bench.timing` for how the round trips are timed and checked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from fastenv.bench.baselines import BASELINES
from fastenv.bench.floors import FLOORS
from fastenv.bench.gym_async import GymAsync
from fastenv.bench.timing import RunResult, TransportMismatch, measure, run_result
from fastenv.bench.workloads import get_workload
from fastenv.errors import FastEnvError, FastEnvTimeout

__all__ = [
    "FASTENV_TRANSPORTS",
    "FLOOR_TRANSPORTS",
    "TRANSPORTS",
    "TransportUnavailable",
    "connect_transport",
    "open_transport",
    "run_transport",
    "start_fastenv_server",
]

FASTENV_TRANSPORTS: tuple[str, ...] = ("fastenv-shm", "fastenv-shm-py", "fastenv-tcp")
FLOOR_TRANSPORTS: tuple[str, ...] = tuple(FLOORS)
TRANSPORTS: tuple[str, ...] = (*FASTENV_TRANSPORTS, GymAsync.name, *BASELINES, *FLOOR_TRANSPORTS)

_PY_BACKEND = {"FASTENV_NATIVE": "0"}


class TransportUnavailable(FastEnvError):
    """The transport cannot be started here (for example fastenv's core is missing)."""


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
    num_envs: int | None = None,
) -> Any:
    """A started ``fastenv serve`` (a :class:`~fastenv.server_process.ServerProcess`) for fastenv row ``name``.

    Serves ``payload``'s env with the arguments it needs
    (:attr:`~fastenv.bench.workloads.Workload.serve_args`), the extra
    command-line ``args`` (for example ``["--mode", "per-client"]``) and the
    pure-Python doorbell for ``fastenv-shm-py``; with ``num_envs``, the
    payload's env as built for a vector of that many
    (:meth:`~fastenv.bench.workloads.Workload.for_envs`). The caller stops it.

    Raises:
        KeyError: ``name`` is not a fastenv row, or the payload is unknown.
    """
    from fastenv.server_process import ServerProcess

    if name not in FASTENV_TRANSPORTS:
        raise KeyError(f"{name!r} is not a fastenv transport; choose from {', '.join(FASTENV_TRANSPORTS)}")
    workload = get_workload(payload)
    if num_envs is not None:
        workload = workload.for_envs(num_envs)
    server = ServerProcess(
        workload.target,
        [*workload.serve_args, *args],
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
    Gymnasium's worker, see :class:`~fastenv.bench.gym_async.GymAsync`).

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
    return run_result(name, payload, steps, warmup, rtt, cpu, float(report["wall_s"]),
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
