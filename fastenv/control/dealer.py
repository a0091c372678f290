"""Client side of the control channel (ZeroMQ DEALER).

With ``auth`` the DEALER is a CURVE client. A refused handshake is not an
error ZeroMQ reports to the sender (it just reconnects and tries again), so the
socket monitor watches the handshake events and turns them into a typed
:class:`~fastenv.errors.AuthenticationError` at once:

- ``HANDSHAKE_FAILED_AUTH``: the server's ZAP handler refused this client's key;
- ``HANDSHAKE_FAILED_PROTOCOL`` (mechanism mismatch): one side uses CURVE and
  the other does not;
- handshakes the server hangs up on without a word: the client then reads the
  server's ZMTP greeting (:func:`~fastenv.control.greeting.peer_mechanism`):
  a CURVE server could not decrypt our hello, so it does not hold the secret
  key of the server key we pinned; a NULL server does not use authentication.
  A connection cut on the way fails the same silent way, so the diagnosis is
  raised only when the handshake after that probe fails too, and never once a
  handshake with this server key has succeeded.
"""

from __future__ import annotations

import itertools
import os
import time
import warnings
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from fastenv import protocol
from fastenv.control.auth import AuthConfig
from fastenv.control.greeting import peer_mechanism
from fastenv.errors import (
    AuthenticationError,
    AuthenticationRequired,
    ClientClosedError,
    ClientKeyRefused,
    ConnectionLost,
    FastEnvTimeout,
    FrameTooLarge,
    ServerKeyMismatch,
    translate_zmq_errors,
)
from fastenv.protocol import Kind, Message

# ZMTP heartbeats (sent by libzmq's own thread, so they run while the client is idle):
# a peer that answers nothing for two intervals is dropped, and the drop is reported
# as ConnectionLost by the next call (or check_alive) at once.
HEARTBEAT_INTERVAL_S = 1.0


def heartbeat_options(interval: float) -> dict[int, int]:
    """Socket options for ZMTP heartbeats every ``interval`` seconds, timing out after two."""
    interval_ms = max(1, int(interval * 1000))
    return {zmq.HEARTBEAT_IVL: interval_ms, zmq.HEARTBEAT_TIMEOUT: 2 * interval_ms, zmq.HEARTBEAT_TTL: 2 * interval_ms}
