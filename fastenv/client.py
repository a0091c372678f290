"""FastRemoteEnv: the client object that behaves like the served env."""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil

from fastenv import (
    gym_types,  # noqa: F401  (registers Gymnasium spaces with the codec)
    protocol,
)
from fastenv._version import __version__
from fastenv.batching import pack_column, unpack_results
from fastenv.control.address import host_identity, normalize_address, refuses_connections, split_endpoint
from fastenv.control.auth import AuthLike, client_auth
from fastenv.control.dealer import ClientChannel
from fastenv.errors import (
    AlreadyPendingError,
    ClientClosedError,
    ConnectionLost,
    ControlDenied,
    FastEnvError,
    FastEnvTimeout,
    LeaseHeld,
    NoPendingCallError,
    ProtocolError,
    ProtocolVersionError,
    SessionLost,
    TransportError,
    TrustedModeError,
    UnknownMethodError,
)
from fastenv.observe import Transition, TransitionSubscriber
from fastenv.protocol import BATCH_STEP, GETATTR, LEASE, Kind, Message
from fastenv.shm.arena import Arena
from fastenv.shm.plane import ShmClientPlane
from fastenv.tcp.plane import StreamRefused, TcpClientPlane, connect_data_stream
from fastenv.trusted import NOT_AUTHENTICATED, pack_factory
from fastenv.wire import error_from_body, is_session_gone

TRANSPORTS = ("auto", "shm", "tcp")
ROLES = ("shared", "controller", "observer")
SESSION_LOST_POLICIES = ("raise", "recreate")
RECONNECT_BACKOFF_S = (0.02, 0.5)  # first and longest pause between attempts to resume a session
RESUME_ATTEMPT_S = (0.25, 1.0)  # first and longest wait for the answer to one RESUME
REFUSAL_PROBE_S = 0.5  # how long a check that the server's port refuses connections may take
_MISSING = object()


_CALL_LABELS = {"step": "step()", "reset": "reset()", "get_state": "get_state()"}


@dataclass
class _Pending:
    """A call sent and not yet answered."""

    body: tuple[str, tuple, dict]
    what: str
    ticket: Any  # the data plane's ticket, or the control request id
    deadline: float | None  # of the send; receive_result() sets its own
    sent: bool = True  # False: the connection dropped before it could be sent


