"""The server's answers to control-connection requests: HELLO, ATTACH, RESUME, BYE, CALL, PING.

Every request is parsed and checked here before anything is done for it; a
malformed or refused request gets a typed error reply to its sender only.
Calls on the control connection go to the dispatcher through the session's
record, so a call re-sent after a drop is answered from it, never run twice.
"""

from __future__ import annotations

import hmac
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from fastenv import envinfo, protocol
from fastenv._version import __version__
from fastenv.control.router import ServerSocket
from fastenv.errors import EncodeError, FastEnvError, LimitExceeded, ProtocolError, ServerBusy
from fastenv.metrics import replied
from fastenv.observe import TransitionPublisher
from fastenv.protocol import Kind, Message
from fastenv.replay import StaleRequest
from fastenv.session.dispatch import Dispatcher, close_quietly
from fastenv.session.envthread import EnvThread
from fastenv.session.registry import SessionRegistry
from fastenv.session.state import SessionState
from fastenv.session.table import EnvHandle, Session
from fastenv.trusted import load_factory
from fastenv.wire import ErrorKind, error_body, parse_call

log = logging.getLogger("fastenv.server")

ROLES = ("shared", "controller", "observer")


class ControlHandlers:
    """Answers the requests that arrive on the control socket (the server's loop calls :meth:`handle`).

    Args:
        socket: the control socket replies go out on.
        registry: the sessions.
        dispatcher: runs calls on envs.
        make_env: a new env from the server's factory (per-client mode).
        env_runner: the thread a new env is built and called on (None: the callers').
        publisher: the transition publisher (None: no observers).
        data_port: the TCP data listener's port (None: no data stream is offered).
        host: the server's host identity, sent in the welcome.
        stats: counters shared with the server.
    """

    def __init__(
        self,
        socket: ServerSocket,
        registry: SessionRegistry,
        dispatcher: Dispatcher,
        *,
        make_env: Callable[[], Any],
        env_runner: Callable[[], EnvThread | None],
        publisher: TransitionPublisher | None,
        data_port: int | None,
        host: dict[str, Any],
        stats: dict[str, int],
    ) -> None:
        self._socket = socket
        self._registry = registry
        self._config = registry.config
        self._dispatcher = dispatcher
        self._make_env = make_env
        self._env_runner = env_runner
        self._publisher = publisher
        self._data_port = data_port
        self._host = host
        self.stats = stats
        self._handlers: dict[Kind, Callable[[bytes, Message], None]] = {
            Kind.PING: self._on_ping,
            Kind.HELLO: self._on_hello,
            Kind.CALL: self._on_call,
            Kind.BYE: self._on_bye,
            Kind.ATTACH: self._on_attach,
            Kind.RESUME: self._on_resume,
        }

    # ------------------------------------------------------------------ replies

    def reply(self, identity: bytes, kind: Kind, request_id: int, value: Any) -> None:
        """Send a reply (an ``encode`` error reply if ``value`` cannot be encoded)."""
        try:
            frames = protocol.pack(kind, request_id, value)
        except EncodeError as exc:
            frames = protocol.pack(Kind.ERROR, request_id, error_body(ErrorKind.ENCODE, exc))
        self._socket.send(identity, frames)

    def reply_error(self, identity: bytes, request_id: int, kind: ErrorKind, exc: BaseException, tb: str = "") -> None:
        """Send an ERROR reply for ``exc``."""
        if isinstance(exc, LimitExceeded):
            self.stats["limit_errors"] += 1
        self.reply(identity, Kind.ERROR, request_id, error_body(kind, exc, tb))

    # ------------------------------------------------------------------ requests

    def handle(self, frames: list[Any]) -> None:
        """Answer one request: ``[identity, header, body...]`` as the ROUTER socket received it."""
        self.stats["requests"] += 1
        identity = frames[0].bytes
        body = frames[1:]
        try:
            message = protocol.unpack(body)
        except ProtocolError as exc:
            self.stats["protocol_errors"] += 1
            self.reply_error(identity, protocol.peek_request_id(body), ErrorKind.PROTOCOL, exc)
            return
        if message.version != protocol.PROTOCOL_VERSION:
            self.stats["protocol_errors"] += 1
            text = f"server speaks fastenv protocol v{protocol.PROTOCOL_VERSION} (fastenv {__version__})"
            self._socket.send(identity, protocol.pack_text(Kind.VERSION_MISMATCH, message.request_id, text))
            return
        if self._config.authenticated and message.kind in (Kind.HELLO, Kind.RESUME):
            message.user_id = protocol.user_id_of(body[0])
        handler = self._handlers.get(message.kind)
        if handler is None:
            self.stats["protocol_errors"] += 1
            self.reply_error(identity, message.request_id, ErrorKind.PROTOCOL, ProtocolError(f"unexpected {message.kind.name}"))
            return
        try:
            handler(identity, message)
        except Exception as exc:  # a bug in one request must not take the server down
            log.exception("internal error handling %s", message.kind.name)
            self.reply_error(identity, message.request_id, ErrorKind.INTERNAL, exc, traceback.format_exc())

    def _on_ping(self, identity: bytes, message: Message) -> None:
        received = time.time_ns()  # the server's wall clock: the client estimates the offset between hosts
        self.reply(identity, Kind.PONG, message.request_id, {"received": received, "replied": time.time_ns()})

    def _parse_hello(self, identity: bytes, message: Message) -> tuple[dict[str, Any], str, Callable[[], Any] | None]:
        """The HELLO's peer description, role and shipped factory (trusted mode), checked."""
        peer = message.body(self._config.limits)
        if not isinstance(peer, dict):
            raise ProtocolError("HELLO body must be a dict")
        if not isinstance(peer.get("host", {}), dict):
            raise ProtocolError("HELLO 'host' must be a dict (hostname, boot_id, pid)")
        if peer.get("compression") not in (None, "lz4", "zstd"):
            raise ProtocolError(f"unknown compression {peer.get('compression')!r}: use 'lz4', 'zstd' or None")
        if peer.get("tensors", "torch") not in ("torch", "numpy"):
            raise ProtocolError(f"unknown tensor form {peer.get('tensors')!r}: use 'torch' or 'numpy'")
        role = peer.get("role", "shared")
        if role not in ROLES:
            raise ProtocolError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        if role == "observer" and self._publisher is None:
            raise ProtocolError("this server has no observers: they need a server in shared mode")
        table = self._registry.table
        if table.by_identity(identity) is None and len(table) >= self._config.max_sessions:
            raise ServerBusy(
                f"the server holds {self._config.max_sessions} sessions, its limit (max_sessions): try again later"
            )
        shipped = None
        if "factory" in peer:  # trusted mode: checked before anything is loaded
            if role == "observer":
                raise ProtocolError("an observer cannot ship an env factory")
            shipped = load_factory(peer["factory"], allowed=self._config.allow_trusted, user_id=message.user_id)
        peer.pop("factory", None)
        return peer, role, shipped

    def _on_hello(self, identity: bytes, message: Message) -> None:
        try:
            peer, role, shipped = self._parse_hello(identity, message)
        except FastEnvError as exc:
            self.stats["protocol_errors"] += 1
            self.reply_error(identity, message.request_id, ErrorKind.PROTOCOL, exc)
            return
        except Exception as exc:  # a shipped factory that does not load here (a module missing...)
            self.stats["env_errors"] += 1
            self.reply_error(identity, message.request_id, ErrorKind.REMOTE, exc, traceback.format_exc())
            return
        old = self._registry.table.by_identity(identity)
        if old is not None:
            self._registry.end(old)
        handle: EnvHandle | None = self._dispatcher.shared
        owns = self._config.mode == "per-client" or shipped is not None
        runner = None
        try:
            if owns:  # a new env, built on the thread all its calls will run on
                runner = self._env_runner()
                made = EnvHandle(None, runner=runner)
                made.env = made.on_env_thread(shipped if shipped is not None else self._make_env)
                handle = made
            assert handle is not None
            env, description = handle.on_env_thread(_described, handle.env, bool(peer.get("vector")))
        except Exception as exc:
            self.stats["env_errors"] += 1
            if owns and handle is not None and handle is not self._dispatcher.shared:
                if handle.env is not None:
                    handle.on_env_thread(close_quietly, handle.env)
                if handle.runner is not None and handle.runner.dedicated:
                    handle.runner.stop()
            elif runner is not None and runner.dedicated:
                runner.stop()
            self.reply_error(identity, message.request_id, ErrorKind.REMOTE, exc, traceback.format_exc())
            return
        session = self._registry.open(
            identity,
            handle,
            env,
            owns_env=owns,
            peer=peer,
            role=role,
            client_key=message.user_id,
            offer_shm=self._config.shm and peer.get("transport", "auto") != "tcp",
        )
        log.info(
            "session %s opened by %s (%s%s)",
            session.session_id,
            peer.get("host"),
            role,
            f", key {session.client_key}" if session.client_key else "",
        )
        self.reply(identity, Kind.WELCOME, message.request_id, self._welcome(session, description, shipped is not None))

    def _welcome(self, session: Session, description: dict[str, Any], trusted: bool) -> dict[str, Any]:
        config = self._config
        arena = session.offered_arena
        return {
            "session": session.session_id,
            "server": {
                "fastenv": __version__,
                "protocol": protocol.PROTOCOL_VERSION,
                "host": self._host,
                "mode": config.mode,
                "heartbeat_interval": config.heartbeat_interval,
                "auth": config.authenticated,
                "trusted": trusted,
                "limits": {
                    "max_message_bytes": config.max_message_bytes,
                    "max_pending": config.max_pending,
                    "max_sessions": config.max_sessions,
                },
            },
            "env": description,
            "env_hash": envinfo.description_hash(description),
            "token": session.token,  # proves the session is ours in RESUME (with or without a data stream)
            "shm": _shm_offer(arena.name, session.env) if arena is not None else None,
            "tcp": {"port": self._data_port, "token": session.token} if session.stream is not None else None,
            "observe": {"port": self._publisher.port} if self._publisher is not None else None,
        }

    def _session_for(self, identity: bytes, message: Message) -> Session | None:
        session = self._registry.table.by_identity(identity)
        if session is None:
            self.reply_error(identity, message.request_id, ErrorKind.NO_SESSION, ProtocolError("no session: send HELLO first"))
        return session

    def _on_call(self, identity: bytes, message: Message) -> None:
        session = self._session_for(identity, message)
        if session is None:
            return
        try:
            name, args, kwargs = parse_call(message.body(self._config.limits))
        except (FastEnvError, ValueError, TypeError) as exc:
            self.stats["protocol_errors"] += 1
            self.reply_error(identity, message.request_id, ErrorKind.PROTOCOL, exc)
            return
        execute = self._dispatcher.executor_for(session)
        try:
            ok, value = session.call_record.run(message.request_id, lambda: execute(name, args, kwargs))
        except StaleRequest:
            return  # a duplicate of a request the client has given up on: nobody waits for a reply
        self.reply(identity, Kind.RESULT if ok else Kind.ERROR, message.request_id, value)
        replied(execute)

    def _on_attach(self, identity: bytes, message: Message) -> None:
        session = self._session_for(identity, message)
        if session is None:
            return
        try:
            choice = message.body(self._config.limits)
            if not isinstance(choice, dict) or choice.get("transport") not in ("shm", "tcp"):
                raise ProtocolError("ATTACH body must be {'transport': 'shm' | 'tcp', ...}")
        except FastEnvError as exc:
            self.reply_error(identity, message.request_id, ErrorKind.PROTOCOL, exc)
            return
        arena, session.offered_arena = session.offered_arena, None
        if arena is not None:
            arena.unlink()  # mapped by the client (or refused): the name is no longer needed
        if choice["transport"] == "shm":
            error = None
            if session.state is not SessionState.OFFERED:
                error = ProtocolError("a data plane is already attached, or no shared memory was offered")
            elif arena is None or choice.get("nonce") != arena.nonce:
                error = ProtocolError("shared-memory probe failed: wrong nonce")
            if error is not None:
                if arena is not None:
                    arena.close()
                self.reply_error(identity, message.request_id, ErrorKind.PROTOCOL, error)
                return
            self._registry.attach_shm(session, arena)
        elif arena is not None:
            arena.close()
        session.state = SessionState.ACTIVE
        self.reply(identity, Kind.RESULT, message.request_id, {"transport": session.plane})

    def _on_resume(self, identity: bytes, message: Message) -> None:
        """A client whose connection dropped takes its session up again."""
        try:
            body = message.body(self._config.limits)
            if not isinstance(body, dict) or not isinstance(body.get("session"), str):
                raise ProtocolError("RESUME body must be {'session': id, 'token': bytes}")
            token = body.get("token")
            if not isinstance(token, bytes):
                raise ProtocolError("RESUME needs the session's token")
        except FastEnvError as exc:
            self.reply_error(identity, message.request_id, ErrorKind.PROTOCOL, exc)
            return
        session = self._registry.table.by_id(body["session"])
        if (
            session is None
            or session.ended
            or not hmac.compare_digest(token, session.token)
            or session.client_key != message.user_id  # with auth, only the same client key takes it up
        ):
            error = ProtocolError(f"this server holds no session {body['session']} (it restarted or ended it)")
            self.reply_error(identity, message.request_id, ErrorKind.SESSION_LOST, error)
            return
        self._registry.resume(session, identity)
        self.stats["resumed"] += 1
        log.info("session %s resumed", session.session_id)
        self.reply(identity, Kind.RESULT, message.request_id, {"session": session.session_id})

    def _on_bye(self, identity: bytes, message: Message) -> None:
        """A client closes its session: found by its connection, or by id and token from a new connection.

        A client on shared memory needs no control traffic to call, so its
        control connection may have been cut and renewed without a RESUME:
        its BYE then names the session and proves it is its own.
        """
        session = self._registry.table.by_identity(identity)
        if session is None:
            try:
                body = message.body(self._config.limits)
            except FastEnvError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("token"), bytes):
                named = self._registry.table.by_id(str(body.get("session")))
                if (
                    named is not None
                    and hmac.compare_digest(body["token"], named.token)
                    and named.client_key == message.user_id
                ):
                    session = named
        if session is not None:
            self._registry.end(session)
        self.reply(identity, Kind.RESULT, message.request_id, None)


def _shm_offer(name: str, env: Any) -> dict[str, Any]:
    """The shared-memory offer of a welcome: the arena's name, and the env's spin hint for the client."""
    offer: dict[str, Any] = {"name": name}
    spin_us = envinfo.client_spin_hint(env)
    if spin_us is not None:
        offer["client_spin_us"] = spin_us
    return offer


def _described(env: Any, vector: bool) -> tuple[Any, dict[str, Any]]:
    """What a session's calls run on (a vector view when asked for) and its description (on the env's thread)."""
    if vector:
        env = _vector_view(env)
    return env, envinfo.describe(env)


def _vector_view(env: Any) -> Any:
    """``env`` as a vector env: itself if it is or stands in for one (a served recording of a vector
    server), else a VectorHost of one (needs Gymnasium)."""
    if envinfo.stands_in_for_vector(env):
        return env
    from fastenv.vector.host import VectorHost  # optional dependency (Gymnasium), loaded only for vector clients

    return env if isinstance(env, VectorHost) else VectorHost([env], close_envs=False)
