"""Client side of the control channel (ZeroMQ DEALER)."""

from __future__ import annotations

import itertools
import os
import time
import warnings
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from fastenv import protocol
from fastenv.errors import ClientClosedError, ConnectionLost, FastEnvTimeout, translate_zmq_errors
from fastenv.protocol import Kind, Message

# ZMTP heartbeats (sent by libzmq's own thread, so they run while the client is idle):
# a peer that answers nothing for two intervals is dropped, and the drop is reported
# as ConnectionLost by the next call (or check_alive) at once.
HEARTBEAT_INTERVAL_S = 1.0


def heartbeat_options(interval: float) -> dict[int, int]:
    """Socket options for ZMTP heartbeats every ``interval`` seconds, timing out after two."""
    interval_ms = max(1, int(interval * 1000))
    return {zmq.HEARTBEAT_IVL: interval_ms, zmq.HEARTBEAT_TIMEOUT: 2 * interval_ms, zmq.HEARTBEAT_TTL: 2 * interval_ms}
_MONITORED_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED


class ClientChannel:
    """A DEALER connected to one server, with request ids and bounded waits.

    ``request()`` sends one message and waits for the reply with the same
    request id; replies to earlier, timed-out requests are dropped. If the
    connection drops while a request is pending, :class:`ConnectionLost` is
    raised at once.
    """

    def __init__(
        self, endpoint: str, *, heartbeat_interval: float = HEARTBEAT_INTERVAL_S, context: zmq.Context | None = None
    ) -> None:
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._closed = False
        self.routing_id = os.urandom(16)
        with translate_zmq_errors(endpoint):
            self._socket = self._context.socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
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
        self._lost = False
        with translate_zmq_errors(self.endpoint):
            self._socket.send_multipart(frames, copy=False)
        return request_id

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
                if self._lost:
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
                raise FastEnvTimeout(f"{what} to {self.endpoint} got no reply within {timeout:g}s{hint}")

    def _drain_monitor(self) -> None:
        while True:
            try:
                raw = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(raw)["event"]
            if event == zmq.EVENT_CONNECTED:
                self.connected = True
                self.retries = 0
            elif event == zmq.EVENT_CONNECT_RETRIED:  # scheduled after every failed attempt or drop
                self.refused = True
                self.retries += 1
            elif event == zmq.EVENT_DISCONNECTED and self.connected:
                self.connected = False
                self._lost = True

    def check_alive(self) -> None:
        """Raise :class:`ConnectionLost` if the connection to the server has dropped."""
        self._drain_monitor()
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
