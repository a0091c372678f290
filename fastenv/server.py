"""EnvServer: owns the env(s), accepts sessions and dispatches calls.

One thread runs the ZeroMQ control loop (handshakes, ATTACH, RESUME, BYE,
liveness checks, and calls of clients without a data plane); each session on
shared memory or the TCP stream has a worker thread for its calls. Every call
takes its env's lock, so calls on one env are applied one at a time, which is
what makes *shared* mode (every client drives the same env) well defined. In
*per-client* mode each session gets its own env from the factory, closed when
the session ends.

Sessions in shared mode: any client may drive the env, unless one holds the
control lease (``role="controller"``); observers (``role="observer"``) only
read, and receive every call that changed the env through the
:class:`~fastenv.observe.TransitionPublisher`.

Liveness: a session whose client vanished is ended (its env closed in
per-client mode, its lease released, its segments and their mappings
released): on shared memory as soon as the client's process is gone; on the
TCP stream when the stream dropped and was not taken up again within one
heartbeat interval (a RESUME on the control connection starts that interval
again); otherwise when the client's control connection is gone for one
interval (ZMTP heartbeats drop a peer silent for two). A session offered
shared memory must answer the offer within ``attach_grace``. A client whose connection
dropped can RESUME its session in that window; calls re-sent after a drop are
answered from the session's record, never applied twice (see
:mod:`fastenv.replay`).

Authentication (``auth=``): the control and observer sockets are CURVE
servers in a ZeroMQ context of the server's own, whose
:class:`~fastenv.control.zap.ZapHandler` admits only the authorized client
keys. The raw TCP data stream is not offered then: calls of clients without
shared memory travel on the encrypted control connection (shared memory
stays: the probe proves the client is on this host, and the segments are
mode 0600). With ``allow_trusted`` an authenticated client may ship an env
factory (:mod:`fastenv.trusted`).

Limits: the decoder's (:class:`~fastenv.codec.Limits`), the largest frame
(``max_message_bytes``), the number of sessions (``max_sessions``) and of
requests one client may have waiting (``max_pending``, see
:mod:`fastenv.control.inbox`). A breach is answered with a typed error to that
client only.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import zmq

from fastenv import codec, envinfo, protocol
from fastenv._version import __version__
from fastenv.batching import EMPTY_DICTS, pack_results, unpack_column
from fastenv.codec import Limits
from fastenv.control.address import check_bind_allowed, host_identity
from fastenv.control.auth import AuthConfig, AuthLike, server_auth
from fastenv.control.dealer import HEARTBEAT_INTERVAL_S
from fastenv.control.inbox import Inbox
from fastenv.control.reclaim import MemoryReclaimer
from fastenv.control.router import ServerSocket
from fastenv.control.zap import ZapHandler
from fastenv.errors import (
    ControlDenied,
    EncodeError,
    FastEnvError,
    LeaseHeld,
    LimitExceeded,
    ProtocolError,
    ServerBusy,
    ServerConfigError,
    TooManyPending,
    UnknownMethodError,
)
from fastenv.observe import TransitionPublisher
from fastenv.protocol import BATCH_STEP, GETATTR, LEASE, Kind, Message
from fastenv.replay import ReplyRecord, StaleRequest
from fastenv.shm.arena import Arena, reclaim_stale
from fastenv.shm.plane import DEFAULT_SHAPE, SERVER_SPIN_US, ShmServerWorker
from fastenv.tcp.plane import TcpDataListener, TcpServerWorker
from fastenv.trusted import load_factory
from fastenv.wire import ErrorKind, error_body, parse_call

log = logging.getLogger("fastenv.server")

MODES = ("shared", "per-client")
ROLES = ("shared", "controller", "observer")
# Calls that leave the env as it was: allowed to observers and while another client holds
# the lease, and not published as transitions. Everything else counts as changing the env.
READ_ONLY_CALLS = frozenset({GETATTR, "get_state", "render"})
ATTACH_GRACE_S = 10.0  # a session that leaves its shared-memory offer unanswered is ended after this long
DEFAULT_MAX_SESSIONS = 256
MAX_BATCH_STEPS = 1 << 16  # most actions in one batch_step
DEFAULT_MAX_PENDING = 64
_NO_STATE = object()


@dataclass
class EnvHandle:
    """One env as the server holds it (in shared mode, every session's)."""

    env: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    transitions: int = 0  # calls that changed it; observers see this as Transition.seq
    lease: str | None = None  # session id of the client holding the control lease
    cached_state: tuple[int, Any] | None = None  # (id of the env object asked, get_state() value)


@dataclass
class Session:
    """One connected client."""

    session_id: str
    identity: bytes
    handle: EnvHandle
    env: Any  # what this session's calls run on: handle.env, or a vector view of it
    owns_env: bool  # close handle.env when the session ends (per-client mode)
    peer: dict[str, Any] = field(default_factory=dict)
    role: str = "shared"
    client_key: str | None = None  # the client's public key (Z85) on an authenticated connection
    calls: int = 0
    transport: str = "tcp"
    methods: dict[str, Any] = field(default_factory=dict)  # resolved bound methods, by name
    offered_arena: Arena | None = None  # created at HELLO, until the client proves it can map it
    data_token: bytes = b""  # the session's secret: presented by RESUME and by the client's TCP data stream
    worker: ShmServerWorker | TcpServerWorker | None = None
    ended: bool = False
    attached: bool = False  # the client answered the shared-memory offer (ATTACH), or none was made
    created: float = field(default_factory=time.monotonic)
    disconnected_since: float | None = None
    call_record: ReplyRecord = field(default_factory=ReplyRecord)  # calls on the control connection
    stream_record: ReplyRecord = field(default_factory=ReplyRecord)  # calls on the TCP stream

    @property
    def env_lock(self) -> threading.Lock:
        """The lock every call on this session's env takes."""
        return self.handle.lock


class EnvServer:
    """Serve an env instance (shared mode) or an env factory (per-client mode).

    Args:
        env: an env instance; every client drives this one env.
        factory: a zero-argument callable making an env; each client gets its own
            (or, with ``mode="shared"``, one env is made up front and shared).
        bind: interface to listen on. Anything but loopback needs ``auth`` or ``insecure=True``.
        port: TCP port; 0 picks a free one (see :attr:`address`).
        mode: ``"shared"`` or ``"per-client"``; defaults to shared for ``env``,
            per-client for ``factory``.
        insecure: allow a non-loopback bind without authentication.
        auth: CURVE keys: an :class:`~fastenv.control.auth.AuthConfig` or a key
            directory (``server.key_secret`` + ``authorized_clients/*.key``).
            Only authorized clients get in, every ZeroMQ connection is
            encrypted, and no raw TCP data stream is offered.
        allow_trusted: let authenticated clients ship an env factory
            (:meth:`fastenv.FastRemoteEnv.create`); needs ``auth``.
        limits: decoder limits applied to everything clients send.
        max_message_bytes: the largest frame accepted (clients learn it in the
            handshake and refuse to send more; ZeroMQ drops a peer that does).
        max_sessions: most sessions at once; a HELLO beyond gets
            :class:`~fastenv.errors.ServerBusy`.
        max_pending: most requests one client may have waiting on the control
            connection; more get :class:`~fastenv.errors.TooManyPending`.
        attach_grace: seconds a client may leave the shared-memory offer of
            its session unanswered (no ATTACH) before the session is ended. A
            session offered no shared memory has nothing to answer: its calls
            travel on the TCP stream or the control connection, whose liveness
            is watched instead.
        close_env: close a shared env on shutdown (default: only if the server made it).
        shm: offer the shared-memory data plane to clients on this host.
        shm_slots: reply slots per session arena (a client's views stay valid
            for ``shm_slots - 1`` further calls).
        shm_spin_us: how long a shared-memory worker spins for the next request
            before sleeping (default :data:`fastenv.shm.plane.SERVER_SPIN_US`).
        data_port: TCP port of the data stream that carries calls for clients
            without shared memory (0: a free port; clients learn it in the handshake).
        num_envs: host this many envs from ``factory`` behind one
            :class:`~fastenv.vector.host.VectorHost` (batched ``reset``/``step``;
            drive it with :class:`fastenv.FastVectorEnv`). In per-client mode each
            client gets its own N envs.
        heartbeat_interval: seconds between heartbeats; a vanished client's
            session is reclaimed within two intervals.
        observers: publish transitions to observer clients (shared mode only).

    Example::

        with EnvServer(factory=lambda: gymnasium.make("CartPole-v1")) as server:
            server.start()
            print(server.address)
    """

    def __init__(
        self,
        env: Any = None,
        *,
        factory: Callable[[], Any] | None = None,
        bind: str = "127.0.0.1",
        port: int = 0,
        mode: str | None = None,
        insecure: bool = False,
        limits: Limits = codec.DEFAULT_LIMITS,
        max_message_bytes: int = 1 << 31,
        close_env: bool | None = None,
        shm: bool = True,
        shm_slots: int = DEFAULT_SHAPE.slots,
        shm_spin_us: int | None = None,
        data_port: int = 0,
        num_envs: int | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        observers: bool = True,
        auth: AuthLike | None = None,
        allow_trusted: bool = False,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_pending: int = DEFAULT_MAX_PENDING,
        attach_grace: float = ATTACH_GRACE_S,
    ) -> None:
        if (env is None) == (factory is None):
            raise ServerConfigError("give EnvServer exactly one of env= or factory=")
        if num_envs is not None and (num_envs < 1 or factory is None):
            raise ServerConfigError("num_envs needs a factory and must be at least 1")
        if heartbeat_interval <= 0:
            raise ServerConfigError("heartbeat_interval must be positive")
        mode = mode or ("shared" if env is not None else "per-client")
        if mode not in MODES:
            raise ServerConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "per-client" and factory is None:
            raise ServerConfigError("per-client mode needs a factory (each client gets its own env)")
        if max_sessions < 1 or max_pending < 1:
            raise ServerConfigError("max_sessions and max_pending must be at least 1")
        if attach_grace <= 0:
            raise ServerConfigError("attach_grace must be positive")
        self.auth: AuthConfig | None = server_auth(auth)
        if allow_trusted and self.auth is None:
            raise ServerConfigError(
                "trusted mode (--allow-trusted) runs code that clients send: it needs authentication (--auth DIR)"
            )
        check_bind_allowed(bind, insecure=insecure, authenticated=self.auth is not None)
        self.allow_trusted = allow_trusted
        self.max_sessions = max_sessions
        self.max_pending = max_pending
        self.attach_grace = attach_grace
        self._context: zmq.Context | None = None  # with auth: the server's own, run by its ZAP handler
        self._zap: ZapHandler | None = None
        self.mode = mode
        self.bind_host = bind
        self.port = port
        self.insecure = insecure
        self.limits = limits
        self.max_message_bytes = max_message_bytes
        self._factory = factory
        self.num_envs = num_envs
        self._shared_env = env
        self._shared: EnvHandle | None = None
        self._close_shared = close_env if close_env is not None else env is None
        self.heartbeat_interval = heartbeat_interval
        self._observers = observers and mode == "shared"
        self._publisher: TransitionPublisher | None = None
        self._next_liveness_check = 0.0
        self.shm = shm
        if shm_slots < 2:
            raise ServerConfigError("shm_slots must be at least 2")
        self._arena_shape = dataclasses.replace(DEFAULT_SHAPE, slots=shm_slots)
        self.shm_spin_us = SERVER_SPIN_US if shm_spin_us is None else shm_spin_us
        self.data_port = data_port
        self._socket: ServerSocket | None = None
        self._data_listener: TcpDataListener | None = None
        self._sessions: dict[bytes, Session] = {}
        self._by_id: dict[str, Session] = {}
        self._by_token: dict[bytes, Session] = {}
        self._token_lock = threading.Lock()  # the data listener adopts streams from its own thread
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._identity = host_identity()
        self._reclaimer = MemoryReclaimer()
        self._sessions_ended = 0
        self.stats = {
            "requests": 0,
            "protocol_errors": 0,
            "env_errors": 0,
            "reaped": 0,
            "resumed": 0,
            "limit_errors": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        """The endpoint clients connect to (binds the socket if needed)."""
        return self._bind().address

    @property
    def data_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the TCP data stream listener (binds if needed)."""
        self._bind()
        return self._data_listener.address if self._data_listener else None

    def _bind(self) -> ServerSocket:
        if self._socket is None:
            if self._closed:
                raise ServerConfigError("this EnvServer is closed")
            if self.mode == "shared" and self._shared_env is None:
                self._shared_env = self._make_env()
            if self.mode == "shared":
                self._shared = EnvHandle(self._shared_env)
            if self.shm:
                for name in reclaim_stale():
                    log.warning("removed stale shared-memory segment %s (its owner is dead)", name)
            if self.auth is not None:
                self._context = zmq.Context()
                self._zap = ZapHandler(self._context, self.auth.authorized_clients)
            try:
                self._socket = ServerSocket(
                    self.bind_host,
                    self.port,
                    max_message_bytes=self.max_message_bytes,
                    heartbeat_interval=self.heartbeat_interval,
                    auth=self.auth,
                    context=self._context,
                )
                if self.auth is None:  # with auth, calls travel on the encrypted control connection
                    self._data_listener = TcpDataListener(
                        self.bind_host, self.data_port, on_connection=self._adopt_data_stream
                    )
                if self._observers:
                    self._publisher = TransitionPublisher(self.bind_host, auth=self.auth, context=self._context)
            except FastEnvError:
                self._close_sockets()
                self._socket = None
                raise
        return self._socket

    def _make_env(self) -> Any:
        """A new env from the factory (``num_envs`` of them behind a VectorHost)."""
        assert self._factory is not None
        if self.num_envs is None:
            return self._factory()
        from fastenv.vector.host import VectorHost

        envs: list[Any] = []
        try:
            for _ in range(self.num_envs):
                envs.append(self._factory())
            return VectorHost(envs)
        except BaseException:
            for made in envs:
                _close_quietly(made)
            raise

    def serve_forever(self, poll_interval: float = 0.25) -> None:
        """Serve until :meth:`stop` (or KeyboardInterrupt); then close sessions and sockets.

        Messages are taken in per client and handled round-robin
        (:class:`~fastenv.control.inbox.Inbox`), so one client's flood
        delays only that client.
        """
        sock = self._bind()
        poller = zmq.Poller()
        poller.register(sock.socket, zmq.POLLIN)
        tick_ms = int(min(poll_interval, self.heartbeat_interval / 4) * 1000)
        inbox = Inbox(self.max_pending)
        try:
            while not self._stopping.is_set():
                if inbox or poller.poll(tick_ms):
                    self._take_in(sock, inbox)
                    frames = inbox.pop()
                    if frames is not None:
                        self._handle(frames)
                try:
                    self._check_liveness()
                except Exception:  # a bug in reclaiming one session must not take the server down
                    log.exception("liveness check failed")
        finally:
            self._shutdown()

    def _take_in(self, sock: ServerSocket, inbox: Inbox) -> None:
        """Move the messages waiting on the socket into ``inbox``; refuse a client's beyond ``max_pending``."""
        while not inbox.full:
            frames = sock.recv()
            if frames is None:
                return
            identity = frames[0].bytes
            if not inbox.put(identity, frames):
                self.stats["requests"] += 1
                error = TooManyPending(
                    f"this client already has {self.max_pending} requests waiting on the server (max_pending)"
                )
                self._reply_error(identity, protocol.peek_request_id(frames[1:]), ErrorKind.LIMIT, error)

    @property
    def sessions(self) -> int:
        """How many sessions are open."""
        return len(self._sessions)

    def _check_liveness(self) -> None:
        """End the sessions of clients that vanished (see the module docstring)."""
        now = time.monotonic()
        if now < self._next_liveness_check:
            return
        self._next_liveness_check = now + self.heartbeat_interval / 4
        assert self._socket is not None
        closed = self._socket.disconnections() + self._sessions_ended
        if self._data_listener is not None:
            closed += self._data_listener.dropped
        self._reclaimer.check(closed)
        for session in list(self._sessions.values()):
            reason = None
            if session.transport == "shm" and session.worker is not None:
                if not _process_alive(session.peer.get("host", {}).get("pid")):
                    reason = "its process exited"
            elif isinstance(session.worker, TcpServerWorker):
                if session.disconnected_since is None and not session.worker.is_alive():
                    session.disconnected_since = now  # a RESUME without its stream: the window starts again
                elif session.disconnected_since is not None and now - session.disconnected_since >= self.heartbeat_interval:
                    reason = "its data stream dropped and was not resumed"
            elif not session.attached and now - session.created > self.attach_grace:
                reason = "it left the shared-memory offer unanswered"
            else:  # calls travel (or the data plane is chosen) on the control connection: is it still there?
                if self._socket.probe(session.identity):
                    session.disconnected_since = None
                elif session.disconnected_since is None:
                    session.disconnected_since = now
                elif now - session.disconnected_since >= self.heartbeat_interval:
                    reason = "its connection dropped and was not resumed"
            if reason is not None:
                log.info("session %s reclaimed: %s", session.session_id, reason)
                self.stats["reaped"] += 1
                self._end_session(session)

    def start(self) -> str:
        """Serve in a background thread; returns the address."""
        address = self.address
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, name="fastenv-server", daemon=True)
            self._thread.start()
        return address

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop and wait for it (safe from signal handlers and other threads)."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def close(self) -> None:
        """Stop serving and release everything (idempotent)."""
        self.stop()
        if self._thread is None:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for session in list(self._sessions.values()):
            self._end_session(session)
        if self._close_shared and self._shared_env is not None:
            _close_quietly(self._shared_env)
        self._close_sockets()

    def _close_sockets(self) -> None:
        """Close the publisher, data listener, control socket, ZAP handler and own context (idempotent)."""
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._data_listener is not None:
            self._data_listener.close()
            self._data_listener = None
        if self._socket is not None:
            self._socket.close()
        zap, context = self._zap, self._context
        self._zap = self._context = None
        if zap is not None and not zap.close():
            log.warning("the ZAP handler did not stop: leaving its ZeroMQ context open")
            return
        if context is not None:
            context.term()  # every socket in it is closed by now

    def __enter__(self) -> EnvServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ messages

    def _reply(self, identity: bytes, kind: Kind, request_id: int, value: Any) -> None:
        assert self._socket is not None
        try:
            frames = protocol.pack(kind, request_id, value)
        except EncodeError as exc:
            frames = protocol.pack(Kind.ERROR, request_id, error_body(ErrorKind.ENCODE, exc))
        self._socket.send(identity, frames)

    def _reply_error(self, identity: bytes, request_id: int, kind: ErrorKind, exc: BaseException, tb: str = "") -> None:
        if isinstance(exc, LimitExceeded):
            self.stats["limit_errors"] += 1
        self._reply(identity, Kind.ERROR, request_id, error_body(kind, exc, tb))

    def _handle(self, frames: list[Any]) -> None:
        self.stats["requests"] += 1
        identity = frames[0].bytes
        body = frames[1:]
        try:
            message = protocol.unpack(body)
        except ProtocolError as exc:
            self.stats["protocol_errors"] += 1
            self._reply_error(identity, protocol.peek_request_id(body), ErrorKind.PROTOCOL, exc)
            return
        if message.version != protocol.PROTOCOL_VERSION:
            self.stats["protocol_errors"] += 1
            text = f"server speaks fastenv protocol v{protocol.PROTOCOL_VERSION} (fastenv {__version__})"
            self._socket.send(identity, protocol.pack_text(Kind.VERSION_MISMATCH, message.request_id, text))  # type: ignore[union-attr]
            return
        if self.auth is not None and message.kind in (Kind.HELLO, Kind.RESUME):
            message.user_id = protocol.user_id_of(body[0])
        try:
            handler = self._HANDLERS[message.kind]
        except KeyError:
            self.stats["protocol_errors"] += 1
            self._reply_error(identity, message.request_id, ErrorKind.PROTOCOL, ProtocolError(f"unexpected {message.kind.name}"))
            return
        try:
            handler(self, identity, message)
        except Exception as exc:  # a bug in one request must not take the server down
            log.exception("internal error handling %s", message.kind.name)
            self._reply_error(identity, message.request_id, ErrorKind.INTERNAL, exc, traceback.format_exc())

    def _on_ping(self, identity: bytes, message: Message) -> None:
        self._reply(identity, Kind.PONG, message.request_id, None)

    def _on_hello(self, identity: bytes, message: Message) -> None:
        try:
            peer = message.body(self.limits)
            if not isinstance(peer, dict):
                raise ProtocolError("HELLO body must be a dict")
            if not isinstance(peer.get("host", {}), dict):
                raise ProtocolError("HELLO 'host' must be a dict (hostname, boot_id, pid)")
            if peer.get("compression") not in (None, "lz4", "zstd"):
                raise ProtocolError(f"unknown compression {peer.get('compression')!r}: use 'lz4', 'zstd' or None")
            role = peer.get("role", "shared")
            if role not in ROLES:
                raise ProtocolError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
            if role == "observer" and self._publisher is None:
                raise ProtocolError("this server has no observers: they need a server in shared mode")
            if identity not in self._sessions and len(self._sessions) >= self.max_sessions:
                raise ServerBusy(
                    f"the server holds {self.max_sessions} sessions, its limit (max_sessions): try again later"
                )
            shipped = None
            if "factory" in peer:  # trusted mode: checked before anything is loaded
                if role == "observer":
                    raise ProtocolError("an observer cannot ship an env factory")
                shipped = load_factory(peer["factory"], allowed=self.allow_trusted, user_id=message.user_id)
        except FastEnvError as exc:
            self.stats["protocol_errors"] += 1
            self._reply_error(identity, message.request_id, ErrorKind.PROTOCOL, exc)
            return
        except Exception as exc:  # a shipped factory that does not load here (a module missing...)
            self.stats["env_errors"] += 1
            self._reply_error(identity, message.request_id, ErrorKind.REMOTE, exc, traceback.format_exc())
            return
        old = self._sessions.pop(identity, None)
        if old is not None:
            self._end_session(old)
        handle: EnvHandle | None = self._shared
        owns = self.mode == "per-client" or shipped is not None
        try:
            if shipped is not None:
                handle = EnvHandle(shipped())
            elif self.mode == "per-client":
                handle = EnvHandle(self._make_env())
            assert handle is not None
            env = handle.env
            if peer.get("vector") and not _is_vector_host(env):
                from fastenv.vector.host import VectorHost

                env = VectorHost([env], close_envs=False)
            description = envinfo.describe(env)
        except Exception as exc:
            self.stats["env_errors"] += 1
            if owns and handle is not None and handle is not self._shared:
                _close_quietly(handle.env)
            self._reply_error(identity, message.request_id, ErrorKind.REMOTE, exc, traceback.format_exc())
            return
        peer.pop("factory", None)
        session = Session(
            os.urandom(8).hex(), identity, handle, env, owns, peer, role=role, data_token=os.urandom(16)
        )
        session.client_key = message.user_id
        self._sessions[identity] = session
        self._by_id[session.session_id] = session
        with self._token_lock:
            self._by_token[session.data_token] = session
        offer = None
        if self.shm and peer.get("transport", "auto") != "tcp":
            try:
                session.offered_arena = Arena.create(self._arena_shape)
                offer = {"name": session.offered_arena.name}
            except OSError as exc:
                log.warning("cannot offer shared memory: %s", exc)
        session.attached = offer is None  # no offer to answer: calls go on the TCP stream or this connection
        log.info(
            "session %s opened by %s (%s%s)",
            session.session_id,
            peer.get("host"),
            role,
            f", key {session.client_key}" if session.client_key else "",
        )
        welcome = {
            "session": session.session_id,
            "server": {
                "fastenv": __version__,
                "protocol": protocol.PROTOCOL_VERSION,
                "host": self._identity,
                "mode": self.mode,
                "heartbeat_interval": self.heartbeat_interval,
                "auth": self.auth is not None,
                "trusted": shipped is not None,
                "limits": {
                    "max_message_bytes": self.max_message_bytes,
                    "max_pending": self.max_pending,
                    "max_sessions": self.max_sessions,
                },
            },
            "env": description,
            "env_hash": envinfo.description_hash(description),
            "token": session.data_token,  # proves the session is ours in RESUME (with or without a data stream)
            "shm": offer,
            "tcp": {"port": self._data_listener.port, "token": session.data_token} if self._data_listener else None,
            "observe": {"port": self._publisher.port} if self._publisher is not None else None,
        }
        self._reply(identity, Kind.WELCOME, message.request_id, welcome)

    def _session_for(self, identity: bytes, message: Message) -> Session | None:
        session = self._sessions.get(identity)
        if session is None:
            self._reply_error(
                identity, message.request_id, ErrorKind.NO_SESSION, ProtocolError("no session: send HELLO first")
            )
        return session

    def _on_call(self, identity: bytes, message: Message) -> None:
        session = self._session_for(identity, message)
        if session is None:
            return
        try:
            name, args, kwargs = parse_call(message.body(self.limits))
        except (FastEnvError, ValueError, TypeError) as exc:
            self.stats["protocol_errors"] += 1
            self._reply_error(identity, message.request_id, ErrorKind.PROTOCOL, exc)
            return
        try:
            ok, value = session.call_record.run(message.request_id, lambda: self._execute(session, name, args, kwargs))
        except StaleRequest:
            return  # a duplicate of a request the client has given up on: nobody waits for a reply
        self._reply(identity, Kind.RESULT if ok else Kind.ERROR, message.request_id, value)

    def _execute(self, session: Session, name: str, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """Run one call on the session's env; ``(True, value)`` or ``(False, error body)``.

        Used by the ZeroMQ path and by the data-plane workers; the env lock
        applies calls one at a time, checks the control lease, serves a
        repeated ``get_state()`` from its cache, and publishes what changed
        the env to observers.
        """
        session.calls += 1
        handle = session.handle
        try:
            with handle.lock:
                method = session.methods.get(name)
                if method is not None:  # reset or step, already resolved: the hot path
                    if session.role == "observer" or handle.lease not in (None, session.session_id):
                        self._check_control(session)  # raises the reason
                    handle.cached_state = None
                    result = method(*args, **kwargs)
                    if self._publisher is None:  # no observers: only count the transition
                        handle.transitions += 1
                    else:
                        self._publish(session, name, args, kwargs, result)
                    return True, result
                if name == LEASE:
                    return True, self._lease(session, args)
                changes_env = name not in READ_ONLY_CALLS
                if changes_env:
                    self._check_control(session)
                    handle.cached_state = None
                elif name == "get_state" and not args and not kwargs:
                    cached = handle.cached_state
                    if cached is not None and cached[0] == id(session.env):
                        return True, cached[1]
                if name == BATCH_STEP:
                    return True, self._batch_step(session, args, kwargs)
                result = self._invoke(session, name, args, kwargs)
                if changes_env:
                    self._publish(session, name, args, kwargs, result)
                elif name == "get_state" and not args and not kwargs:
                    handle.cached_state = (id(session.env), result)
                return True, result
        except ControlDenied as exc:
            return False, error_body(ErrorKind.CONTROL, exc)
        except UnknownMethodError as exc:
            return False, error_body(ErrorKind.UNKNOWN_METHOD, exc)
        except Exception as exc:
            self.stats["env_errors"] += 1
            return False, error_body(ErrorKind.REMOTE, exc, traceback.format_exc())

    def _check_control(self, session: Session) -> None:
        """Raise :class:`ControlDenied` if ``session`` may not change the env now (env lock held)."""
        if session.role == "observer":
            raise ControlDenied("this client is an observer: it cannot change the env (connect with role='shared')")
        holder = session.handle.lease
        if holder is not None and holder != session.session_id:
            raise LeaseHeld(f"another client (session {holder}) holds the control lease of this env")

    def _lease(self, session: Session, args: tuple) -> Any:
        """``acquire`` / ``release`` / ``holder`` of the control lease (env lock held)."""
        handle = session.handle
        action = args[0] if len(args) == 1 else None
        if action == "holder":
            return handle.lease
        if action == "acquire":
            self._check_control(session)
            handle.lease = session.session_id
            return True
        if action == "release":
            if handle.lease == session.session_id:
                handle.lease = None
                return True
            return False
        raise UnknownMethodError("the lease takes one of 'acquire', 'release', 'holder'")

    def _publish(self, session: Session, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        """Count a call that changed the env, and tell the observers about it."""
        handle = session.handle
        handle.transitions += 1
        publisher = self._publisher
        # only the shared env has observers (not an env a trusted client shipped for itself)
        if publisher is not None and publisher.active and name != GETATTR and handle is self._shared:
            publisher.publish(handle.transitions, name, args, kwargs, result, session.session_id)

    def _batch_step(self, session: Session, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Step once per action, stopping after a step that ends the episode (env lock held).

        Returns the results packed in columns (:mod:`fastenv.batching`).
        """
        if len(args) != 2 or kwargs or not isinstance(args[1], tuple) or len(args[1]) != 2:
            raise TypeError("batch_step takes (count, packed column of actions)")
        count, (kind, column) = args
        if type(count) is not int or not 0 <= count <= MAX_BATCH_STEPS:
            raise ValueError(f"batch_step takes from 0 to {MAX_BATCH_STEPS} actions")
        if kind == EMPTY_DICTS and column != count:  # a count to expand: never larger than the batch
            raise ValueError("batch column length does not match the batch")
        actions = unpack_column(str(kind), column, count)
        step = session.methods.get("step")
        if step is None:
            step = envinfo.resolve_member(session.env, "step")
            session.methods["step"] = step
        results = []
        for action in actions:
            result = step(action)
            self._publish(session, "step", (action,), {}, result)
            results.append(result)
            if _episode_over(result):
                break
        return pack_results(results)

    def _on_attach(self, identity: bytes, message: Message) -> None:
        session = self._session_for(identity, message)
        if session is None:
            return
        try:
            choice = message.body(self.limits)
            if not isinstance(choice, dict) or choice.get("transport") not in ("shm", "tcp"):
                raise ProtocolError("ATTACH body must be {'transport': 'shm' | 'tcp', ...}")
        except FastEnvError as exc:
            self._reply_error(identity, message.request_id, ErrorKind.PROTOCOL, exc)
            return
        arena, session.offered_arena = session.offered_arena, None
        if arena is not None:
            arena.unlink()  # mapped by the client (or refused): the name is no longer needed
        if choice["transport"] == "shm" and session.worker is not None:
            if arena is not None:
                arena.close()
            self._reply_error(identity, message.request_id, ErrorKind.PROTOCOL, ProtocolError("a data plane is already attached"))
            return
        if choice["transport"] == "shm":
            if arena is None or choice.get("nonce") != arena.nonce:
                if arena is not None:
                    arena.close()
                self._reply_error(
                    identity, message.request_id, ErrorKind.PROTOCOL, ProtocolError("shared-memory probe failed: wrong nonce")
                )
                return
            with self._token_lock:
                self._by_token.pop(session.data_token, None)  # no TCP stream for this session
            session.worker = ShmServerWorker(
                arena,
                functools.partial(self._execute, session),
                limits=self.limits,
                max_message_bytes=self.max_message_bytes,
                spin_us=self.shm_spin_us,
            )
            session.worker.start()
            session.transport = "shm"
        elif arena is not None:
            arena.close()
        session.attached = True
        self._reply(identity, Kind.RESULT, message.request_id, {"transport": session.transport})

    def _on_resume(self, identity: bytes, message: Message) -> None:
        """A client whose connection dropped takes its session up again."""
        try:
            body = message.body(self.limits)
            if not isinstance(body, dict) or not isinstance(body.get("session"), str):
                raise ProtocolError("RESUME body must be {'session': id, 'token': bytes}")
            token = body.get("token")
            if not isinstance(token, bytes):
                raise ProtocolError("RESUME needs the session's token")
        except FastEnvError as exc:
            self._reply_error(identity, message.request_id, ErrorKind.PROTOCOL, exc)
            return
        session = self._by_id.get(body["session"])
        if (
            session is None
            or session.ended
            or not hmac.compare_digest(token, session.data_token)
            or session.client_key != message.user_id  # with auth, only the same client key takes it up
        ):
            error = ProtocolError(f"this server holds no session {body['session']} (it restarted or ended it)")
            self._reply_error(identity, message.request_id, ErrorKind.SESSION_LOST, error)
            return
        if session.identity != identity:  # the client came back on a new connection identity
            other = self._sessions.get(identity)
            if other is not None and other is not session:
                self._end_session(other)
            self._sessions.pop(session.identity, None)
            session.identity = identity
            self._sessions[identity] = session
        session.disconnected_since = None
        if session.transport == "tcp":
            with self._token_lock:
                self._by_token[session.data_token] = session
        self.stats["resumed"] += 1
        log.info("session %s resumed", session.session_id)
        self._reply(identity, Kind.RESULT, message.request_id, {"session": session.session_id})

    def _on_bye(self, identity: bytes, message: Message) -> None:
        session = self._sessions.pop(identity, None)
        if session is not None:
            self._end_session(session)
        self._reply(identity, Kind.RESULT, message.request_id, None)

    _HANDLERS: dict[Kind, Callable[[EnvServer, bytes, Message], None]] = {
        Kind.PING: _on_ping,
        Kind.HELLO: _on_hello,
        Kind.CALL: _on_call,
        Kind.BYE: _on_bye,
        Kind.ATTACH: _on_attach,
        Kind.RESUME: _on_resume,
    }

    @staticmethod
    def _invoke(session: Session, name: str, args: tuple, kwargs: dict) -> Any:
        env = session.env
        if name == GETATTR:
            if len(args) != 1 or kwargs:
                raise UnknownMethodError("attribute reads take exactly one name")
            return envinfo.resolve_member(env, args[0])
        if name in envinfo.RESERVED_METHODS:
            raise UnknownMethodError(f"{name!r} cannot be called remotely: close the client to end the session")
        member = envinfo.resolve_member(env, name)
        if not callable(member):
            raise UnknownMethodError(f"{name!r} is an attribute, not a method: read it as env.{name}")
        if name in ("reset", "step") and len(session.methods) < 64:
            session.methods[name] = member  # the hot calls skip the lookup from now on
        return member(*args, **kwargs)

    def _adopt_data_stream(self, token: bytes, sock: Any) -> bool:
        """Bind a client's TCP data stream to its session (called by the data listener's thread).

        A session's stream may be replaced (the client reconnected after a
        drop): the new worker shares the session's reply record, so a call
        re-sent on it is answered once.
        """
        with self._token_lock:
            session = self._by_token.get(token)
            if session is None or session.ended or session.transport == "shm":
                return False
            previous = session.worker
            worker = TcpServerWorker(
                sock,
                functools.partial(self._execute, session),
                limits=self.limits,
                max_message_bytes=self.max_message_bytes,
                compression=session.peer.get("compression"),
                record=session.stream_record,
                on_exit=lambda reason: self._stream_ended(session, worker, reason),
            )
            session.worker = worker
            session.transport = "tcp"
            session.attached = True
            session.disconnected_since = None
        if isinstance(previous, TcpServerWorker):
            previous.stop(timeout=0)
        worker.start()
        return True

    def _stream_ended(self, session: Session, worker: TcpServerWorker, reason: BaseException | None) -> None:
        """A TCP worker ended (worker thread): start the resume window unless it was replaced or stopped."""
        if reason is not None and session.worker is worker and not session.ended:
            session.disconnected_since = time.monotonic()

    def _end_session(self, session: Session) -> None:
        self._sessions_ended += 1
        if self._sessions.get(session.identity) is session:
            del self._sessions[session.identity]
        self._by_id.pop(session.session_id, None)
        with self._token_lock:
            session.ended = True
            self._by_token.pop(session.data_token, None)
        worker, session.worker = session.worker, None
        if worker is not None:
            worker.stop()  # releases the worker's arenas (mapping and descriptor) or stream at once
        if session.offered_arena is not None:
            session.offered_arena.unlink()
            session.offered_arena.close()
        with session.handle.lock:
            if session.handle.lease == session.session_id:
                session.handle.lease = None
        if session.env is not session.handle.env:
            _close_quietly(session.env)  # a vector view made for this session (never closes the env itself)
        if session.owns_env:
            _close_quietly(session.handle.env)
        log.info("session %s closed after %d calls", session.session_id, session.calls)


def _episode_over(result: Any) -> bool:
    """Whether a step result ends the episode (Gymnasium 5-tuple or legacy 4-tuple)."""
    if isinstance(result, tuple) and len(result) == 5:
        return bool(result[2]) or bool(result[3])
    if isinstance(result, tuple) and len(result) == 4:
        return bool(result[2])
    return False


def _is_vector_host(env: Any) -> bool:
    from fastenv.vector.host import VectorHost

    return isinstance(env, VectorHost)


def _process_alive(pid: Any) -> bool:
    """Whether process ``pid`` (on this host) is running; unknown pids count as alive."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _close_quietly(env: Any) -> None:
    close = getattr(env, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # an env that fails to close must not stop the server's shutdown
        log.exception("closing env %r failed", env)
