"""The control connection as a route for calls (both ends).

Calls travel as CALL frames on the ZeroMQ control connection when a session
has no data plane: a server with authentication (the connection is
CURVE-encrypted; no raw stream is offered), a data stream that cannot be
reached, or a server that offers none. The request id is the call's sequence
number: a call re-sent after a drop keeps its id, and the server answers it
from the session's record (:mod:`fastenv.replay`).
"""

from __future__ import annotations

import time
from typing import Any

from fastenv import protocol
from fastenv.control.dealer import ClientChannel
from fastenv.control.router import ServerSocket
from fastenv.errors import ProtocolVersionError
from fastenv.protocol import Kind, Message
from fastenv.transport.base import CallBody, Reply
from fastenv.wire import error_from_body


def check_version(reply: Message) -> None:
    """Raise :class:`~fastenv.errors.ProtocolVersionError` if ``reply`` speaks another protocol version."""
    if reply.kind is Kind.VERSION_MISMATCH or reply.version != protocol.PROTOCOL_VERSION:
        raise ProtocolVersionError(protocol.PROTOCOL_VERSION, reply.version, protocol.text_of(reply))


def unwrap(reply: Message) -> Any:
    """The body of a control reply; an ERROR reply raises its typed exception."""
    check_version(reply)
    body = reply.body()
    if reply.kind is Kind.ERROR:
        raise error_from_body(body)
    return body


def as_reply(reply: Message) -> Reply:
    """A control reply as ``(True, value)`` or ``(False, error body)``."""
    check_version(reply)
    return reply.kind is not Kind.ERROR, reply.body()


class ControlTransport:
    """The client's end: calls as CALL requests on the control channel."""

    name = "control"
    resumable = True

    def __init__(self, channel: ClientChannel) -> None:
        self._channel = channel
        self._unanswered: int | None = None  # request id of the call sent and not yet answered

    def exchange(self, body: CallBody, deadline: float | None, what: str) -> Reply:
        """Send ``body`` and wait for its reply."""
        return self.receive(self.send(body, deadline, what), deadline, what)

    def send(self, body: CallBody, deadline: float | None, what: str) -> int:
        """Send ``body``; returns its request id."""
        self._unanswered = None
        self._unanswered = self._channel.send(Kind.CALL, body)
        return self._unanswered

    def receive(self, ticket: int, deadline: float | None, what: str) -> Reply:
        """Wait for the reply to request ``ticket``."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        reply = as_reply(self._channel.wait_reply(ticket, timeout, what))
        if self._unanswered == ticket:
            self._unanswered = None
        return reply

    def reconnect(self, deadline: float | None) -> None:
        """Nothing to re-open: the resumed control connection is the route."""

    def resend(self, body: CallBody, deadline: float | None, what: str) -> int:
        """Send the unanswered call again under its request id (a fresh id if it never went out)."""
        self._unanswered = self._channel.send(Kind.CALL, body, request_id=self._unanswered)
        return self._unanswered

    def close(self) -> None:
        """Nothing to release: the channel belongs to the session."""


class ControlRoute:
    """The server's end: a session whose calls (if any) travel on its control connection.

    Such a session lives as long as its client's connection: gone for one
    heartbeat interval without a RESUME, the client is taken for gone. The
    calls themselves are answered by the server's loop.
    """

    name = "control"

    def __init__(self, socket: ServerSocket, identity: Any, interval: float) -> None:
        self._socket = socket
        self._identity = identity  # () -> the session's current connection identity
        self._interval = interval
        self._since: float | None = None

    def start(self) -> None:
        """Nothing runs apart from the server's loop."""

    def stop(self, timeout: float = 5.0) -> None:
        """Nothing to release."""

    def peer_gone(self, now: float) -> str | None:
        """Whether the connection has been gone for a heartbeat interval."""
        if self._socket.probe(self._identity()):
            self._since = None
        elif self._since is None:
            self._since = now
        elif now - self._since >= self._interval:
            return "its connection dropped and was not resumed"
        return None

    def resumed(self) -> None:
        """The client is back on a connection: probing starts afresh."""
        self._since = None
