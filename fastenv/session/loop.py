"""The server's control loop: take requests in per client, answer them in turn, reap vanished clients."""

from __future__ import annotations

import logging
import threading
import time

import zmq

from fastenv import protocol
from fastenv.control.inbox import Inbox
from fastenv.control.reclaim import MemoryReclaimer
from fastenv.control.router import ServerSocket
from fastenv.errors import TooManyPending
from fastenv.session.handlers import ControlHandlers
from fastenv.session.registry import SessionRegistry
from fastenv.tcp.listener import TcpDataListener
from fastenv.wire import ErrorKind

log = logging.getLogger("fastenv.server")


class ControlLoop:
    """Runs until ``stopping`` is set.

    Messages are taken in per client and handled round-robin
    (:class:`~fastenv.control.inbox.Inbox`), so one client's flood delays
    only that client; beyond ``max_pending`` waiting requests a client gets
    :class:`~fastenv.errors.TooManyPending`. Four times a heartbeat interval
    the sessions whose clients vanished are ended (see
    :meth:`~fastenv.session.registry.SessionRegistry.reap`), and memory the
    closed connections held is given back to the OS.
    """

    def __init__(
        self,
        socket: ServerSocket,
        handlers: ControlHandlers,
        registry: SessionRegistry,
        data_listener: TcpDataListener | None,
        stats: dict[str, int],
    ) -> None:
        self._socket = socket
        self._handlers = handlers
        self._registry = registry
        self._data_listener = data_listener
        self._stats = stats
        self._config = registry.config
        self._reclaimer = MemoryReclaimer()
        self._next_liveness_check = 0.0

    def run(self, stopping: threading.Event, poll_interval: float) -> None:
        """Serve requests until ``stopping`` is set."""
        sock, handle = self._socket, self._handlers.handle
        poller = zmq.Poller()
        poller.register(sock.socket, zmq.POLLIN)
        tick_ms = int(min(poll_interval, self._config.heartbeat_interval / 4) * 1000)
        inbox = Inbox(self._config.max_pending)
        while not stopping.is_set():
            if inbox or poller.poll(tick_ms):
                self._take_in(inbox)
                frames = inbox.pop()
                if frames is not None:
                    handle(frames)
            try:
                self._check_liveness()
            except Exception:  # a bug in reclaiming one session must not take the server down
                log.exception("liveness check failed")

    def _take_in(self, inbox: Inbox) -> None:
        """Move the messages waiting on the socket into ``inbox``; refuse a client's beyond ``max_pending``."""
        while not inbox.full:
            frames = self._socket.recv()
            if frames is None:
                return
            identity = frames[0].bytes
            if not inbox.put(identity, frames):
                self._stats["requests"] += 1
                error = TooManyPending(
                    f"this client already has {self._config.max_pending} requests waiting on the server (max_pending)"
                )
                self._handlers.reply_error(identity, protocol.peek_request_id(frames[1:]), ErrorKind.LIMIT, error)

    def _check_liveness(self) -> None:
        """End the sessions of clients that vanished, four times an interval."""
        now = time.monotonic()
        if now < self._next_liveness_check:
            return
        self._next_liveness_check = now + self._config.heartbeat_interval / 4
        closed = self._socket.disconnections() + self._registry.ended
        if self._data_listener is not None:
            closed += self._data_listener.dropped
        self._reclaimer.check(closed)
        self._stats["reaped"] += self._registry.reap(now)
