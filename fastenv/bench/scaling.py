"""Scaling suites: aggregate steps/s as one server gets more to do (``fastenv-bench --scaling AXIS``).

Each count is a point on an *axis* (``clients``: client processes on one
per-client server; ``envs``: envs behind one ``--num-envs`` server, beside
Gymnasium's vector envs): see :mod:`fastenv.bench.axes`.

For every (transport, count) point, :func:`run_point` starts the server (for
fastenv rows), then the client processes (``python -m fastenv.bench.scaling
[--connect ADDRESS] ...``). Each client connects (or builds its vector env),
resets, runs the verified warmup (the same
:func:`fastenv.bench.timing.measure` as the comparison table), prints
``ready`` and waits; once every client is ready the parent writes ``go`` to all
of them, each times ``steps`` step round trips (or stops at ``max_seconds``),
verifies one more step against its local reference and prints a JSON summary.
The point's throughput is all clients' timed steps (times the env steps per
call) divided by the span from the first client's start to the last client's
end (``CLOCK_MONOTONIC``, one clock for every process on the host), so
clients that do not overlap are not counted as parallel.

Clients are processes, not threads: client threads of one process would
share its GIL and measure that instead of the server. On a machine with few
cores the clients and the server compete for them, and the table's efficiency
column (speedup over the smallest count divided by the count ratio) says how
much of the added load turned into throughput.

Adding an axis: see :mod:`fastenv.bench.axes`; teach :func:`_client_main`
any new client argument.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from fastenv.bench.axes import AXES, SCALING_TRANSPORTS, Axis, ClientRun, ScalingPoint
from fastenv.bench.runner import (
    FASTENV_TRANSPORTS,
    TransportUnavailable,
    connect_transport,
    start_fastenv_server,
)
from fastenv.bench.stats import Summary
from fastenv.bench.timing import TransportMismatch, measure
from fastenv.bench.vectors import batch_action, open_vector_client, reference_env
from fastenv.bench.workloads import get_workload
from fastenv.errors import FastEnvError, FastEnvTimeout

__all__ = ["ScalingFailed", "run_point"]

_READY = "fastenv-bench-scaling: ready"
_GO = "go\n"
_PY_BACKEND = {"FASTENV_NATIVE": "0"}


class ScalingFailed(FastEnvError):
    """A client of a scaling point failed to start, connect or report."""


# --------------------------------------------------------------------------
# Parent side.
# --------------------------------------------------------------------------


class _Client:
    """One client process: its pipes (unbuffered, read line by line) and a temporary file for its stderr."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._pending = bytearray()
        try:
            self.process = subprocess.Popen(
                list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, bufsize=0,
                env=dict(env),
            )  # fmt: skip
        except BaseException:
            self.stderr.close()
            raise

    def read_line(self, deadline: float) -> str:
        """The next stdout line, or what is left at EOF (``""`` when nothing).

        Raises:
            FastEnvTimeout: no complete line before ``deadline`` (monotonic).
        """
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([stdout], [], [], remaining)[0]:
                raise FastEnvTimeout(f"scaling client {self.process.pid} printed no line in time")
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                break
            self._pending += chunk
        line, newline, rest = bytes(self._pending).partition(b"\n")
        self._pending = bytearray(rest)
        return (line + newline).decode(errors="replace")

    def send(self, text: str) -> None:
        """Write ``text`` to the client's stdin."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(text.encode())

    def error_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace").strip()

    def close(self, timeout: float) -> None:
        """Close stdin (EOF ends a waiting client), wait, kill if needed, release the pipes."""
        process = self.process
        if process.stdin is not None:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        if process.stdout is not None:
            process.stdout.close()
        self.stderr.close()


def _report(client: _Client, line: str, transport: str) -> dict[str, Any]:
    """Parse a client's JSON line; a reported error becomes the matching exception."""
    try:
        report = json.loads(line)
    except ValueError:
        raise ScalingFailed(
            f"{transport}: a client exited with code {client.process.poll()} and printed {line!r}:\n"
            f"{client.error_text()}"
        ) from None
    if report.get("error") == "mismatch":
        raise TransportMismatch(report["message"])
    if report.get("error"):
        raise TransportUnavailable(f"{transport}: {report['message']}")
    return report