_MONITORED_EVENTS = (
    zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
# Handshakes the server ended without saying why before the client asks it which
# mechanism it speaks (one can be a race with a mechanism-mismatch report; two are not).
SILENT_HANDSHAKE_FAILURES = 2


class ClientChannel:
    """A DEALER connected to one server, with request ids and bounded waits.

    ``request()`` sends one message and waits for the reply with the same
    request id; replies to earlier, timed-out requests are dropped. If the
    connection drops while a request is pending, :class:`ConnectionLost` is
    raised at once.

    Args:
        endpoint: the server's ``tcp://host:port``.
        heartbeat_interval: seconds between ZMTP heartbeats.
        auth: CURVE keys (a client :class:`~fastenv.control.auth.AuthConfig`):
            the connection is encrypted, and a failed authentication raises
            an :class:`~fastenv.errors.AuthenticationError` subclass saying which.

    Attributes:
        max_message_bytes: the largest frame the server accepts (learned in
            the handshake); a larger one raises
            :class:`~fastenv.errors.FrameTooLarge` here instead of being sent.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        auth: AuthConfig | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._closed = False
        self.auth = auth
        self.max_message_bytes: int | None = None
        self._auth_failure: tuple[type[AuthenticationError], str] | None = None
        self._silent_failures = 0
        self._ever_connected = False  # a handshake with this server key succeeded once
        self._suspected: tuple[type[AuthenticationError], str] | None = None  # a diagnosis awaiting one more failure
        self.routing_id = os.urandom(16)
        with translate_zmq_errors(endpoint):
            self._socket = self._context.socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
            if auth is not None:
                auth.configure_client(self._socket)
            self._socket.setsockopt(zmq.ROUTING_ID, self.routing_id)
            self._socket.setsockopt(zmq.RECONNECT_IVL, 50)
            self._socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            for option, value in heartbeat_options(heartbeat_interval).items():
                self._socket.setsockopt(option, value)
            self._monitor = self._socket.get_monitor_socket(_MONITORED_EVENTS)
            self._socket.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.connected = False
        self.refused = False
        self.retries = 0  # reconnection attempts since the last successful connection
        self._lost = False
        self.last_request_id = 0

    def request(
        self, kind: Kind, value: Any, timeout: float | None, what: str = "request", *, request_id: int | None = None
    ) -> Message:
        """Send ``value`` as a ``kind`` message and return the matching reply.

        ``request_id`` re-sends an earlier request under its own id (after a
        dropped connection; the server answers a repeated call from its record).
        """
        request_id = self.send(kind, value, request_id=request_id)
        return self._wait_reply(request_id, timeout, what)

    def send(self, kind: Kind, value: Any, *, request_id: int | None = None) -> int:
        """Send one request without waiting; returns its id (see :meth:`wait_reply`)."""
        if self._closed:
            raise ClientClosedError(f"the connection to {self.endpoint} is closed")
        if request_id is None:
            request_id = next(self._ids)
        self.last_request_id = request_id
        frames = protocol.pack(kind, request_id, value)
        if self.max_message_bytes is not None:
            self._check_size(frames)
        self._lost = False
        with translate_zmq_errors(self.endpoint):
            self._socket.send_multipart(frames, copy=False)
        return request_id

    def _check_size(self, frames: list[Any]) -> None:
        limit = self.max_message_bytes
        assert limit is not None
        for frame in frames:
            size = len(frame) if type(frame) is bytes else memoryview(frame).nbytes
            if size > limit:
                raise FrameTooLarge(
                    f"a frame of {size} bytes exceeds the server's limit of {limit} (max_message_bytes): not sent"
                )

    def wait_reply(self, request_id: int, timeout: float | None, what: str = "request") -> Message:
        """Wait for the reply to request ``request_id`` (sent with :meth:`send`)."""
        if self._closed:
            raise ClientClosedError(f"the connection to {self.endpoint} is closed")
        return self._wait_reply(request_id, timeout, what)

    def _wait_reply(self, request_id: int, timeout: float | None, what: str) -> Message:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            with translate_zmq_errors(self.endpoint):
                events = dict(self._poller.poll(remaining_ms))
            if self._monitor in events:
                self._drain_monitor()
            self._raise_auth_failure()
            if self._monitor in events and self._lost:
                raise ConnectionLost(f"connection to {self.endpoint} was lost while {what} was pending")
            if self._socket in events:
                with translate_zmq_errors(self.endpoint):
                    frames = self._socket.recv_multipart(copy=False)
                message = protocol.unpack(frames)
                if message.request_id == request_id or message.kind is Kind.VERSION_MISMATCH:
                    return message
                continue  # a late reply to a request that timed out: drop it
            if deadline is not None and time.monotonic() >= deadline:
                hint = " (connection refused: is the server running?)" if self.refused and not self.connected else ""
                if self._silent_failures and not self.connected:
                    hint = f" ({self._silent_failures} handshakes failed: is it a fastenv server?)"
                raise FastEnvTimeout(f"{what} to {self.endpoint} got no reply within {timeout:g}s{hint}")

    def _drain_monitor(self) -> None:
        while True:
            try:
                raw = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            parsed = parse_monitor_message(raw)
            event = parsed["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:  # connected, and (with auth) authenticated
                self.connected = True
                self._ever_connected = True
                self._suspected = None
                self.retries = 0
                self._silent_failures = 0
            elif event == zmq.EVENT_CONNECT_RETRIED:  # scheduled after every failed attempt or drop
                self.refused = True
                self.retries += 1
            elif event == zmq.EVENT_DISCONNECTED and self.connected:
                self.connected = False
                self._lost = True
            elif event & (
                zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            ):
                self._handshake_failed(event, parsed["value"])

    def _handshake_failed(self, event: int, value: Any) -> None:
        """Classify a failed handshake (see the module docstring)."""
        if self._auth_failure is not None:
            return
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            text = (
                f"the server at {self.endpoint} refused this client's key (status {value}): add the client's "
                "public key file (client.key) to the server's authorized_clients/ directory"
            )
            self._auth_failure = (ClientKeyRefused, text)
            return
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            self._auth_failure = self._mismatch("NULL" if self.auth is not None else "CURVE")
            return
        # The server hung up without a word: ask it which mechanism it speaks. A connection cut on
        # the way looks the same, so the diagnosis stands only if the handshake after the greeting
        # probe fails too, and never once a handshake with this server key has succeeded.
        if self._ever_connected:
            return
        if self._suspected is not None:
            self._auth_failure = self._suspected
            return
        self._silent_failures += 1
        if self._silent_failures % SILENT_HANDSHAKE_FAILURES == 0:
            self._suspected = self._mismatch(peer_mechanism(self.endpoint))

    def _mismatch(self, server_mechanism: str | None) -> tuple[type[AuthenticationError], str] | None:
        where = self.endpoint
        if self.auth is None:
            if server_mechanism == "CURVE":
                text = (
                    f"the server at {where} requires authentication: connect with auth=KEY_DIR "
                    "(client.key_secret and the server's server.key; see `fastenv keygen`)"
                )
                return AuthenticationRequired, text
            return None
        if server_mechanism == "NULL":
            text = (
                f"the server at {where} does not use authentication, so it cannot prove it holds the "
                "pinned server key: refusing to talk to it (start it with --auth, or connect without auth=)"
            )
            return ServerKeyMismatch, text
        if server_mechanism == "CURVE":
            text = (
                f"the server at {where} does not hold the secret key of the pinned server key "
                "(server.key): wrong key file, or another server on that port"
            )
            return ServerKeyMismatch, text
        return None

    def _raise_auth_failure(self) -> None:
        if self._auth_failure is not None:
            cls, text = self._auth_failure
            raise cls(text)

    def check_alive(self) -> None:
        """Raise :class:`ConnectionLost` if the connection to the server has dropped
        (or the :class:`~fastenv.errors.AuthenticationError` that keeps it from connecting)."""
        self._drain_monitor()
        self._raise_auth_failure()
        if self._lost:
            raise ConnectionLost(f"connection to {self.endpoint} was lost")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close the sockets (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._socket.close(linger=0)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed fastenv channel to {self.endpoint}", ResourceWarning, stacklevel=2)
            self.close()
