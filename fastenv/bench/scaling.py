"""Scaling suites: aggregate steps/s as one server gets more to do (``fastenv-bench --scaling AXIS``).

An *axis* says what a count means. :data:`AXES` holds:

- ``clients``: one ``fastenv serve TARGET --mode per-client`` server and
  *count* client processes, each driving its own env on it.
- ``envs``: one ``fastenv serve TARGET --num-envs COUNT --mode per-client``
  server (*count* envs behind one batched
  :class:`~fastenv.vector.VectorHost`) and one client process driving them
  with :class:`fastenv.FastVectorEnv`; in the same table, Gymnasium's
  ``AsyncVectorEnv(COUNT envs, shared_memory=True)`` (``gym-async``) and
  ``SyncVectorEnv(COUNT envs)`` (``gym-sync``) over the same env, each built
  in its own client process (see :mod:`fastenv.bench.vectors`). Throughput
  counts env steps: batch steps × count.

For every (transport, count) point, :func:`run_point` starts the server (for
fastenv rows), then the client processes (``python -m fastenv.bench.scaling
[--connect ADDRESS] ...``). Each client connects (or builds its vector env),
resets, runs the verified warmup (the same
:func:`fastenv.bench.runner.measure` as the comparison table), prints
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

Adding an axis: subclass :class:`Axis` (the server arguments for a count,
how many client processes, their extra arguments, the env steps per ``step``
call, which transports it runs and how its table reads) and register it in
:data:`AXES`; teach :func:`_client_main` any new client argument. The CLI
(``--scaling``, ``--counts``, ``--transports``), the table, the JSON and the
plot take the axis from :data:`AXES`.
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
from dataclasses import dataclass, field
from typing import IO, Any

from fastenv.bench.runner import (
    FASTENV_TRANSPORTS,
    TransportMismatch,
    TransportUnavailable,
    connect_transport,
    measure,
    start_fastenv_server,
)
from fastenv.bench.stats import Summary, spread
from fastenv.bench.vectors import (
    GYM_VECTORS,
    VECTOR_TRANSPORTS,
    batch_action,
    open_vector_client,
    reference_env,
)
from fastenv.bench.workloads import get_workload
from fastenv.errors import FastEnvError, FastEnvTimeout

__all__ = [
    "AXES",
    "SCALING_TRANSPORTS",
    "Axis",
    "ClientRun",
    "ClientsAxis",
    "EnvsAxis",
    "ScalingFailed",
    "ScalingPoint",
    "run_point",
]

_READY = "fastenv-bench-scaling: ready"
_GO = "go\n"
_PY_BACKEND = {"FASTENV_NATIVE": "0"}


class ScalingFailed(FastEnvError):
    """A client of a scaling point failed to start, connect or report."""


class Axis:
    """What a scaling count means: the server's arguments and the client processes for a count.

    Subclass and register in :data:`AXES` to add an axis (see the module docstring).
    """

    #: The ``--scaling`` name.
    name: str = ""
    #: What the count is, for table headers and plot labels.
    label: str = ""
    #: The transports the axis can run (``--transports``).
    transports: tuple[str, ...] = FASTENV_TRANSPORTS
    #: The transports it runs when ``--transports`` is not given.
    default_transports: tuple[str, ...] = ("fastenv-shm", "fastenv-tcp")
    #: The counts it runs when ``--counts`` is not given.
    default_counts: tuple[int, ...] = (1, 2, 4)
    #: What the throughput counts (the plot's y axis).
    rate_label: str = "steps/s (all clients)"
    #: Whether a point has several clients (the table's "per client" column).
    per_client: bool = True
    #: What one timed call is (table headers: "steps", "p50 µs").
    call: str = "step"
    #: A transport every row is compared with at the same count (a table column), if any.
    reference: str | None = None

    def server_args(self, count: int) -> list[str]:
        """Extra ``fastenv serve`` arguments for ``count``."""
        raise NotImplementedError

    def client_processes(self, count: int) -> int:
        """How many client processes a point with ``count`` runs."""
        raise NotImplementedError

    def client_args(self, count: int) -> list[str]:
        """Extra arguments of every client process (``python -m fastenv.bench.scaling``)."""
        return []

    def env_steps_per_call(self, count: int) -> int:
        """Env steps one client ``step`` call makes (more than 1 for a vector env)."""
        return 1

    def notes(self) -> list[str]:
        """Footnotes that say what the axis's rows are."""
        return []


class ClientsAxis(Axis):
    """``count`` client processes, each with its own env on one per-client-mode server."""

    name = "clients"
    label = "clients"

    def server_args(self, count: int) -> list[str]:
        return ["--mode", "per-client"]

    def client_processes(self, count: int) -> int:
        return count


