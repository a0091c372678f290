"""Opening, re-binding and ending sessions, and giving each the route its calls take.

A session starts on the control connection (:class:`~fastenv.transport.control.ControlRoute`),
or OFFERED when shared memory was offered. ATTACH moves it to shared memory
(:class:`~fastenv.shm.worker.ShmServerWorker`) or leaves it where it is; a
data stream presenting the session's token moves it to the TCP stream
(:class:`~fastenv.tcp.session.TcpServerStream`). Ending a session releases
all of it at once: its route (worker, arena mappings, stream), an unanswered
offer, its lease, and its env in per-client mode.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from typing import Any

from fastenv.control.address import process_alive
from fastenv.control.router import ServerSocket
from fastenv.session.config import ServerConfig
from fastenv.session.dispatch import Dispatcher, close_quietly
from fastenv.session.envthread import EnvThreadStopped
from fastenv.session.state import SessionState
from fastenv.session.table import EnvHandle, Session, SessionTable
from fastenv.shm.arena import Arena
from fastenv.shm.worker import ShmServerWorker
from fastenv.tcp.session import TcpServerStream
from fastenv.transport.control import ControlRoute

log = logging.getLogger("fastenv.server")


class SessionRegistry:
    """The server's sessions and their routes."""

    def __init__(self, config: ServerConfig, dispatcher: Dispatcher, control: ServerSocket, streams: bool) -> None:
        self.config = config
        self.table = SessionTable()
        self._dispatcher = dispatcher
        self._control = control
        self._streams = streams  # a data listener runs: sessions may connect a TCP stream
        self.ended = 0  # sessions ended so far (a hint for the memory reclaimer)

    def open(
        self,
        identity: bytes,
        handle: EnvHandle,
        env: Any,
        *,
        owns_env: bool,
        peer: dict[str, Any],
        role: str,
        client_key: str | None,
        offer_shm: bool,
    ) -> Session:
        """Register a new session: on the control connection, or OFFERED shared memory when it can be."""
        session = Session(
            os.urandom(8).hex(),
            identity,
            handle,
            env,
            owns_env,
            token=os.urandom(16),
            route=ControlRoute(self._control, lambda: session.identity, self.config.heartbeat_interval),
            peer=peer,
            role=role,
            client_key=client_key,
        )
        execute = self._dispatcher.executor_for(session)
        if self._streams:
            session.stream = TcpServerStream(
                execute,
                limits=self.config.limits,
                max_message_bytes=self.config.max_message_bytes,
                compression=peer.get("compression"),
                interval=self.config.heartbeat_interval,
                host=handle.runner,
            )
        if offer_shm:
            try:
                session.offered_arena = Arena.create(self.config.arena_shape)
                session.state = SessionState.OFFERED
            except OSError as exc:
                log.warning("cannot offer shared memory: %s", exc)
        self.table.add(session)
        return session

    def attach_shm(self, session: Session, arena: Arena) -> None:
        """Serve the session's calls from the arena the client proved it mapped."""
        with self.table.locked():
            session.stream = None  # no TCP stream for this session: its token no longer adopts one
        worker = ShmServerWorker(
            arena,
            self._dispatcher.executor_for(session),
            limits=self.config.limits,
            max_message_bytes=self.config.max_message_bytes,
            spin_us=self.config.shm_spin_us,
            peer_alive=functools.partial(process_alive, session.peer.get("host", {}).get("pid")),
        )
        session.route = worker
        session.plane = "shm"
        worker.start(host=session.handle.runner)  # an env bound to a thread serves its first session there

    def adopt_stream(self, token: bytes, sock: socket.socket) -> bool:
        """Bind a client's TCP data stream to its session (called by the data listener's thread).

        A session's stream may be replaced (the client reconnected after a
        drop): the session's calls are answered from one record across its
        streams, so a call re-sent on the new one runs once.
        """
        with self.table.locked():
            session = self.table.by_token(token)
            stream = None if session is None else session.stream
            if session is None or stream is None:
                return False
            session.route = stream
            if session.state is SessionState.OFFERED:
                session.state = SessionState.ACTIVE
        stream.adopt(sock)
        return True

    def resume(self, session: Session, identity: bytes) -> None:
        """The client took ``session`` up again, perhaps from a new connection identity."""
        if session.identity != identity:
            other = self.table.rebind(session, identity)
            if other is not None:
                self.end(other)
        session.route.resumed()

    def end(self, session: Session) -> None:
        """Close ``session`` and release everything it holds (idempotent)."""
        if session.state is SessionState.ENDED:
            return
        self.ended += 1
        self.table.remove(session)
        session.route.stop()  # releases the worker's arenas (mapping and descriptor) or stream at once
        if session.stream is not None and session.stream is not session.route:
            session.stream.stop()
        if session.offered_arena is not None:
            session.offered_arena.unlink()
            session.offered_arena.close()
            session.offered_arena = None
        self._dispatcher.session_ending(session)
        with session.handle.lock:
            if session.handle.lease == session.session_id:
                session.handle.lease = None
        handle = session.handle
        try:
            if session.env is not handle.env:  # a vector view made for this session (never closes the env itself)
                handle.on_env_thread(close_quietly, session.env)
            if session.owns_env:
                handle.on_env_thread(close_quietly, handle.env)
        except EnvThreadStopped:  # shutting down: the env's thread is gone, and the env with the process
            log.warning("session %s: its env was not closed (its thread has stopped)", session.session_id)
        if session.owns_env and handle.runner is not None and handle.runner.dedicated:
            handle.runner.stop()
        log.info("session %s closed after %d calls", session.session_id, session.calls)

    def end_all(self) -> None:
        """End every session (shutdown)."""
        for session in self.table:
            self.end(session)

    def reap(self, now: float | None = None) -> int:
        """End the sessions whose clients are gone, or that left their shared-memory offer unanswered.

        Each route says whether its client is gone (see the route's
        ``peer_gone``); returns how many sessions were ended.
        """
        now = time.monotonic() if now is None else now
        reaped = 0
        for session in self.table:
            if session.state is SessionState.OFFERED:
                overdue = now - session.created > self.config.attach_grace
                reason = "it left the shared-memory offer unanswered" if overdue else None
            else:
                reason = session.route.peer_gone(now)
            if reason is not None:
                log.info("session %s reclaimed: %s", session.session_id, reason)
                self.end(session)
                reaped += 1
        return reaped
