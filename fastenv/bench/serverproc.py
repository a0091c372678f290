"""A bench server process, both ends: what the child runs and what the parent holds.

The child side (used by the baselines' and the floors' servers): announce a
ready line with a token (a port, or anything the client needs), notice that the
parent went away (EOF on stdin), accept one client on a free loopback port, and
apply one seed-style request dict to the env. The parent side:
:class:`Baseline` starts ``python -m MODULE NAME PAYLOAD [ARG]``, waits for its
ready line (never for a fixed time), and stops it cleanly on :meth:`~Baseline.close`:
the client disconnects and closes the child's stdin, the child exits, and only a
child that does not exit within the timeout is terminated, then killed.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

from fastenv.bench.workloads import get_workload
from fastenv.errors import FastEnvTimeout, make_remote_env_error
from fastenv.server_process import ServerStartError

__all__ = [
    "PARENT_CHECK_S",
    "READY_PREFIX",
    "Baseline",
    "ClosedOnExit",
    "accept_one_client",
    "announce",
    "dispatch",
    "parent_gone",
    "unwrap",
]

PARENT_CHECK_S = 0.5  # how often an idle child checks whether its parent went away
READY_PREFIX = "fastenv-bench: ready "


def dispatch(env: Any, request: dict[str, Any]) -> dict[str, Any]:
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


def unwrap(response: dict[str, Any]) -> Any:
    """The ``data`` of a response; an error response raises :class:`RemoteEnvError`."""
    if response.get("type") != "response":
        raise make_remote_env_error(*response["data"])
    return response["data"]


# --------------------------------------------------------------------------
# Server processes (children): ``python -m MODULE NAME PAYLOAD [ARG]``.
# The child prints ``ready PORT`` on stdout; EOF on its stdin means the parent
# is done (or gone), which an idle child notices within PARENT_CHECK_S.
# --------------------------------------------------------------------------


def parent_gone() -> bool:
    """True once stdin (a pipe from the parent, never written to) reports EOF."""
    return bool(select.select([sys.stdin], [], [], 0)[0])


def announce(token: object) -> None:
    """Print the ready line with ``token`` (a port, or anything the client needs)."""
    sys.stdout.write(f"{READY_PREFIX}{token}\n")
    sys.stdout.flush()


def accept_one_client() -> socket.socket | None:
    """Listen on a free loopback port, announce it, and accept one client (None if the parent died first)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(PARENT_CHECK_S)
        announce(listener.getsockname()[1])
        while True:
            try:
                return listener.accept()[0]
            except TimeoutError:
                if parent_gone():
                    return None


# --------------------------------------------------------------------------
# Clients (parent side).
# --------------------------------------------------------------------------


class ClosedOnExit:
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


class Baseline(ClosedOnExit):
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
