"""EnvServer: owns the env(s), accepts sessions and dispatches calls.

One thread runs the ZeroMQ control loop (handshakes, ATTACH, BYE, and calls
of clients without a data plane); each session on shared memory or the TCP
stream has a worker thread for its calls. Every call takes its env's lock, so
calls on one env are applied one at a time, which is what makes *shared* mode
(every client drives the same env) well defined. In *per-client* mode each
session gets its own env from the factory, closed when the session ends.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from fastenv import codec, envinfo, protocol
from fastenv._version import __version__
from fastenv.codec import Limits
from fastenv.control.address import check_bind_allowed, host_identity
from fastenv.control.router import ServerSocket
from fastenv.errors import EncodeError, FastEnvError, ProtocolError, ServerConfigError, UnknownMethodError
from fastenv.protocol import GETATTR, Kind, Message
from fastenv.shm.arena import Arena, reclaim_stale
from fastenv.shm.plane import DEFAULT_SHAPE, SERVER_SPIN_US, ShmServerWorker
from fastenv.tcp.plane import TcpDataListener, TcpServerWorker

log = logging.getLogger("fastenv.server")

MODES = ("shared", "per-client")


@dataclass
class Session:
    """One connected client."""

    session_id: str
    identity: bytes
    env: Any
    owns_env: bool
    env_lock: threading.Lock
    peer: dict[str, Any] = field(default_factory=dict)
    calls: int = 0
    transport: str = "tcp"
    methods: dict[str, Any] = field(default_factory=dict)  # resolved bound methods, by name
    offered_arena: Arena | None = None  # created at HELLO, until the client proves it can map it
    data_token: bytes = b""  # presented by the client's TCP data stream
    worker: ShmServerWorker | TcpServerWorker | None = None
    ended: bool = False


class EnvServer:
    """Serve an env instance (shared mode) or an env factory (per-client mode).

    Args:
        env: an env instance; every client drives this one env.
        factory: a zero-argument callable making an env; each client gets its own
            (or, with ``mode="shared"``, one env is made up front and shared).
        bind: interface to listen on. Anything but loopback needs ``insecure=True``.
        port: TCP port; 0 picks a free one (see :attr:`address`).
        mode: ``"shared"`` or ``"per-client"``; defaults to shared for ``env``,
            per-client for ``factory``.
        insecure: allow a non-loopback bind without authentication.
        limits: decoder limits applied to everything clients send.
        max_message_bytes: ZeroMQ drops peers that send a larger frame.
        close_env: close a shared env on shutdown (default: only if the server made it).
        shm: offer the shared-memory data plane to clients on this host.
        shm_slots: reply slots per session arena (a client's views stay valid
            for ``shm_slots - 1`` further calls).
        shm_spin_us: how long a shared-memory worker spins for the next request
            before sleeping (default :data:`fastenv.shm.plane.SERVER_SPIN_US`).
        data_port: TCP port of the data stream that carries calls for clients
            without shared memory (0: a free port; clients learn it in the handshake).

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
    ) -> None:
        if (env is None) == (factory is None):
            raise ServerConfigError("give EnvServer exactly one of env= or factory=")
        mode = mode or ("shared" if env is not None else "per-client")
        if mode not in MODES:
            raise ServerConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "per-client" and factory is None:
            raise ServerConfigError("per-client mode needs a factory (each client gets its own env)")
        check_bind_allowed(bind, insecure=insecure)
        self.mode = mode
        self.bind_host = bind
        self.port = port
        self.insecure = insecure
        self.limits = limits
        self.max_message_bytes = max_message_bytes
        self._factory = factory
        self._shared_env = env
        self._close_shared = close_env if close_env is not None else env is None
        self._shared_lock = threading.Lock()
        self.shm = shm
        if shm_slots < 2:
            raise ServerConfigError("shm_slots must be at least 2")
        self._arena_shape = dataclasses.replace(DEFAULT_SHAPE, slots=shm_slots)
        self.shm_spin_us = SERVER_SPIN_US if shm_spin_us is None else shm_spin_us
        self.data_port = data_port
        self._socket: ServerSocket | None = None
        self._data_listener: TcpDataListener | None = None
        self._sessions: dict[bytes, Session] = {}
        self._by_token: dict[bytes, Session] = {}
        self._token_lock = threading.Lock()  # the data listener adopts streams from its own thread
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._identity = host_identity()
        self.stats = {"requests": 0, "protocol_errors": 0, "env_errors": 0}

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
                assert self._factory is not None
                self._shared_env = self._factory()
            if self.shm:
                for name in reclaim_stale():
                    log.warning("removed stale shared-memory segment %s (its owner is dead)", name)
            self._socket = ServerSocket(self.bind_host, self.port, max_message_bytes=self.max_message_bytes)
            try:
                self._data_listener = TcpDataListener(
                    self.bind_host, self.data_port, on_connection=self._adopt_data_stream
                )
            except FastEnvError:
                self._socket.close()
                self._socket = None
                raise
        return self._socket

    def serve_forever(self, poll_interval: float = 0.25) -> None:
        """Serve until :meth:`stop` (or KeyboardInterrupt); then close sessions and sockets."""
        sock = self._bind()
        poller = zmq.Poller()
        poller.register(sock.socket, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                if not poller.poll(int(poll_interval * 1000)):
                    continue
                while not self._stopping.is_set():
                    frames = sock.recv()
                    if frames is None:
                        break
                    self._handle(frames)
        finally:
            self._shutdown()

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
        if self._data_listener is not None:
            self._data_listener.close()
        if self._socket is not None:
            self._socket.close()

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
            frames = protocol.pack(Kind.ERROR, request_id, protocol.error_body("encode", "EncodeError", str(exc)))
        self._socket.send(identity, frames)

    def _reply_error(self, identity: bytes, request_id: int, kind: str, exc: BaseException, tb: str = "") -> None:
        self._reply(identity, Kind.ERROR, request_id, protocol.error_body(kind, _type_name(exc), str(exc), tb))

    def _handle(self, frames: list[Any]) -> None:
        self.stats["requests"] += 1
        identity = frames[0].bytes
        body = frames[1:]
        try:
            message = protocol.unpack(body)
        except ProtocolError as exc:
            self.stats["protocol_errors"] += 1
            self._reply_error(identity, protocol.peek_request_id(body), "protocol", exc)
            return
        if message.version != protocol.PROTOCOL_VERSION:
            self.stats["protocol_errors"] += 1
            text = f"server speaks fastenv protocol v{protocol.PROTOCOL_VERSION} (fastenv {__version__})"
            self._socket.send(identity, protocol.pack_text(Kind.VERSION_MISMATCH, message.request_id, text))  # type: ignore[union-attr]
            return
        try:
            handler = self._HANDLERS[message.kind]
        except KeyError:
            self.stats["protocol_errors"] += 1
            self._reply_error(identity, message.request_id, "protocol", ProtocolError(f"unexpected {message.kind.name}"))
            return
        try:
            handler(self, identity, message)
        except Exception as exc:  # a bug in one request must not take the server down
            log.exception("internal error handling %s", message.kind.name)
            self._reply_error(identity, message.request_id, "internal", exc, traceback.format_exc())

    def _on_ping(self, identity: bytes, message: Message) -> None:
        self._reply(identity, Kind.PONG, message.request_id, None)

    def _on_hello(self, identity: bytes, message: Message) -> None:
        try:
            peer = message.body(self.limits)
            if not isinstance(peer, dict):
                raise ProtocolError("HELLO body must be a dict")
            if peer.get("compression") not in (None, "lz4", "zstd"):
                raise ProtocolError(f"unknown compression {peer.get('compression')!r}: use 'lz4', 'zstd' or None")
        except FastEnvError as exc:
            self.stats["protocol_errors"] += 1
            self._reply_error(identity, message.request_id, "protocol", exc)
            return
        old = self._sessions.pop(identity, None)
        if old is not None:
            self._end_session(old)
        try:
            if self.mode == "per-client":
                assert self._factory is not None
                env, owns, lock = self._factory(), True, threading.Lock()
            else:
                env, owns, lock = self._shared_env, False, self._shared_lock
            description = envinfo.describe(env)
        except Exception as exc:
            self.stats["env_errors"] += 1
            self._reply_error(identity, message.request_id, "remote", exc, traceback.format_exc())
            return
        session = Session(os.urandom(8).hex(), identity, env, owns, lock, peer, data_token=os.urandom(16))
        self._sessions[identity] = session
        with self._token_lock:
            self._by_token[session.data_token] = session
        offer = None
        if self.shm and peer.get("transport", "auto") != "tcp":
            try:
                session.offered_arena = Arena.create(self._arena_shape)
                offer = {"name": session.offered_arena.name}
            except OSError as exc:
                log.warning("cannot offer shared memory: %s", exc)
        log.info("session %s opened by %s", session.session_id, peer.get("host"))
        welcome = {
            "session": session.session_id,
            "server": {
                "fastenv": __version__,
                "protocol": protocol.PROTOCOL_VERSION,
                "host": self._identity,
                "mode": self.mode,
            },
            "env": description,
            "env_hash": envinfo.description_hash(description),
            "shm": offer,
            "tcp": {"port": self._data_listener.port, "token": session.data_token} if self._data_listener else None,
        }
        self._reply(identity, Kind.WELCOME, message.request_id, welcome)

    def _on_call(self, identity: bytes, message: Message) -> None:
        session = self._sessions.get(identity)
        if session is None:
            self._reply_error(
                identity, message.request_id, "no_session", ProtocolError("no session: send HELLO first")
            )
            return
        try:
            name, args, kwargs = _parse_call(message.body(self.limits))
        except (FastEnvError, ValueError, TypeError) as exc:
            self.stats["protocol_errors"] += 1
            self._reply_error(identity, message.request_id, "protocol", exc)
            return
        kind, value = self._execute(session, name, args, kwargs)
        self._reply(identity, kind, message.request_id, value)

    def _execute(self, session: Session, name: str, args: tuple, kwargs: dict) -> tuple[Kind, Any]:
        """Run one call on the session's env; ``(RESULT, value)`` or ``(ERROR, error body)``.

        Used by the ZeroMQ path and by shared-memory workers; the env lock
        applies calls one at a time.
        """
        session.calls += 1
        try:
            with session.env_lock:
                method = session.methods.get(name)
                if method is not None:
                    return Kind.RESULT, method(*args, **kwargs)
                return Kind.RESULT, self._invoke(session, name, args, kwargs)
        except UnknownMethodError as exc:
            return Kind.ERROR, protocol.error_body("unknown_method", _type_name(exc), str(exc))
        except Exception as exc:
            self.stats["env_errors"] += 1
            return Kind.ERROR, protocol.error_body("remote", _type_name(exc), str(exc), traceback.format_exc())

    def _on_attach(self, identity: bytes, message: Message) -> None:
        session = self._sessions.get(identity)
        if session is None:
            self._reply_error(identity, message.request_id, "no_session", ProtocolError("no session: send HELLO first"))
            return
        try:
            choice = message.body(self.limits)
            if not isinstance(choice, dict) or choice.get("transport") not in ("shm", "tcp"):
                raise ProtocolError("ATTACH body must be {'transport': 'shm' | 'tcp', ...}")
        except FastEnvError as exc:
            self._reply_error(identity, message.request_id, "protocol", exc)
            return
        arena, session.offered_arena = session.offered_arena, None
        if arena is not None:
            arena.unlink()  # mapped by the client (or refused): the name is no longer needed
        if choice["transport"] == "shm" and session.worker is not None:
            if arena is not None:
                arena.close()
            self._reply_error(identity, message.request_id, "protocol", ProtocolError("a data plane is already attached"))
            return
        if choice["transport"] == "shm":
            if arena is None or choice.get("nonce") != arena.nonce:
                if arena is not None:
                    arena.close()
                self._reply_error(
                    identity, message.request_id, "protocol", ProtocolError("shared-memory probe failed: wrong nonce")
                )
                return
            with self._token_lock:
                self._by_token.pop(session.data_token, None)  # no TCP stream for this session
            session.worker = ShmServerWorker(
                arena,
                lambda name, args, kwargs: _succeeded(self._execute(session, name, args, kwargs)),
                limits=self.limits,
                max_message_bytes=self.max_message_bytes,
                spin_us=self.shm_spin_us,
            )
            session.worker.start()
            session.transport = "shm"
        elif arena is not None:
            arena.close()
        self._reply(identity, Kind.RESULT, message.request_id, {"transport": session.transport})

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
        """Bind a client's TCP data stream to its session (called by the data listener's thread)."""
        with self._token_lock:
            session = self._by_token.pop(token, None)
            if session is None or session.ended or session.worker is not None:
                return False
            session.worker = TcpServerWorker(
                sock,
                lambda name, args, kwargs: _succeeded(self._execute(session, name, args, kwargs)),
                limits=self.limits,
                max_message_bytes=self.max_message_bytes,
                compression=session.peer.get("compression"),
            )
            session.transport = "tcp"
        session.worker.start()
        return True

    def _end_session(self, session: Session) -> None:
        self._sessions.pop(session.identity, None)
        with self._token_lock:
            session.ended = True
            self._by_token.pop(session.data_token, None)
        if session.worker is not None:
            session.worker.stop()
        if session.offered_arena is not None:
            session.offered_arena.unlink()
            session.offered_arena.close()
        if session.owns_env:
            _close_quietly(session.env)
        log.info("session %s closed after %d calls", session.session_id, session.calls)


def _parse_call(body: Any) -> tuple[str, tuple, dict]:
    if not (isinstance(body, tuple) and len(body) == 3):
        raise ProtocolError("CALL body must be (name, args, kwargs)")
    name, args, kwargs = body
    if not isinstance(name, str) or not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise ProtocolError("CALL body must be (str, tuple, dict)")
    if not all(isinstance(key, str) for key in kwargs):
        raise ProtocolError("keyword argument names must be strings")
    return name, tuple(args), kwargs


def _succeeded(outcome: tuple[Kind, Any]) -> tuple[bool, Any]:
    kind, value = outcome
    return kind is Kind.RESULT, value


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _close_quietly(env: Any) -> None:
    close = getattr(env, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # an env that fails to close must not stop the server's shutdown
        log.exception("closing env %r failed", env)