class EnvsAxis(Axis):
    """``count`` envs behind one vector env, one client: a ``--num-envs`` server, or Gymnasium's vector envs."""

    name = "envs"
    label = "envs"
    transports = VECTOR_TRANSPORTS
    default_transports = ("fastenv-shm", "fastenv-tcp", *GYM_VECTORS)
    default_counts = (1, 2, 4, 8, 16)
    rate_label = "env steps/s (one client, one vector env)"
    per_client = False
    call = "batch step"
    reference = "gym-async"

    def server_args(self, count: int) -> list[str]:
        return ["--num-envs", str(count), "--mode", "per-client"]

    def client_processes(self, count: int) -> int:
        return 1

    def client_args(self, count: int) -> list[str]:
        return ["--num-envs", str(count)]

    def env_steps_per_call(self, count: int) -> int:
        return count

    def notes(self) -> list[str]:
        fastenv = (
            "fastenv-* = FastVectorEnv(copy=False) on one `fastenv serve --num-envs N --mode per-client` server "
            "(N envs stepped in turn by one batched VectorHost)"
        )
        gym = (
            "gym-async = Gymnasium AsyncVectorEnv(N envs, shared_memory=True): one worker process per env, "
            "observations copied out; gym-sync = SyncVectorEnv(N envs) in the client process (no IPC)"
        )
        return [fastenv, gym]


#: The scaling axes, by ``--scaling`` name.
AXES: dict[str, Axis] = {axis.name: axis for axis in (ClientsAxis(), EnvsAxis())}
#: Every transport some axis runs.
SCALING_TRANSPORTS: tuple[str, ...] = tuple(dict.fromkeys(t for axis in AXES.values() for t in axis.transports))


@dataclass(frozen=True)
class ClientRun:
    """One client's timed loop within a point: when it started (monotonic ns), how long, and its round trips."""

    start_ns: int
    wall_s: float
    summary: Summary

    @property
    def end_ns(self) -> int:
        return self.start_ns + int(self.wall_s * 1e9)

    def as_dict(self) -> dict[str, Any]:
        return {"start_ns": self.start_ns, "wall_s": self.wall_s, "summary": self.summary.as_dict()}


@dataclass
class ScalingPoint:
    """All clients of one (axis, count, transport) run; a step call makes :attr:`env_steps_per_call` env steps."""

    axis: str
    count: int
    transport: str
    payload: str
    env_steps_per_call: int
    clients: list[ClientRun] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Timed step calls over all clients."""
        return sum(c.summary.count for c in self.clients)

    @property
    def span_s(self) -> float:
        """From the first client's first timed step to the last client's last."""
        if not self.clients:
            return 0.0
        return (max(c.end_ns for c in self.clients) - min(c.start_ns for c in self.clients)) / 1e9

    @property
    def steps_per_s(self) -> float:
        """Aggregate env steps per second: all timed step calls × :attr:`env_steps_per_call` over :attr:`span_s`."""
        span = self.span_s
        return self.steps * self.env_steps_per_call / span if span > 0 else float("nan")

    @property
    def per_client_steps_per_s(self) -> float:
        """The median client's own rate (its env steps over its own timed wall time)."""
        per_call = self.env_steps_per_call
        return spread(c.summary.count * per_call / c.wall_s for c in self.clients if c.wall_s > 0).median

    @property
    def p50_us(self) -> float:
        """The median of the clients' p50 round trips."""
        return spread(c.summary.p50_us for c in self.clients).median

    @property
    def p99_us(self) -> float:
        """The worst client's p99 round trip."""
        return spread(c.summary.p99_us for c in self.clients).high

    def as_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "count": self.count,
            "transport": self.transport,
            "payload": self.payload,
            "steps": self.steps,
            "env_steps_per_call": self.env_steps_per_call,
            "env_steps": self.steps * self.env_steps_per_call,
            "span_s": self.span_s,
            "steps_per_s": self.steps_per_s,
            "per_client_steps_per_s": self.per_client_steps_per_s,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "clients": [c.as_dict() for c in self.clients],
        }


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
    env = {**os.environ, **(server_env or {}), **(_PY_BACKEND if transport == "fastenv-shm-py" else {})}
    point = ScalingPoint(axis.name, count, transport, payload, axis.env_steps_per_call(count))
    # start-up and every call are bounded by ``timeout``; the timed loop by max_seconds
    loop_limit = max_seconds if max_seconds is not None else steps * timeout
    with contextlib.ExitStack() as stack:
        connect: list[str] = []
        if transport in FASTENV_TRANSPORTS:  # the others build their envs in the client process
            server = start_fastenv_server(
                transport, payload, args=axis.server_args(count), timeout=timeout, server_env=server_env
            )
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
                local = reference_env(args.payload, args.num_envs)
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
