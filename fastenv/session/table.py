"""The server's sessions: one record per connected client, in one table.

A session is found by its control connection's identity (every control
request), by its id (RESUME), and by its token (a data stream presenting
itself). The table keeps those three views in step; the data listener's
thread looks tokens up while the server's loop adds and removes sessions, so
every change holds the table's lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastenv.replay import ReplyRecord
from fastenv.session.deadline import Deadline
from fastenv.session.envthread import EnvThread
from fastenv.session.state import SessionState
from fastenv.shm.arena import Arena
from fastenv.tcp.session import TcpServerStream
from fastenv.transport.base import ServerTransport


@dataclass
class EnvHandle:
    """One env as the server holds it (in shared mode, every session's)."""

    env: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    transitions: int = 0  # calls that changed it; observers see this as Transition.seq
    lease: str | None = None  # session id of the client holding the control lease
    cached_state: tuple[int, Any] | None = None  # (id of the env object asked, get_state() value)
    runner: EnvThread | None = None  # the thread every call on the env runs on (None: the caller's)

    def on_env_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the env's thread (at once, on the caller's, when it has none)."""
        runner = self.runner
        return fn(*args) if runner is None else runner.run(fn, *args)


@dataclass
class Session:
    """One connected client."""

    session_id: str
    identity: bytes
    handle: EnvHandle
    env: Any  # what this session's calls run on: handle.env, or a vector view of it
    owns_env: bool  # close handle.env when the session ends (per-client mode)
    token: bytes  # the session's secret: presented by RESUME and by the client's TCP data stream
    route: ServerTransport  # where its calls come from now, and how its client's presence is checked
    peer: dict[str, Any] = field(default_factory=dict)
    role: str = "shared"
    client_key: str | None = None  # the client's public key (Z85) on an authenticated connection
    state: SessionState = SessionState.ACTIVE
    plane: str = "tcp"  # the data plane the client was told at ATTACH: "shm", or "tcp" (stream or control connection)
    offered_arena: Arena | None = None  # OFFERED: created at HELLO, until the client proves it can map it
    stream: TcpServerStream | None = None  # the data stream it may connect (None: shared memory, or no listener)
    calls: int = 0
    methods: dict[str, Any] = field(default_factory=dict)  # resolved bound methods, by name
    created: float = field(default_factory=time.monotonic)
    call_record: ReplyRecord = field(default_factory=ReplyRecord)  # calls on the control connection
    deadline: Deadline | None = None  # the controller's deadline, when it set one
    timed: bool = False  # the metrics time the call in progress (its env time goes to env_ns)
    env_ns: int = 0  # time in the env's method of the last timed call

    @property
    def ended(self) -> bool:
        """Whether the session was closed."""
        return self.state is SessionState.ENDED


class SessionTable:
    """Every open session, by connection identity, by id and by token."""

    def __init__(self) -> None:
        self._by_identity: dict[bytes, Session] = {}
        self._by_id: dict[str, Session] = {}
        self._by_token: dict[bytes, Session] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._by_identity)

    def __iter__(self) -> Iterator[Session]:
        """A snapshot: sessions may be ended while iterating."""
        with self._lock:
            return iter(list(self._by_identity.values()))

    def add(self, session: Session) -> None:
        """Register a new session."""
        with self._lock:
            self._by_identity[session.identity] = session
            self._by_id[session.session_id] = session
            self._by_token[session.token] = session

    def by_identity(self, identity: bytes) -> Session | None:
        """The session of a control connection."""
        return self._by_identity.get(identity)

    def by_id(self, session_id: str) -> Session | None:
        """The session with that id."""
        return self._by_id.get(session_id)

    def by_token(self, token: bytes) -> Session | None:
        """The open session whose token that is."""
        with self._lock:
            session = self._by_token.get(token)
            return None if session is None or session.ended else session

    def rebind(self, session: Session, identity: bytes) -> Session | None:
        """Move ``session`` to a new connection identity; returns another session that identity held, if any."""
        with self._lock:
            other = self._by_identity.get(identity)
            if self._by_identity.get(session.identity) is session:
                del self._by_identity[session.identity]
            session.identity = identity
            self._by_identity[identity] = session
        return other if other is not session else None

    def remove(self, session: Session) -> None:
        """Forget ``session`` and mark it ended (idempotent)."""
        with self._lock:
            session.state = SessionState.ENDED
            if self._by_identity.get(session.identity) is session:
                del self._by_identity[session.identity]
            if self._by_id.get(session.session_id) is session:
                del self._by_id[session.session_id]
            if self._by_token.get(session.token) is session:
                del self._by_token[session.token]

    def locked(self) -> threading.RLock:
        """The table's (reentrant) lock, for a change that must not race a token lookup."""
        return self._lock
