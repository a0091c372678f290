"""Baseline transports that fastenv is measured against (for comparison only).

Each baseline serves the same example env (see :mod:`fastenv.bench.workloads`)
from a separate server process (``python -m fastenv.bench.baselines NAME
PAYLOAD``; a subprocess rather than ``multiprocessing`` so that callers need no
``if __name__ == "__main__"`` guard). The parent waits for the child's ready
line (its port or other token), never for a fixed time, and stops it cleanly:
the client closes its connection (or sends a close request) and closes the
child's stdin, the child exits, and only a child that does not exit within the
timeout is terminated, then killed.

A baseline object is the client: ``reset(seed=None)``, ``step(action)`` and
``close()``, returning exactly what the remote env returned (after a pickle
round trip). Use it as a context manager::

    with SeedPickle("small") as env:
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(action)

Baselines, by name (:data:`BASELINES`):

- ``seed-pickle`` (:class:`SeedPickle`): the seed wrapper's protocol.
- ``seed-pickle-nodelay`` (:class:`SeedPickleNoDelay`): the same with Nagle off.
- ``zmq-pickle`` (:class:`ZmqPickle`): pyzmq REQ/REP with whole-message pickle.
- ``mp-pipe`` (:class:`MpPipe`): a ``multiprocessing.Pipe`` (``Connection.send``
  / ``recv``, which pickle) to a server process stepping the env.

Besides :data:`BASELINES`, :class:`GymAsync` (``gym-async``) wraps Gymnasium's
``AsyncVectorEnv(shared_memory=True)`` with one env, and
:mod:`fastenv.bench.floors` holds the physical floors (shared-memory ping-pong,
memcpy).

None of them transports spaces, ``spec``, ``metadata``, ``render()`` or other
env methods, has heartbeats or reconnection, or protects against a malicious
peer (pickle executes code): they exist to be timed.
"""

from __future__ import annotations

import os
import pickle
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, ClassVar

import numpy as np
import zmq

from fastenv.bench import malloc
from fastenv.bench.workloads import Workload, get_workload
from fastenv.errors import FastEnvTimeout, make_remote_env_error
from fastenv.server_process import ServerStartError

__all__ = [
    "BASELINES",
    "Baseline",
    "EnvFactory",
    "GymAsync",
    "MpPipe",
    "SeedPickle",
    "SeedPickleNoDelay",
    "ZmqPickle",
]

_HEADER = struct.Struct(">I")
_SEED_PIECE = 4096
_PARENT_CHECK_S = 0.5  # how often an idle child checks whether its parent went away
READY_PREFIX = "fastenv-bench: ready "


# --------------------------------------------------------------------------
# The seed protocol: 4-byte big-endian length, then pickle bytes.
# --------------------------------------------------------------------------


def _seed_send(sock: socket.socket, message: Any, *, one_write: bool) -> None:
    """Send one framed message: two ``sendall`` calls (seed) or one (``one_write``)."""
    body = pickle.dumps(message)
    header = _HEADER.pack(len(body))
    if one_write:
        sock.sendall(header + body)
    else:
        sock.sendall(header)
        sock.sendall(body)


def _seed_recv_exact(sock: socket.socket, size: int) -> bytes:
    """The seed's receive loop: append pieces of at most 4 KiB to a growing bytes object."""
    data = b""
    while len(data) < size:
        piece = sock.recv(min(_SEED_PIECE, size - len(data)))
        if not piece:
            raise ConnectionResetError("peer closed the connection mid-message" if data else "peer closed")
        data += piece
    return data


def _seed_recv(sock: socket.socket) -> Any:
    """Receive one framed message."""
    (size,) = _HEADER.unpack(_seed_recv_exact(sock, _HEADER.size))
    return pickle.loads(_seed_recv_exact(sock, size))