def run_point(
    axis: Axis | str,
    count: int,
    transport: str,
    payload: str,
    steps: int,
    warmup: int,
    *,
    max_seconds: float | None = None,
    timeout: float = 30.0,
    server_env: Mapping[str, str] | None = None,
) -> ScalingPoint:
    """Run one scaling point: a server for ``count`` on ``axis`` (fastenv rows), its clients started together.

    Args:
        axis: an :class:`Axis` or its name in :data:`AXES`.
        count: the axis's count (clients for ``clients``, envs for ``envs``).
        transport: one of the axis's :attr:`Axis.transports`.
        payload: a payload name (see :mod:`fastenv.bench.workloads`).
        steps: timed steps per client.
        warmup: untimed, verified steps per client before the start signal.
        max_seconds: cap on each client's timed loop.
        timeout: server start-up, connect, per-call and per-phase timeout (s).
        server_env: environment variables for the server and client processes.

    Raises:
        KeyError: unknown axis, transport or payload.
        ValueError: ``count`` or ``steps`` below 1.
        TransportMismatch: a client got something other than its local env's result.
        TransportUnavailable, ScalingFailed, FastEnvTimeout: a client could not run.
    """
    axis = AXES[axis] if isinstance(axis, str) else axis
    if transport not in axis.transports:
        raise KeyError(f"--scaling {axis.name} runs {', '.join(axis.transports)} only, not {transport!r}")
    if count < 1 or steps < 1:
        raise ValueError(f"need count >= 1 and steps >= 1, got count={count} steps={steps}")
    get_workload(payload)
    missing = axis.unavailable(transport, payload)
    if missing is not None:
        raise TransportUnavailable(missing)
    env = {**os.environ, **(server_env or {}), **(_PY_BACKEND if transport == "fastenv-shm-py" else {})}
    point = ScalingPoint(axis.name, count, transport, payload, axis.env_steps_per_call(count, transport))
    # start-up and every call are bounded by ``timeout``; the timed loop by max_seconds
    loop_limit = max_seconds if max_seconds is not None else steps * timeout
    with contextlib.ExitStack() as stack:
        connect: list[str] = []
        served = axis.server_transport(transport)
        if served is not None:  # the others build their envs in the client process
            server = start_fastenv_server(
                served, payload, args=axis.server_args(count, transport), timeout=timeout, server_env=server_env,
                num_envs=axis.vector_envs(count),
            )  # fmt: skip
            stack.callback(server.stop)
            connect = ["--connect", server.address]
        command = [
            sys.executable, "-m", "fastenv.bench.scaling", *connect, "--transport", transport,
            "--payload", payload, "--steps", str(steps), "--warmup", str(warmup), "--timeout", str(timeout),
            *(["--max-seconds", str(max_seconds)] if max_seconds is not None else []), *axis.client_args(count),
        ]  # fmt: skip
        clients: list[_Client] = []
        for _ in range(axis.client_processes(count)):
            client = _Client(command, env)
            stack.callback(client.close, timeout)
            clients.append(client)
        deadline = time.monotonic() + 4 * timeout + warmup * timeout
        for client in clients:
            line = client.read_line(deadline)
            if line.strip() != _READY:
                _report(client, line, transport)  # raises the client's error
                raise ScalingFailed(f"{transport}: a client printed {line!r} instead of its ready line")
        for client in clients:  # all are waiting: start them as close together as possible
            client.send(_GO)
        deadline = time.monotonic() + loop_limit + 4 * timeout
        for client in clients:
            report = _report(client, client.read_line(deadline), transport)
            point.clients.append(
                ClientRun(int(report["start_ns"]), float(report["wall_s"]), Summary(**report["summary"]))
            )
    return point


# --------------------------------------------------------------------------
# Client side: ``python -m fastenv.bench.scaling --connect ADDRESS ...``.
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _stdout_line() -> Iterator[None]:
    """Flush stdout after the block (the parent reads line by line)."""
    try:
        yield
    finally:
        sys.stdout.flush()


def _client_main(argv: Sequence[str] | None = None) -> int:
    """One scaling client: connect (or build its vector env), warm up, print ready, wait for ``go``, time, print JSON.

    With ``--num-envs N`` it drives a vector env of N envs
    (:func:`fastenv.bench.vectors.open_vector_client`) and checks it against a
    local ``SyncVectorEnv``; otherwise one env of the fastenv server at
    ``--connect``. The last stdout line is ``{"start_ns", "wall_s",
    "summary"}`` or ``{"error": "mismatch" | "unavailable", "message"}``.
    """
    parser = argparse.ArgumentParser(prog="python -m fastenv.bench.scaling")
    parser.add_argument("--connect", metavar="ADDRESS", help="a running fastenv server (fastenv rows)")
    parser.add_argument("--transport", choices=SCALING_TRANSPORTS, required=True)
    parser.add_argument("--payload", required=True)
    parser.add_argument("--num-envs", type=int, default=None, metavar="N", help="drive a vector env of N envs")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.num_envs is None and (args.connect is None or args.transport not in FASTENV_TRANSPORTS):
        parser.error("without --num-envs, give --connect and a fastenv transport")
    started: list[int] = []

    def wait_for_go() -> None:
        with _stdout_line():
            print(_READY)
        if sys.stdin.readline() != _GO:
            raise TransportUnavailable("the parent went away before the start signal")
        started.append(time.monotonic_ns())

    report: dict[str, Any]
    try:
        with contextlib.ExitStack() as stack:
            local = action = None
            if args.num_envs is None:
                client = stack.enter_context(
                    connect_transport(args.transport, args.payload, args.connect, timeout=args.timeout)
                )
            else:
                local = reference_env(args.payload, args.num_envs, args.transport)
                stack.callback(local.close)
                action = batch_action(args.payload, args.num_envs)
                client = stack.enter_context(open_vector_client(
                    args.transport, args.payload, args.num_envs, address=args.connect, timeout=args.timeout
                ))  # fmt: skip
            result = measure(client, args.transport, args.payload, args.steps, args.warmup,
                             max_seconds=args.max_seconds, before_timing=wait_for_go, local=local,
                             action=action)  # fmt: skip
    except TransportMismatch as exc:
        report = {"error": "mismatch", "message": str(exc)}
    except (FastEnvError, OSError, ImportError, ValueError) as exc:
        report = {"error": "unavailable", "message": f"{type(exc).__name__}: {exc}"}
    else:
        report = {"start_ns": started[0], "wall_s": result.wall_s, "summary": result.summary.as_dict()}
    with _stdout_line():
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(_client_main())
