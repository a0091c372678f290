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

HEARTBEAT_INTERVAL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
_MONITORED_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED


class ClientChannel:
    """A DEALER connected to one server, with request ids and bounded waits.

    ``request()`` sends one message and waits for the reply with the same
    request id; replies to earlier, timed-out requests are dropped. If the
    connection drops while a request is pending, :class:`ConnectionLost` is
    raised at once.
    """

    def __init__(self, endpoint: str, *, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._closed = False
        self.routing_id = os.urandom(16)
        with translate_zmq_errors(endpoint):
            self._socket = self._context.socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.ROUTING_ID, self.routing_id)
            self._socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_INTERVAL_MS)
            self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            self._socket.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
            self._monitor = self._socket.get_monitor_socket(_MONITORED_EVENTS)
            self._socket.connect(endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.connected = False
        self.refused = False
        self._lost = False

    def request(self, kind: Kind, value: Any, timeout: float | None, what: str = "request") -> Message:
        """Send ``value`` as a ``kind`` message and return the matching reply."""
        if self._closed:
            raise ClientClosedError(f"the connection to {self.endpoint} is closed")
        request_id = next(self._ids)
        frames = protocol.pack(kind, request_id, value)
        self._lost = False
        with translate_zmq_errors(self.endpoint):
            self._socket.send_multipart(frames, copy=False)
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
            elif event == zmq.EVENT_CONNECT_RETRIED:
                self.refused = True
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