class FastRemoteEnv:
    """A remote env that looks like the local one.

    ``reset``, ``step``, ``render``, ``get_state``, ``set_state`` and every other
    public method of the served env can be called with the same arguments and
    return exactly what the env returned (same structure, dtypes, shapes and
    Python/numpy types). ``observation_space``, ``action_space``, ``spec``,
    ``metadata`` and ``render_mode`` are read from the handshake; other public
    attributes are fetched on access.

    Args:
        address: ``tcp://host:port`` or ``host:port`` as printed by ``fastenv serve``.
        timeout: seconds any call may take before :class:`~fastenv.FastEnvTimeout`
            (settable later through :attr:`timeout`; ``None`` waits forever).
        connect_timeout: seconds the handshake may take.
        transport: how calls and observations travel. ``"auto"`` (the default)
            picks shared memory when a probe proves the client can map the
            server's segment (same host, same /dev/shm), TCP otherwise;
            ``"shm"`` requires shared memory; ``"tcp"`` never uses it.
            :attr:`transport` and :attr:`transport_reason` say what was chosen and why.
        copy: on shared memory, return owned arrays instead of read-only views
            into the arena. A view stays valid for ``shm_slots - 1`` further calls
            (:attr:`views_valid_for`); over TCP arrays are always owned.
        spin_us: on shared memory, how long to spin for a reply before sleeping
            (default :data:`fastenv.shm.plane.CLIENT_SPIN_US`); spinning trades a
            little CPU for latency.
        compression: over TCP, compress arrays (``"lz4"`` or ``"zstd"``) in both
            directions; for slow links only (off by default, needs
            ``pip install "fastenv[compress]"``).
        role: on a shared env, ``"shared"`` (the default: drive it together with
            other clients), ``"controller"`` (take the control lease: nobody else
            may change the env until this client closes or calls
            :meth:`release_control`), or ``"observer"`` (read only; receive every
            call that changed the env with :meth:`next_transition`).
        lease_timeout: how long a controller (or :meth:`acquire_control`) waits
            for a lease another client holds before raising :class:`~fastenv.LeaseHeld`.
        vector: ask for a vector view of the server's env(s): batched
            ``reset``/``step`` (used by :class:`fastenv.FastVectorEnv`).
        reconnect: after a dropped connection, reconnect and resume the session
            (bounded by the call's timeout); a call that was in flight is sent
            again and the server answers it from its record, so it is applied once.
        on_session_lost: when the server no longer holds the session (it
            restarted): ``"raise"`` :class:`~fastenv.SessionLost`, or
            ``"recreate"`` a session, reset it with the last ``reset`` arguments,
            and raise ``SessionLost`` with ``recreated=True`` and the reset's result
            (an interrupted ``reset`` is simply run again).
        heartbeat_interval: seconds between control-channel heartbeats; a dead
            server is noticed within two intervals, even while the client is idle.
        auth: CURVE keys for a server started with ``--auth``: a key directory
            (``client.key_secret``, and ``server.key``, the pinned server key)
            or an :class:`~fastenv.control.auth.AuthConfig`. The connection is
            then encrypted; a refusal raises an
            :class:`~fastenv.AuthenticationError` subclass saying which side
            refused. Without it, a server that requires authentication raises
            :class:`~fastenv.AuthenticationRequired`.
        factory: trusted mode (see :meth:`create`): a zero-argument callable,
            cloudpickled and run by the server to make this session's env.
            Needs ``auth`` and a server started with ``--allow-trusted``.

    Example::

        with FastRemoteEnv("127.0.0.1:5555") as env:
            obs, info = env.reset(seed=0)
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = 60.0,
        connect_timeout: float = 10.0,
        transport: str = "auto",
        copy: bool = False,
        spin_us: int | None = None,
        compression: str | None = None,
        role: str = "shared",
        lease_timeout: float = 0.0,
        vector: bool = False,
        reconnect: bool = True,
        on_session_lost: str = "raise",
        heartbeat_interval: float | None = None,
        auth: AuthLike | None = None,
        factory: Callable[[], Any] | None = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        if on_session_lost not in SESSION_LOST_POLICIES:
            raise ValueError(f"on_session_lost must be one of {', '.join(SESSION_LOST_POLICIES)}")
        self._auth = client_auth(auth)
        if factory is not None and self._auth is None:
            raise TrustedModeError(f"{NOT_AUTHENTICATED}: pass auth= (the factory is never sent unauthenticated)")
        if factory is not None and role == "observer":
            raise ValueError("an observer cannot ship an env factory")
        self._channel: ClientChannel | None = None
        self._plane: ShmClientPlane | TcpClientPlane | None = None
        self._observer: TransitionSubscriber | None = None
        self._pending: _Pending | None = None
        self._lost_session: SessionLost | None = None
        self._last_reset: tuple[tuple, dict] | None = None
        self.address = normalize_address(address)
        self.timeout = timeout
        self.role = role
        self.reconnect = reconnect
        self.on_session_lost = on_session_lost
        self._options = {
            "transport": transport,
            "copy": copy,
            "spin_us": spin_us,
            "compression": compression,
            "vector": vector,
        }
        self._factory_payload = pack_factory(factory) if factory is not None else None
        channel_options: dict[str, Any] = {"auth": self._auth}
        if heartbeat_interval is not None:
            channel_options["heartbeat_interval"] = heartbeat_interval
        self._channel = ClientChannel(self.address, **channel_options)
        try:
            self._connect_session(connect_timeout, retry_timeouts=False)
            if role == "controller":
                self.acquire_control(lease_timeout)
            elif role == "observer":
                self._subscribe(connect_timeout)
        except BaseException:
            self._close_planes()
            self._channel.close()
            raise

    @classmethod
    def launch(cls, ssh_host: str, target: str, **kwargs: Any) -> FastRemoteEnv:
        """Start ``fastenv serve TARGET`` on ``ssh_host`` over SSH and connect to it.

        Closing the returned env also stops the remote server. Keyword
        arguments go to :func:`fastenv.launch.launch_and_connect` (``setup``,
        ``cwd``, ``python``, ``tunnel``, ... and the client's own options).
        """
        from fastenv.launch.launcher import launch_and_connect

        return launch_and_connect(ssh_host, target, **kwargs)

    @classmethod
    def create(
        cls, factory: Callable[[], Any], address: str, *, auth: AuthLike, **kwargs: Any
    ) -> FastRemoteEnv:
        """Trusted mode: ship ``factory`` to the server, which runs it to make this session's env.

        For envs defined where the client runs (a notebook, a closure): the
        factory is cloudpickled and sent, only over the authenticated
        connection ``auth`` opens, to a server started with
        ``fastenv serve --allow-trusted --auth DIR`` (any target: this
        session's env comes from the factory, is this session's own, and is
        closed with it). Whatever the factory needs must be importable on
        the server. Raises :class:`~fastenv.TrustedModeError` when the
        server does not allow it; ``kwargs`` are those of the constructor.

        Example::

            env = FastRemoteEnv.create(lambda: MyEnv(level=3), "gpu-box:5555", auth="~/.fastenv/keys")
        """
        return cls(address, auth=auth, factory=factory, **kwargs)

    def _connect_session(self, timeout: float, *, retry_timeouts: bool) -> None:
        """:meth:`_open_session`, again with backoff while the connection drops on the way, for ``timeout`` seconds.

        A HELLO sent again replaces the session the first one may have opened
        (the server keys sessions by connection). ``retry_timeouts``: also try
        again after an attempt that got no answer in time.
        """
        deadline = time.monotonic() + timeout
        pause, longest = RECONNECT_BACKOFF_S
        while True:
            try:
                self._open_session(max(0.001, deadline - time.monotonic()))
                return
            except (ConnectionLost, FastEnvTimeout) as exc:
                self._close_planes()
                if isinstance(exc, SessionLost) or (isinstance(exc, FastEnvTimeout) and not retry_timeouts):
                    raise
                if time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, longest)

    def _open_session(self, timeout: float) -> None:
        """Handshake, shared-memory probe and data plane: a new session on the server."""
        transport, compression = self._options["transport"], self._options["compression"]
        welcome = self._handshake(timeout, transport, compression)
        self._welcome = welcome
        limits = welcome.get("server", {}).get("limits") or {}
        assert self._channel is not None
        if isinstance(limits.get("max_message_bytes"), int):
            self._channel.max_message_bytes = limits["max_message_bytes"]
        self.transport, self.transport_reason = self._choose_transport(
            welcome, transport, self._options["copy"], self._options["spin_us"], timeout
        )
        if self.transport == "tcp":
            self.transport_reason += "; " + self._open_data_stream(welcome.get("tcp"), compression, timeout)
        self.session_id: str = welcome["session"]
        self.server_info: dict[str, Any] = welcome["server"]
        self.env_info: dict[str, Any] = welcome["env"]
        self.env_hash: str = welcome["env_hash"]
        self._methods = frozenset(self.env_info.get("methods", ()))
        self._attributes: dict[str, Any] = dict(self.env_info.get("attributes", {}))

    def _subscribe(self, timeout: float) -> None:
        offer = self._welcome.get("observe")
        if not offer:
            raise ProtocolError("the server offers no transition stream")
        host = self.address.removeprefix("tcp://").rpartition(":")[0]  # brackets kept: a ZeroMQ endpoint
        self._observer = TransitionSubscriber(f"tcp://{host}:{int(offer['port'])}", timeout=timeout, auth=self._auth)

    # ------------------------------------------------------------------ plumbing

    def _handshake(self, timeout: float, transport: str, compression: str | None) -> dict[str, Any]:
        hello = {
            "fastenv": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "host": host_identity(),
            "transport": transport,
            "compression": compression,
            "role": self.role,
            "vector": self._options["vector"],
        }
        if self._factory_payload is not None:
            hello["factory"] = self._factory_payload
        assert self._channel is not None
        reply = self._channel.request(Kind.HELLO, hello, timeout, what="the handshake")
        body = self._unwrap(reply)
        if reply.kind is not Kind.WELCOME or not isinstance(body, dict) or "session" not in body:
            raise ProtocolError(f"unexpected handshake reply {reply.kind.name}")
        return body

    def _choose_transport(
        self, welcome: dict[str, Any], wanted: str, copy: bool, spin_us: int | None, timeout: float
    ) -> tuple[str, str]:
        """Run the shared-memory probe and tell the server which data plane to use."""
        assert self._channel is not None
        offer = welcome.get("shm")
        if wanted == "tcp":
            if offer:
                self._unwrap(self._channel.request(Kind.ATTACH, {"transport": "tcp"}, timeout, what="attach"))
            return "tcp", "transport='tcp' was requested"
        if not offer:
            reason = "the server offers no shared memory (started with shm disabled, or /dev/shm unusable there)"
            if wanted == "shm":
                raise TransportError(f"transport='shm' was requested but {reason}")
            return "tcp", f"auto: {reason}"
        try:
            arena = Arena.attach(str(offer.get("name", "")))
        except TransportError as exc:
            reason = f"shared-memory probe failed ({exc}): the server is on another host or another /dev/shm"
            self._unwrap(self._channel.request(Kind.ATTACH, {"transport": "tcp"}, timeout, what="attach"))
            if wanted == "shm":
                raise TransportError(f"transport='shm' was requested but the {reason}") from exc
            return "tcp", f"auto: {reason}"
        try:
            self._unwrap(
                self._channel.request(Kind.ATTACH, {"transport": "shm", "nonce": arena.nonce}, timeout, what="attach")
            )
        except BaseException:
            arena.close()
            raise
        server_pid = welcome.get("server", {}).get("host", {}).get("pid")
        self._plane = ShmClientPlane(arena, functools.partial(self._shm_alive, server_pid), copy=copy, spin_us=spin_us)
        return "shm", (
            f"{'auto: ' if wanted == 'auto' else ''}the client mapped the server's segment and echoed its nonce "
            "(same host, same /dev/shm)"
        )

    def _open_data_stream(
        self, offer: dict[str, Any] | None, compression: str | None, timeout: float, first_seq: int = 0
    ) -> str:
        """Connect the TCP data stream; returns how calls will travel."""
        assert self._channel is not None
        if not offer:
            if self._welcome.get("server", {}).get("auth"):
                return (
                    "calls travel as frames on the CURVE-encrypted ZeroMQ connection "
                    "(a server with authentication offers no raw data stream)"
                )
            return "calls travel as frames on the ZeroMQ connection (the server offers no data stream)"
        host, _ = split_endpoint(self.address)
        deadline = time.monotonic() + timeout
        pause, longest = RECONNECT_BACKOFF_S
        while True:
            try:
                sock = connect_data_stream(host, int(offer["port"]), offer["token"], max(0.001, deadline - time.monotonic()))
                break
            except StreamRefused as exc:
                return f"calls travel as frames on the ZeroMQ connection ({exc})"
            except ConnectionLost as exc:  # reached, then cut on the way: try again while the handshake's time lasts
                if time.monotonic() + pause >= deadline:
                    return f"calls travel as frames on the ZeroMQ connection (data stream cut repeatedly: {exc})"
                time.sleep(pause)
                pause = min(pause * 2, longest)
            except (FastEnvError, OSError) as exc:  # refused, unreachable or filtered: stay on the control connection
                return f"calls travel as frames on the ZeroMQ connection (data stream unreachable: {exc})"
        self._plane = TcpClientPlane(
            sock, self._channel.check_alive, compression=compression, first_seq=first_seq, **self._stream_limits()
        )
        return f"arrays stream in chunks on a dedicated connection to port {offer['port']}"

    def _shm_alive(self, server_pid: Any) -> None:
        """Between shared-memory wait slices: raise only if the server process is gone.

        The control connection may drop and come back (ZeroMQ reconnects by
        itself) while the arena keeps working; the server's pid decides.
        """
        assert self._channel is not None
        try:
            self._channel.check_alive()
        except ConnectionLost:
            if not isinstance(server_pid, int) or not _process_alive(server_pid):
                raise

    @property
    def views_valid_for(self) -> int | None:
        """On shared memory, how many further calls a returned view stays valid (None: arrays are owned)."""
        plane = self._plane
        if not isinstance(plane, ShmClientPlane) or plane.copies:
            return None
        return plane.slots - 1

    def _unwrap(self, reply: Message) -> Any:
        if reply.kind is Kind.VERSION_MISMATCH or reply.version != protocol.PROTOCOL_VERSION:
            raise ProtocolVersionError(protocol.PROTOCOL_VERSION, reply.version, protocol.text_of(reply))
        body = reply.body()
        if reply.kind is Kind.ERROR:
            raise error_from_body(body)
        return body

    def invoke(self, name: str, args: tuple = (), kwargs: dict | None = None, *, timeout: Any = _MISSING) -> Any:
        """Call the env's method ``name`` with an explicit per-call ``timeout``."""
        plane = self._plane
        if plane is not None and self._pending is None and self._lost_session is None:
            return self._invoke_direct(plane, name, args, kwargs, timeout)
        self.send_call(name, args, kwargs, timeout=timeout)
        assert self._pending is not None
        return self._collect(self._pending.deadline, keep_on_timeout=False)  # one deadline for send and reply

    def _invoke_direct(
        self, plane: ShmClientPlane | TcpClientPlane, name: str, args: tuple, kwargs: dict | None, timeout: Any
    ) -> Any:
        """:meth:`invoke` on a data plane: what send_call + receive_result do, without their bookkeeping."""
        channel = self._channel
        if channel is None or channel.closed:  # :meth:`_check_open`, inline on the hot path
            self._check_open()
        timeout = self.timeout if timeout is _MISSING else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        body = (name, args if args.__class__ is tuple else tuple(args), kwargs or {})
        what = _CALL_LABELS.get(name) or (f"{name}()" if name != GETATTR else f"reading .{args[0]}")
        if name == "reset":
            self._last_reset = (body[1], body[2])
        try:
            ok, value = plane.exchange(body, deadline, what)
        except ConnectionLost as exc:
            if not self.reconnect or isinstance(exc, SessionLost):
                raise
            pending = self._pending = _Pending(body, what, None, deadline)
            try:
                self._resume(pending, deadline, exc)
                ok, value = self._receive(pending, deadline)
            finally:
                self._pending = None
        if not ok:
            raise error_from_body(value)
        return value

    def send_call(self, name: str, args: tuple = (), kwargs: dict | None = None, *, timeout: Any = _MISSING) -> None:
        """Send a call without waiting for its result (:meth:`receive_result` collects it).

        One call may be outstanding per client; a second raises
        :class:`~fastenv.AlreadyPendingError`.
        """
        self._check_open()
        if self._pending is not None:
            raise AlreadyPendingError(f"{self._pending.what} is still pending: collect it with receive_result()")
        timeout = self.timeout if timeout is _MISSING else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        body = (name, tuple(args), kwargs or {})
        what = f"{name}()" if name != GETATTR else f"reading .{args[0]}"
        pending = _Pending(body, what, None, deadline)
        if self._lost_session is not None:  # raises, or (recreate) re-created the session and sent a reset
            self._session_lost(pending, deadline, self._lost_session)
        else:
            try:
                pending.ticket = self._send(body, deadline, what)
            except ConnectionLost:
                if not self.reconnect:
                    raise
                pending.sent = False  # sent again once the session is resumed
        if name == "reset":
            self._last_reset = (body[1], body[2])
        self._pending = pending

    def receive_result(self, timeout: Any = _MISSING) -> Any:
        """The result of the call sent by :meth:`send_call` (raises what the env raised).

        Raises :class:`~fastenv.NoPendingCallError` when nothing was sent, and
        :class:`~fastenv.FastEnvTimeout` when the result did not come within
        ``timeout`` seconds; the call then stays pending (wait again to get it).
        """
        timeout = self.timeout if timeout is _MISSING else timeout
        return self._collect(None if timeout is None else time.monotonic() + timeout, keep_on_timeout=True)

    def _collect(self, deadline: float | None, *, keep_on_timeout: bool) -> Any:
        pending = self._pending
        if pending is None:
            self._check_open()
            raise NoPendingCallError("no call is pending: send one first (send_call / step_async)")
        try:
            ok, value = self._receive(pending, deadline)
        except FastEnvTimeout:
            if not keep_on_timeout:
                self._pending = None  # its late reply will be dropped
            raise
        except BaseException:
            self._pending = None
            raise
        self._pending = None
        if not ok:
            raise error_from_body(value)
        return value

    def _send(self, body: tuple[str, tuple, dict], deadline: float | None, what: str) -> Any:
        plane = self._plane
        if plane is not None:
            return plane.send(body, deadline, what)
        assert self._channel is not None
        return self._channel.send(Kind.CALL, body)

    def _receive(self, pending: _Pending, deadline: float | None) -> tuple[bool, Any]:
        """Wait for ``pending``'s reply, resuming the session after a dropped connection.

        A reply saying the server holds no session for this client (it ended
        the session, or it is a new server) goes through ``on_session_lost``.
        """
        while True:
            try:
                if not pending.sent:
                    raise ConnectionLost(f"the connection dropped before {pending.what} was sent")
                ok, value = self._receive_once(pending, deadline)
            except ConnectionLost as exc:
                if not self.reconnect or isinstance(exc, SessionLost):
                    raise
                self._resume(pending, deadline, exc)
                continue
            if ok or not is_session_gone(value):
                return ok, value
            lost = SessionLost(f"the server at {self.address} no longer holds this session ({value.get('message')})")
            self._session_lost(pending, deadline, lost)  # raises, or re-sent an interrupted reset

    def _receive_once(self, pending: _Pending, deadline: float | None) -> tuple[bool, Any]:
        plane = self._plane
        if plane is not None:
            return plane.receive(pending.ticket, deadline, pending.what)
        assert self._channel is not None
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        reply = self._channel.wait_reply(pending.ticket, timeout, pending.what)
        if reply.kind is Kind.ERROR:
            return False, self._unwrap_error_body(reply)
        return True, self._unwrap(reply)

    def _unwrap_error_body(self, reply: Message) -> Any:
        if reply.version != protocol.PROTOCOL_VERSION:
            raise ProtocolVersionError(protocol.PROTOCOL_VERSION, reply.version, protocol.text_of(reply))
        return reply.body()

    # ------------------------------------------------------------------ resume

    def _resume(self, pending: _Pending, deadline: float | None, cause: ConnectionLost) -> None:
        """Take the session up again after ``cause`` and re-send ``pending``; raises if that is impossible."""
        try:
            if isinstance(self._plane, ShmClientPlane):
                # The arena does not drop: the client only gets here when the server process died.
                raise SessionLost(f"{cause}; the server process is gone, and the session with it") from cause
            self._resume_session(deadline, cause)
            if isinstance(self._plane, TcpClientPlane):
                self._resume_stream(deadline, cause)
        except SessionLost as lost:
            self._session_lost(pending, deadline, lost)  # raises, or re-sent an interrupted reset
            return
        pending.sent = False
        try:
            pending.ticket = self._resend(pending)
        except ConnectionLost:
            return  # cut again before it went out: the caller resumes once more (within the deadline)
        pending.sent = True

    def _resume_stream(self, deadline: float | None, cause: ConnectionLost) -> None:
        """Reconnect the data stream of the resumed session, until the call's deadline.

        A reconnection that fails (its own connection cut, a refused token
        after the server ended the session meanwhile) is followed by a new
        RESUME, which raises :class:`~fastenv.SessionLost` when the session is gone.
        """
        pause, longest = RECONNECT_BACKOFF_S
        while True:
            try:
                self._reconnect_stream(deadline)
                return
            except (TransportError, FastEnvTimeout) as exc:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ConnectionLost(
                        f"{cause}; the data stream could not be reconnected within the call's timeout ({exc})"
                    ) from exc
                time.sleep(pause if remaining is None else min(pause, remaining))
                pause = min(pause * 2, longest)
                self._resume_session(deadline, cause)

    def _resume_session(self, deadline: float | None, cause: ConnectionLost) -> None:
        """RESUME on the control channel, with backoff, until the call's deadline."""
        assert self._channel is not None
        channel = self._channel
        pause, longest = RECONNECT_BACKOFF_S
        try:
            channel.check_alive()  # take in the connection events so far
        except ConnectionLost:
            pass
        attempt_s = RESUME_ATTEMPT_S[0]
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ConnectionLost(f"{cause}; the session could not be resumed within the call's timeout") from cause
            probe_s = REFUSAL_PROBE_S if remaining is None else min(REFUSAL_PROBE_S, remaining)
            if not channel.connected and refuses_connections(self.address, probe_s):
                raise ConnectionLost(f"{cause}; the server at {self.address} is not running (connection refused)") from cause
            try:
                # A RESUME sent into a connection that is being cut is lost: ask again soon.
                attempt = attempt_s if remaining is None else min(attempt_s, max(remaining, 0.001))
                attempt_s = min(attempt_s * 2, RESUME_ATTEMPT_S[1])
                token = self._welcome.get("token", b"")
                reply = channel.request(
                    Kind.RESUME, {"session": self.session_id, "token": token}, attempt, what="resuming the session"
                )
            except (FastEnvTimeout, ConnectionLost):  # connections cut on arrival look the same: keep trying
                left = None if deadline is None else deadline - time.monotonic()
                time.sleep(pause if left is None else min(pause, max(0.0, left)))
                pause = min(pause * 2, longest)
                continue
            if reply.kind is Kind.ERROR:
                body = self._unwrap_error_body(reply)
                if is_session_gone(body):
                    raise SessionLost(f"{cause}; {body.get('message')}") from cause
                raise error_from_body(body)
            self._unwrap(reply)
            return

    def _reconnect_stream(self, deadline: float | None) -> None:
        old = self._plane
        assert isinstance(old, TcpClientPlane)
        offer = self._welcome.get("tcp") or {}
        host, _ = split_endpoint(self.address)
        timeout = 10.0 if deadline is None else max(0.001, deadline - time.monotonic())
        assert self._channel is not None
        sock = connect_data_stream(host, int(offer["port"]), offer["token"], timeout)
        old.close()
        self._plane = TcpClientPlane(
            sock,
            self._channel.check_alive,
            compression=self._options["compression"],
            first_seq=old.resume_seq,
            **self._stream_limits(),
        )

    def _stream_limits(self) -> dict[str, int]:
        """The server's frame limit, for the TCP stream to refuse larger requests before sending them."""
        limit = self._channel.max_message_bytes if self._channel is not None else None
        return {} if limit is None else {"max_message_bytes": limit}

    def _resend(self, pending: _Pending) -> Any:
        plane = self._plane
        if plane is not None:
            return plane.send(pending.body, pending.deadline, pending.what)
        assert self._channel is not None
        request_id = pending.ticket if isinstance(pending.ticket, int) else None
        return self._channel.send(Kind.CALL, pending.body, request_id=request_id)

    def _session_lost(self, pending: _Pending, deadline: float | None, lost: SessionLost) -> None:
        """The server's session is gone: raise ``lost``, or re-create the session first when asked to.

        Until a new session exists the client stays lost: every later call
        raises ``lost`` again, or (``recreate``) tries again to re-create it.
        When the re-created session runs ``pending`` (a reset) this returns;
        otherwise it raises :class:`~fastenv.SessionLost` with ``recreated=True``.
        """
        if self.on_session_lost != "recreate":
            if self._lost_session is lost:  # a later call: the same news again
                raise SessionLost(str(lost))
            self._lost_session = lost
            raise lost
        self._lost_session = lost
        timeout = 10.0 if deadline is None else max(0.001, deadline - time.monotonic())
        self._recreate(timeout)  # raises while the server is not back: the session stays lost
        if pending.body[0] == "reset":  # the interrupted call was a reset: just run it again
            pending.ticket = self._send(pending.body, deadline, pending.what)
            pending.sent = True
            return
        reset_result = self.reset(*self._last_reset[0], **self._last_reset[1]) if self._last_reset else None
        raise SessionLost(
            f"{lost}; a new session was created and reset", recreated=True, reset_result=reset_result
        ) from lost

    def _recreate(self, timeout: float) -> None:
        self._close_planes()
        self._pending = None  # the interrupted call is answered (or re-sent) by the caller
        deadline = time.monotonic() + timeout
        self._connect_session(timeout, retry_timeouts=True)
        self._lost_session = None
        if self.role == "controller":
            self.acquire_control(max(0.0, deadline - time.monotonic()))

    def _close_planes(self) -> None:
        if self._plane is not None:
            self._plane.close()
            self._plane = None
        if self._observer is not None:
            self._observer.close()
            self._observer = None

    # ------------------------------------------------------------------ env API

    def reset(self, *args: Any, **kwargs: Any) -> Any:
        """``env.reset(...)`` on the server; arguments pass through unchanged."""
        return self.invoke("reset", args, kwargs)

    def step(self, action: Any) -> Any:
        """``env.step(action)`` on the server; returns exactly what it returned."""
        return self.invoke("step", (action,))

    def render(self, *args: Any, **kwargs: Any) -> Any:
        """``env.render()`` on the server (frames come back as arrays)."""
        return self.invoke("render", args, kwargs)

    def get_state(self, *args: Any, **kwargs: Any) -> Any:
        """``env.get_state()`` on the server."""
        return self.invoke("get_state", args, kwargs)

    def set_state(self, state: Any, *args: Any, **kwargs: Any) -> Any:
        """``env.set_state(state)`` on the server."""
        return self.invoke("set_state", (state, *args), kwargs)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call any public method of the served env by name."""
        return self.invoke(name, args, kwargs)

    def batch_step(self, actions: Iterable[Any]) -> list[Any]:
        """Step once per action in ONE round trip; returns the list of step results.

        Stops early, after the step that ends the episode (terminated or
        truncated), so the list may be shorter than ``actions``.
        """
        actions = list(actions)
        return unpack_results(self.invoke(BATCH_STEP, (len(actions), pack_column(actions))))

    def step_async(self, action: Any) -> None:
        """Send ``step(action)`` and return at once; :meth:`step_wait` collects the result.

        Raises :class:`~fastenv.AlreadyPendingError` if a call is still pending.
        """
        self.send_call("step", (action,))

    def step_wait(self, timeout: Any = _MISSING) -> Any:
        """The result of the step sent by :meth:`step_async` (waits up to ``timeout`` seconds).

        Raises :class:`~fastenv.NoPendingCallError` if no step was sent.
        """
        return self.receive_result(timeout)

    # ------------------------------------------------------------------ sharing

    def acquire_control(self, timeout: float = 0.0) -> None:
        """Take the control lease of a shared env, waiting up to ``timeout`` seconds for it.

        While this client holds it, other clients cannot change the env (they
        get :class:`~fastenv.LeaseHeld`). Released by :meth:`release_control`,
        by closing, or when this client vanishes.
        """
        deadline = time.monotonic() + timeout
        pause, longest = RECONNECT_BACKOFF_S
        while True:
            try:
                self.invoke(LEASE, ("acquire",))
                return
            except LeaseHeld:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, longest)

    def release_control(self) -> bool:
        """Give the control lease back; False if this client did not hold it."""
        return bool(self.invoke(LEASE, ("release",)))

    @property
    def lease_holder(self) -> str | None:
        """Session id of the client holding the control lease (None: nobody)."""
        return self.invoke(LEASE, ("holder",))

    def next_transition(self, timeout: float | None = None) -> Transition:
        """(Observers) the next call that changed the shared env, in order.

        Raises :class:`~fastenv.FastEnvTimeout` if none comes within ``timeout``
        seconds. A slow observer skips transitions instead of slowing the
        controller; :attr:`skipped` counts them.
        """
        if self._observer is None:
            raise ControlDenied("only observers receive transitions: connect with role='observer'")
        return self._observer.next(timeout)

    def transitions(self, timeout: float | None = None) -> Iterator[Transition]:
        """(Observers) iterate over transitions until none comes for ``timeout`` seconds."""
        while True:
            try:
                yield self.next_transition(timeout)
            except FastEnvTimeout:
                return

    @property
    def skipped(self) -> int:
        """(Observers) how many transitions this observer missed because it fell behind."""
        return self._observer.skipped if self._observer is not None else 0

    def ping(self, timeout: float = 5.0) -> None:
        """Round-trip a PING; raises if the server does not answer in ``timeout`` seconds."""
        self._check_open()
        assert self._channel is not None
        reply = self._channel.request(Kind.PING, None, timeout, what="ping")
        self._unwrap(reply)

    @property
    def unwrapped(self) -> FastRemoteEnv:
        """The client is its own innermost env (wrappers live on the server)."""
        return self

    @property
    def observation_space(self) -> Any:
        """The served env's observation space (from the handshake)."""
        return self._described("observation_space")

    @property
    def action_space(self) -> Any:
        """The served env's action space (from the handshake)."""
        return self._described("action_space")

    @property
    def metadata(self) -> Any:
        """The served env's ``metadata``."""
        return self._described("metadata")

    @property
    def spec(self) -> Any:
        """The served env's ``spec`` (a Gymnasium ``EnvSpec`` or None)."""
        return self._attributes.get("spec")

    @property
    def render_mode(self) -> Any:
        """The served env's ``render_mode``."""
        return self._attributes.get("render_mode")

    def _described(self, name: str) -> Any:
        if name in self._attributes:
            return self._attributes[name]
        raise AttributeError(f"the served env ({self.env_info.get('class')}) has no attribute {name!r}")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self.__dict__.get("_attributes", {}):
            return self._attributes[name]
        if name in self.__dict__.get("_methods", ()):
            return functools.partial(self.call, name)
        try:
            return self.invoke(GETATTR, (name,))
        except UnknownMethodError as exc:
            raise AttributeError(str(exc)) from None

    # ------------------------------------------------------------------ lifetime

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._channel is None or self._channel.closed

    def _check_open(self) -> None:
        """Raise :class:`~fastenv.ClientClosedError` once :meth:`close` was called."""
        if self.closed:
            raise ClientClosedError(f"FastRemoteEnv({self.address!r}) is closed")

    def close(self, timeout: float = 2.0) -> None:
        """End the session (the server closes a per-client env) and close the connection.

        Idempotent. Never raises for a server that is already gone.
        """
        channel = self._channel
        if channel is None or channel.closed:
            return
        try:
            channel.request(Kind.BYE, None, timeout, what="close")
        except FastEnvError:
            pass  # the server is gone or slow: it reclaims the session itself
        finally:
            channel.close()
            self._close_planes()
            self._pending = None

    def __enter__(self) -> FastRemoteEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        channel = self.__dict__.get("_channel")
        if channel is not None and not channel.closed:
            warnings.warn(
                f"FastRemoteEnv({self.address!r}) was not closed; use `with` or call close()",
                ResourceWarning,
                stacklevel=2,
            )
            channel.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.transport
        return f"<FastRemoteEnv {self.env_info.get('class', '?')} at {self.address} ({state})>"


def _process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def connect(address: str, **kwargs: Any) -> FastRemoteEnv:
    """Connect to a fastenv server: ``fastenv.connect("127.0.0.1:5555")``."""
    return FastRemoteEnv(address, **kwargs)
