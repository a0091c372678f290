"""LaunchedServer: the handle on a server started over SSH, and the reader of its output."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

import paramiko

from fastenv.errors import FastEnvTimeout
from fastenv.launch.connection import SSHConnection
from fastenv.launch.events import EXITED, parse_event
from fastenv.launch.forward import PortForwarder

log = logging.getLogger(__name__)

LOG_LINES = 2000  # lines of remote output kept for logs()
_STOP_MARGIN = 10.0  # seconds beyond the grace period to wait for the agent's report
_JOIN_TIMEOUT = 5.0


class RemoteOutput:
    """Reads the agent's channel in a thread: keeps the last lines, records events.

    The channel must always be drained, or the remote agent (and behind it the
    server's output) would stall on a full SSH window.
    """

    def __init__(self, channel: paramiko.Channel, max_lines: int = LOG_LINES) -> None:
        self._channel = channel
        self._lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self.events: dict[str, dict[str, Any]] = {}
        self.eof = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="fastenv-launch-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending = b""
        try:
            while data := self._channel.recv(65536):
                *complete, pending = (pending + data).split(b"\n")
                for raw in complete:
                    self._add(raw.decode("utf-8", "replace").rstrip("\r"))
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            if pending:
                self._add(pending.decode("utf-8", "replace"))
            with self._changed:
                self.eof = True
                self._changed.notify_all()

    def _add(self, line: str) -> None:
        event = parse_event(line)
        with self._changed:
            if event is None:
                self._lines.append(line)
            else:
                self.events[event["event"]] = event
            self._changed.notify_all()

    @property
    def finished(self) -> bool:
        """The server's group is gone (reported) or the channel closed."""
        return self.eof or EXITED in self.events

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``predicate()`` (checked on each new line or event); False after ``timeout``."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def tail(self, lines: int) -> str:
        """The last ``lines`` lines, newline-joined."""
        with self._changed:
            kept = list(self._lines)
        return "\n".join(kept[-lines:]) if lines > 0 else ""

    def exit_status(self, timeout: float) -> int | None:
        """The remote command's exit status, once it arrives (None after ``timeout``)."""
        if self._channel.status_event.wait(timeout):
            return self._channel.exit_status
        return None

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class LaunchedServer:
    """A ``fastenv serve`` running on another host, started by :func:`fastenv.launch.launch`.

    Connect a client to :attr:`address`. The server lives until :meth:`stop`
    (also on leaving a ``with`` block), or until the SSH connection drops: the
    remote agent then ends it, so a crashed launcher leaves nothing running.

    Attributes:
        address: what a client connects to (``tcp://host:port``): the local end
            of the tunnel when tunnelled, else the server's address on the remote host.
        host: the SSH host as given to :func:`~fastenv.launch.launch`.
        remote_pid: the server's pid on the remote host (also its process group id).
        remote_address: the server's own address on the remote host.
        data_port: the server's TCP data-stream port on the remote host (0: none).
        tunnelled: whether the client's traffic goes through the SSH connection.
        route: why it is tunnelled or not.
        log_path: the server's full log on the remote host.
        pid_file: the record used by ``cleanup_old`` on the remote host.
        cleaned_up: pids of earlier servers that ``cleanup_old=True`` stopped.
        forwarder: the :class:`~fastenv.launch.forward.PortForwarder` when tunnelled.
    """

    def __init__(
        self,
        *,
        host: str,
        connection: SSHConnection,
        channel: paramiko.Channel,
        output: RemoteOutput,
        address: str,
        tunnelled: bool,
        route: str,
        forwarder: PortForwarder | None = None,
    ) -> None:
        self._closed = False
        self._connection = connection
        self._channel = channel
        self._output = output
        self.forwarder = forwarder
        self.host = host
        self.address = address
        self.tunnelled = tunnelled
        self.route = route
        started = output.events.get("started", {})
        ready = output.events.get("ready", {})
        cleaned = output.events.get("cleaned", {})
        self.remote_pid = int(started.get("pid", 0))
        self.log_path = str(started.get("log", ""))
        self.pid_file = str(started.get("pidfile", ""))
        self.remote_address = str(ready.get("address", ""))
        self.data_port = int(ready.get("data_port", 0))
        self.cleaned_up = tuple(int(pid) for pid in cleaned.get("stopped", ()))

    def logs(self, lines: int = 50) -> str:
        """The last ``lines`` lines the remote server printed (stdout and stderr interleaved).

        The launcher keeps the last 2000 lines; the whole log is :attr:`log_path` on the remote host.
        """
        return self._output.tail(lines)

    def alive(self) -> bool:
        """Whether the server is running (the remote agent reports its exit at once)."""
        return not self._closed and not self._output.finished

    @property
    def exit_code(self) -> int | None:
        """The server's exit code once it has exited (negative: killed by that signal); else None."""
        code = self._output.events.get(EXITED, {}).get("code")
        return int(code) if code is not None else None

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server exits; return its exit code (None if the SSH connection dropped first).

        Raises :class:`~fastenv.FastEnvTimeout` if it is still running after ``timeout`` seconds.
        """
        if not self._output.wait_for(lambda: self._output.finished, timeout):
            raise FastEnvTimeout(f"the server on {self.host} still runs after {timeout:g}s")
        return self.exit_code

    def stop(self, timeout: float = 10.0) -> int | None:
        """End the server's whole process group; close the tunnel and the SSH connection.

        The remote agent sends SIGTERM to the group, then SIGKILL to what is left
        after ``timeout`` seconds, and reports once every process of the group is
        gone. Returns the server's exit code (None if unknown). Idempotent.
        """
        if self._closed:
            return self.exit_code
        self._closed = True
        try:
            if not self._output.finished:
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    self._channel.sendall(f"stop {timeout:g}\n".encode())
                if not self._output.wait_for(lambda: self._output.finished, timeout + _STOP_MARGIN):
                    log.warning("the agent on %s did not report the server's exit; closing the connection", self.host)
        finally:
            self._release()
        return self.exit_code

    close = stop

    def _release(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
        self._channel.close()
        self._connection.close()
        self._output.join(_JOIN_TIMEOUT)

    def __enter__(self) -> LaunchedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __del__(self) -> None:
        if self.__dict__.get("_closed", True):
            return
        self._closed = True
        warnings.warn(
            f"LaunchedServer on {self.host} ({self.address}) was not stopped; use `with` or call stop()",
            ResourceWarning,
            stacklevel=2,
        )
        with contextlib.suppress(Exception):  # closing the connection makes the remote agent end the server
            self._release()

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited ({self.exit_code})"
        via = "tunnel" if self.tunnelled else "direct"
        return f"<LaunchedServer {self.host} pid {self.remote_pid} at {self.address} ({via}, {state})>"
