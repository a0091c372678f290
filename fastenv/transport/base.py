"""The transport interface: what a session needs from the route its calls take.

A *client transport* carries one call at a time and its reply: the body
``(name, args, kwargs)`` goes out, ``(True, value)`` or ``(False, error
body)`` comes back (an error body is :func:`fastenv.wire.error_body`'s dict;
the caller turns it into an exception). What a transport returns is the
caller's: it never changes afterwards unless the caller changes it. Every wait ends at an absolute
``deadline`` on the monotonic clock (None: no limit) with
:class:`~fastenv.errors.FastEnvTimeout`; a broken connection raises
:class:`~fastenv.errors.ConnectionLost`. After a drop the session is resumed
on the control connection, then the transport re-opens what broke
(:meth:`ClientTransport.reconnect`) and sends the unanswered call again under
its original sequence number (:meth:`ClientTransport.resend`), so the server
answers it from its record instead of running it twice
(:mod:`fastenv.replay`).

A *server transport* runs a session's calls through the executor it was
given (on a worker thread of its own, or on the server's loop for the control
connection) and tells the server's liveness check whether its client is
still there.

Implementations: :class:`fastenv.shm.client.ShmClientPlane` /
:class:`fastenv.shm.worker.ShmServerWorker`,
:class:`fastenv.tcp.client.TcpClientPlane` /
:class:`fastenv.tcp.session.TcpServerStream`, and
:class:`fastenv.transport.control.ControlTransport` /
:class:`fastenv.transport.control.ControlRoute`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

CallBody = tuple[str, tuple, dict]
Reply = tuple[bool, Any]
# Runs one call on the session's env: (True, value) or (False, error body).
Executor = Callable[[str, tuple, dict], Reply]


class ClientTransport(Protocol):
    """The client's end of one route."""

    name: str  # "shm", "tcp" or "control"
    resumable: bool  # False: a drop means the server process is gone (shared memory never drops)

    def exchange(self, body: CallBody, deadline: float | None, what: str) -> Reply:
        """Send ``body`` and wait for its reply."""

    def send(self, body: CallBody, deadline: float | None, what: str) -> Any:
        """Send ``body`` without waiting; returns the ticket :meth:`receive` takes."""

    def receive(self, ticket: Any, deadline: float | None, what: str) -> Reply:
        """Wait for the reply to the call ``ticket`` names."""

    def reconnect(self, deadline: float | None) -> None:
        """After the session was resumed: re-open what the drop broke (nothing, on some routes)."""

    def resend(self, body: CallBody, deadline: float | None, what: str) -> Any:
        """Send the unanswered call ``body`` again under its sequence number; returns its ticket."""

    def close(self) -> None:
        """Release the route's resources (idempotent)."""


class ServerTransport(Protocol):
    """The server's end of one session's route."""

    name: str

    def start(self) -> None:
        """Begin serving the session's calls."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and release what the route holds (mappings, sockets) at once."""

    def peer_gone(self, now: float) -> str | None:
        """Why the client is gone for good (the session should end), or None while it may still be there."""

    def resumed(self) -> None:
        """The client resumed its session on the control connection: its resume window starts again."""
