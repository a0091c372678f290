"""A session's TCP data stream as the server holds it, across reconnections.

The client may lose its stream and connect a new one (after it resumed the
session on the control connection); each connection gets a
:class:`~fastenv.tcp.worker.TcpServerWorker`, and all of them share the
session's :class:`~fastenv.replay.ReplyRecord`, so a call re-sent on the new
stream is answered once. A stream that dropped and was not replaced within
one heartbeat interval means the client is gone.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from fastenv import codec
from fastenv.replay import ReplyRecord
from fastenv.tcp.worker import TcpServerWorker
from fastenv.transport.base import Executor

if TYPE_CHECKING:
    from fastenv.session.envthread import EnvThread

HANDOVER_S = 0.1  # how long a new stream waits for the env thread to leave the one it replaces


class TcpServerStream:
    """The server's end of one session's data stream (the route once a stream was adopted).

    ``host``: the thread the session's env is called on, if it has one; a
    stream it takes is served there with no hop per call (see
    :meth:`~fastenv.session.envthread.EnvThread.host`).
    """

    name = "tcp"

    def __init__(
        self,
        execute: Executor,
        *,
        limits: codec.Limits,
        max_message_bytes: int,
        compression: str | None,
        interval: float,
        host: EnvThread | None = None,
    ) -> None:
        self._execute = execute
        self._host = host  # the env's own thread: it serves the stream itself when it is free
        self._options: dict[str, Any] = {
            "limits": limits,
            "max_message_bytes": max_message_bytes,
            "compression": compression,
        }
        self._interval = interval
        self._record = ReplyRecord()
        self._worker: TcpServerWorker | None = None
        self._since: float | None = None  # when the current stream dropped
        self._lock = threading.Lock()
        self._stopped = False

    def adopt(self, sock: socket.socket) -> None:
        """Serve the session's calls on ``sock`` from now on (a reconnection replaces the stream)."""
        with self._lock:
            if self._stopped:
                sock.close()
                return
            previous = self._worker
            worker = TcpServerWorker(
                sock,
                self._execute,
                record=self._record,
                on_exit=lambda reason: self._ended(worker, reason),
                **self._options,
            )
            self._worker = worker
            self._since = None
        if previous is not None:
            previous.stop(timeout=0)
        # The env's thread may still be leaving the stream this one replaces: give it a moment to take this one.
        worker.start(host=self._host, wait=HANDOVER_S if previous is not None else 0.0)

    def _ended(self, worker: TcpServerWorker, reason: BaseException | None) -> None:
        """A worker ended (on its thread): the resume window starts unless it was replaced or stopped."""
        if reason is not None and self._worker is worker and not self._stopped:
            self._since = time.monotonic()

    def start(self) -> None:
        """Workers start as their streams are adopted."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the current worker and close its connection."""
        with self._lock:
            self._stopped = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(timeout)

    def peer_gone(self, now: float) -> str | None:
        """Whether the stream has been down for a heartbeat interval without a new one."""
        worker = self._worker
        if self._since is None and (worker is None or not worker.is_alive()):
            self._since = now  # down without an exit reason (a RESUME without its stream): the window starts
        elif self._since is not None and now - self._since >= self._interval:
            return "its data stream dropped and was not resumed"
        return None

    def resumed(self) -> None:
        """The client resumed on the control connection: it gets a new window to reconnect its stream."""
        self._since = None