def _dispatch(env: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Apply one request to the env and build the seed-style response dict."""
    try:
        if request["type"] == "step":
            data = env.step(request["action"])
        elif request["type"] == "reset":
            data = env.reset(seed=request.get("seed"))
        else:
            raise ValueError(f"unknown request type {request['type']!r}")
    except Exception as exc:  # the env's error goes back to the client as plain text
        return {"type": "error", "data": (type(exc).__name__, str(exc), traceback.format_exc())}
    return {"type": "response", "data": data}


def _unwrap(response: dict[str, Any]) -> Any:
    """The ``data`` of a response; an error response raises :class:`RemoteEnvError`."""
    if response.get("type") != "response":
        raise make_remote_env_error(*response["data"])
    return response["data"]


# --------------------------------------------------------------------------
# Server processes (children): ``python -m fastenv.bench.baselines NAME PAYLOAD``.
# The child prints ``ready PORT`` on stdout; EOF on its stdin means the parent
# is done (or gone), which an idle child notices within _PARENT_CHECK_S.
# --------------------------------------------------------------------------


def _parent_gone() -> bool:
    """True once stdin (a pipe from the parent, never written to) reports EOF."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


def _announce(token: object) -> None:
    """Print the ready line with ``token`` (a port, or anything the client needs)."""
    sys.stdout.write(f"{READY_PREFIX}{token}\n")
    sys.stdout.flush()


def _accept_one_client() -> socket.socket | None:
    """Listen on a free loopback port, announce it, and accept one client (None if the parent died first)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(_PARENT_CHECK_S)
        _announce(listener.getsockname()[1])
        while True:
            try:
                return listener.accept()[0]
            except TimeoutError:
                if _parent_gone():
                    return None


def _serve_seed(payload: str, nodelay: bool) -> None:
    """Serve one client over the seed protocol; return on its EOF or the parent's."""
    env = get_workload(payload).make_env()
    conn = _accept_one_client()
    if conn is not None:
        with conn:
            conn.settimeout(None)
            if nodelay:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                try:
                    request = _seed_recv(conn)
                except (ConnectionError, OSError):
                    break
                _seed_send(conn, _dispatch(env, request), one_write=nodelay)
    env.close()


def _serve_zmq(payload: str) -> None:
    """A pyzmq REP server with whole-message pickle; returns on ``close`` or the parent's EOF."""
    env = get_workload(payload).make_env()
    context = zmq.Context()
    try:
        with context.socket(zmq.REP) as server:
            server.linger = 0
            server.rcvtimeo = int(_PARENT_CHECK_S * 1000)
            _announce(server.bind_to_random_port("tcp://127.0.0.1"))
            while True:
                try:
                    request = pickle.loads(server.recv())
                except zmq.Again:
                    if _parent_gone():
                        break
                    continue
                if request.get("type") == "close":
                    server.send(pickle.dumps({"type": "response", "data": None}))
                    break
                server.send(pickle.dumps(_dispatch(env, request)))
    finally:
        context.term()
    env.close()


def _serve_pipe(payload: str, fd: int) -> None:
    """Serve over the inherited ``multiprocessing.Pipe`` end ``fd``; return on its EOF or the parent's."""
    env = get_workload(payload).make_env()
    with Connection(fd) as conn:
        _announce("pipe")
        while True:
            if not conn.poll(_PARENT_CHECK_S):
                if _parent_gone():
                    break
                continue
            try:
                request = conn.recv()
            except (EOFError, OSError):
                break
            conn.send(_dispatch(env, request))
    env.close()


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m fastenv.bench.baselines NAME PAYLOAD [ARG]``."""
    name, payload, *rest = sys.argv[1:] if argv is None else argv
    if name == "zmq-pickle":
        _serve_zmq(payload)
    elif name == "mp-pipe":
        _serve_pipe(payload, int(rest[0]))
    elif name in ("seed-pickle", "seed-pickle-nodelay"):
        _serve_seed(payload, nodelay=name == "seed-pickle-nodelay")
    else:
        raise SystemExit(f"unknown baseline {name!r}")
    return 0


# --------------------------------------------------------------------------
# Clients (parent side).
# --------------------------------------------------------------------------


class _ClosedOnExit:
    """``with`` support shared by the bench clients: ``close()`` on exit, ResourceWarning if leaked."""

    _closed = True  # until a subclass has something to close

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed baseline {self!r}", ResourceWarning, stacklevel=2, source=self)
            self.close()


class Baseline(_ClosedOnExit):
    """Base class: starts the server process, waits for its port, and stops it on :meth:`close`.

    Args:
        payload: a payload name from :data:`fastenv.bench.workloads.PAYLOADS`.
        timeout: seconds allowed for the server to start, for each request and
            for the server to exit on close.
        server_env: environment variables added for the server process (for
            example :func:`fastenv.bench.malloc.environment`).
    """

    name: ClassVar[str] = ""
    #: The module whose ``main`` is the server (``python -m MODULE NAME PAYLOAD [ARG]``).
    server_module: ClassVar[str] = "fastenv.bench.baselines"

    def __init__(
        self, payload: str = "small", *, timeout: float = 30.0, server_env: Mapping[str, str] | None = None
    ) -> None:
        get_workload(payload)  # fail fast on an unknown payload
        self.payload = payload
        self.timeout = float(timeout)
        self.server_env = dict(server_env or {})
        self._closed = True  # until fully started: nothing for __del__ to warn about
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        extra_args, pass_fds = self._prepare()
        try:
            token = self._start_server(extra_args, pass_fds)
        except BaseException:
            self._disconnect()
            raise
        try:
            self._connect(token)
        except BaseException:
            self._disconnect()
            self._stop_server()
            raise
        self._closed = False

    # -- subclass hooks -------------------------------------------------
    def _prepare(self) -> tuple[list[str], tuple[int, ...]]:
        """Before the server starts: extra arguments for it and file descriptors it inherits."""
        return [], ()

    def _connect(self, token: str) -> None:
        """Connect to the server, given the token of its ready line."""
        raise NotImplementedError

    def _request(self, message: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    # -- public API -----------------------------------------------------
    def reset(self, seed: int | None = None) -> Any:
        """``env.reset(seed=seed)`` on the server (the seed is an addition to the seed protocol)."""
        return self._request({"type": "reset", "seed": seed})

    def step(self, action: Any) -> Any:
        """``env.step(action)`` on the server."""
        return self._request({"type": "step", "action": action})

    def close(self) -> None:
        """Close the connection and stop the server process (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._disconnect()
        finally:
            self._stop_server()

    @property
    def server_pid(self) -> int | None:
        """The server process's id (``None`` once stopped)."""
        return self._process.pid if self._process is not None else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} payload={self.payload!r}>"

    # -- server process -------------------------------------------------
    def _start_server(self, extra_args: list[str], pass_fds: tuple[int, ...]) -> str:
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, "-m", self.server_module, self.name, self.payload, *extra_args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            pass_fds=pass_fds,
            env={**os.environ, **self.server_env},
        )
        try:
            return self._wait_ready()
        except BaseException:
            self._stop_server()
            raise

    def _wait_ready(self) -> str:
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FastEnvTimeout(f"{self.name} server did not become ready within {self.timeout:.0f}s")
            if select.select([process.stdout], [], [], remaining)[0]:
                break
        line = process.stdout.readline().decode(errors="replace")
        if line.startswith(READY_PREFIX):
            return line[len(READY_PREFIX) :].strip()
        code = process.wait(self.timeout)
        self._stderr.seek(0)
        detail = self._stderr.read().decode(errors="replace")
        raise ServerStartError(
            f"{self.name} server exited with code {code} before it was ready:\n{line}{detail}"
        )

    def _stop_server(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()  # EOF tells an idle server to exit
            try:
                process.wait(self.timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(self.timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(self.timeout)
            process.stdout.close()
        stderr, self._stderr = self._stderr, None
        if stderr is not None:
            stderr.close()


class SeedPickle(Baseline):
    """The seed wrapper's protocol, reproduced exactly (on 127.0.0.1).

    Transports: one pickled dict per message (``{"type": "step", "action": a}``,
    ``{"type": "reset"}`` plus a ``"seed"`` key added here so runs are
    reproducible; responses ``{"type": "response", "data": result}``), framed
    by a 4-byte big-endian length sent by a *separate* ``sendall`` before the
    body, TCP_NODELAY left off (Nagle + delayed ACK apply), and received by a
    loop that appends pieces of at most 4 KiB to a growing ``bytes``.

    Does not transport: spaces, ``spec``, ``metadata``, ``render``, other
    methods or typed errors (an env error comes back as type name, message and
    traceback text). One client per server.
    """

    name = "seed-pickle"
    nodelay: ClassVar[bool] = False

    def _connect(self, token: str) -> None:
        self._sock = socket.create_connection(("127.0.0.1", int(token)), timeout=self.timeout)
        self._sock.settimeout(self.timeout)
        if self.nodelay:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _request(self, message: dict[str, Any]) -> Any:
        _seed_send(self._sock, message, one_write=self.nodelay)
        return _unwrap(_seed_recv(self._sock))

    def _disconnect(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()


class SeedPickleNoDelay(SeedPickle):
    """:class:`SeedPickle` with TCP_NODELAY on both ends and one ``sendall`` of header + body.

    Same messages, same pickle, same 4 KiB append receive loop: isolates what
    Nagle and delayed ACK cost the seed. Transports the same things.
    """

    name = "seed-pickle-nodelay"
    nodelay = True


class ZmqPickle(Baseline):
    """pyzmq REQ/REP over ``tcp://127.0.0.1``, each message pickled whole and sent in-band.

    Transports the same request/response dicts as :class:`SeedPickle`, one
    ZeroMQ frame per message (arrays are inside the pickle, copied into the
    frame). Does not transport spaces, ``spec``, ``metadata``, ``render`` or
    other methods; no heartbeats or retries (a timed-out REQ socket is unusable).
    """

    name = "zmq-pickle"

    def _connect(self, token: str) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REQ)
        self._socket.linger = 0
        self._socket.rcvtimeo = self._socket.sndtimeo = int(self.timeout * 1000)
        self._socket.connect(f"tcp://127.0.0.1:{int(token)}")

    def _request(self, message: dict[str, Any]) -> Any:
        try:
            self._socket.send(pickle.dumps(message))
            return _unwrap(pickle.loads(self._socket.recv()))
        except zmq.Again:
            raise FastEnvTimeout(f"{self.name}: no reply within {self.timeout:.0f}s") from None

    def _disconnect(self) -> None:
        sock = getattr(self, "_socket", None)
        if sock is None:
            return
        try:
            if self._process is not None and self._process.poll() is None:
                try:
                    self._request({"type": "close"})
                except (FastEnvTimeout, zmq.ZMQError):
                    pass  # the server is stopped by _stop_server anyway
        finally:
            sock.close()
            self._context.term()


class MpPipe(Baseline):
    """A ``multiprocessing.Pipe`` to a server process that steps the env.

    Transports the same request/response dicts as :class:`SeedPickle` with
    ``Connection.send`` / ``recv`` (pickle, a 4-byte length header, one
    Unix socketpair). The server is a plain subprocess that inherits its end
    of the pipe by file descriptor, so callers need no ``__main__`` guard. The
    client polls with the timeout before every ``recv``. Does not transport
    spaces, ``spec``, ``metadata``, ``render`` or other methods.
    """

    name = "mp-pipe"

    def _prepare(self) -> tuple[list[str], tuple[int, ...]]:
        import multiprocessing

        self._conn, self._child_conn = multiprocessing.Pipe(duplex=True)
        fd = self._child_conn.fileno()
        return [str(fd)], (fd,)

    def _connect(self, token: str) -> None:
        self._child_conn.close()  # the server holds its own copy now

    def _request(self, message: dict[str, Any]) -> Any:
        self._conn.send(message)
        if not self._conn.poll(self.timeout):
            raise FastEnvTimeout(f"{self.name}: no reply within {self.timeout:.0f}s")
        return _unwrap(self._conn.recv())

    def _disconnect(self) -> None:
        for attr in ("_conn", "_child_conn"):
            conn = getattr(self, attr, None)
            if conn is not None:
                conn.close()  # EOF tells the server to exit


BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (SeedPickle, SeedPickleNoDelay, ZmqPickle, MpPipe)
}


# --------------------------------------------------------------------------
# Gymnasium's AsyncVectorEnv (not a Baseline subclass: Gymnasium starts its own worker).
# --------------------------------------------------------------------------


def _unbatch(batched: Any, like: Any) -> Any:
    """Element 0 of a batched observation, laid out like the single observation ``like``."""
    if isinstance(like, dict) and isinstance(batched, dict):
        if set(like) != set(batched):
            return batched  # a different structure: let the comparison fail
        return {k: _unbatch(batched[k], like[k]) for k in like}  # Dict spaces sort their keys
    if isinstance(like, tuple) and isinstance(batched, tuple):
        return tuple(_unbatch(b, x) for b, x in zip(batched, like))
    return batched[0]


@dataclass(frozen=True)
class EnvFactory:
    """Picklable env factory for Gymnasium's worker: the allocator setting, then the workload's env."""

    workload: Workload
    environ: tuple[tuple[str, str], ...] = ()

    def __call__(self) -> Any:
        malloc.apply(dict(self.environ))
        return self.workload.make_env()


class GymAsync(_ClosedOnExit):
    """``gymnasium.vector.AsyncVectorEnv([make_env], shared_memory=True)`` with one env.

    Gymnasium's own process transport: one worker process (``spawn`` context,
    so it works from any thread) builds the env with the workload's factory (after
    applying ``server_env``'s ``MALLOC_*_`` settings with ``mallopt``, in
    whichever process builds it);
    actions go to it pickled through a ``multiprocessing.Pipe``, observations
    come back through Gymnasium's shared-memory buffers (then copied out, the
    default ``copy=True``), rewards, flags and infos pickled through the pipe.
    :meth:`step` is ``step_async`` + ``step_wait`` of a batch of one, and it
    returns Gymnasium's batched result unchanged; :meth:`comparable` unbatches
    the observation for the check (only the observation is checked: rewards,
    flags and infos come back as batched arrays). Spaces are Gymnasium's;
    ``render`` and other methods are not transported like a single env's.
    The calling script needs the usual ``if __name__ == "__main__"`` guard for
    ``spawn``. Episodes auto-reset (Gymnasium's ``NEXT_STEP`` mode); the
    workloads never truncate, so this never happens during a run.
    """

    name = "gym-async"

    def __init__(
        self, payload: str = "small", *, timeout: float = 30.0, server_env: Mapping[str, str] | None = None
    ) -> None:
        workload = get_workload(payload)
        self.payload = payload
        self.timeout = float(timeout)
        self._closed = True
        try:
            from gymnasium.vector import AsyncVectorEnv
        except ImportError as exc:
            raise ImportError(f"gym-async needs gymnasium: {exc}") from exc
        factory = EnvFactory(workload, tuple(sorted((server_env or {}).items())))
        self._env = AsyncVectorEnv([factory], shared_memory=True, context="spawn", daemon=True)
        self._closed = False

    def _wait(self, result: Callable[[float], Any]) -> Any:
        import multiprocessing

        try:
            return result(self.timeout)
        except multiprocessing.TimeoutError:
            raise FastEnvTimeout(f"{self.name}: no reply within {self.timeout:.0f}s") from None

    def reset(self, seed: int | None = None) -> Any:
        """``reset(seed=seed)`` of the vector env: ``(batched observation, infos)``."""
        self._env.reset_async(seed=seed)
        return self._wait(lambda timeout: self._env.reset_wait(timeout=timeout))

    def step(self, action: Any) -> Any:
        """One vector step with the batch ``action[None]``; Gymnasium's batched 5-tuple."""
        self._env.step_async(np.asarray(action)[None])
        return self._wait(lambda timeout: self._env.step_wait(timeout=timeout))

    @property
    def server_pid(self) -> int | None:
        """The Gymnasium worker process's id (``None`` when it cannot be reached)."""
        processes = getattr(self._env, "processes", None) or []
        return processes[0].pid if processes and not self._closed else None

    @staticmethod
    def comparable(result: Any, expected: Any) -> tuple[Any, Any]:
        """``(observation of env 0, the local env's observation)`` from a reset or step result."""
        return _unbatch(result[0], expected[0]), expected[0]

    def close(self) -> None:
        """Stop the worker (terminated if it does not exit within the timeout); safe twice."""
        if self._closed:
            return
        self._closed = True
        self._env.close(timeout=self.timeout)

    def __repr__(self) -> str:
        return f"<GymAsync payload={self.payload!r}>"


if __name__ == "__main__":
    sys.exit(main())
