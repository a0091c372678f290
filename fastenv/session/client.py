"""The client's session: handshake, route, one call at a time, resumption, the session-lost policy.

A call goes out on the session's transport (:mod:`fastenv.transport`); its
reply comes back as ``(ok, value)``. When the connection drops, the session
is resumed on the control connection (RESUME with the session's token), the
transport re-opens what broke, and the unanswered call is re-sent under its
sequence number, all within the call's deadline; the server answers it from
its record, so it runs once. A server that no longer holds the session makes
the call raise :class:`~fastenv.SessionLost`, or (``on_session_lost=
"recreate"``) opens a new session and resets it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastenv import protocol
from fastenv._version import __version__
from fastenv.client_stats import PingTimes, RoundTrips, wall_ns
from fastenv.control.address import host_identity
from fastenv.control.dealer import ClientChannel
from fastenv.errors import (
    AlreadyPendingError,
    ClientClosedError,
    ConnectionLost,
    EncodeError,
    FastEnvError,
    FastEnvTimeout,
    LeaseHeld,
    NoPendingCallError,
    ProtocolError,
    SessionLost,
)
from fastenv.protocol import GETATTR, LEASE, Kind
from fastenv.session.resume import RECONNECT_BACKOFF_S, reconnect_transport, resume_session
from fastenv.session.state import ClientState
from fastenv.staging import to_device
from fastenv.transport.base import CallBody, ClientTransport, Reply
from fastenv.transport.choose import RouteOptions, open_route
from fastenv.transport.control import unwrap
from fastenv.wire import error_from_body, is_session_gone

DEFAULT_TIMEOUT = object()  # a call's timeout left to the session's default

_perf = time.perf_counter
_CALL_LABELS = {"step": "step()", "reset": "reset()", "get_state": "get_state()"}


def describe_call(name: str, args: tuple) -> str:
    """How a call is named in errors: ``step()``, or ``reading .attr`` for an attribute read."""
    return _CALL_LABELS.get(name) or (f"{name}()" if name != GETATTR else f"reading .{args[0]}")


@dataclass
class PendingCall:
    """A call sent and not yet answered."""

    body: CallBody
    what: str
    ticket: Any  # the transport's ticket
    deadline: float | None  # of the send; receive_result() sets its own
    sent: bool = True  # False: the connection dropped before it could be sent


@dataclass
class SessionOptions:
    """How the session is opened and kept."""

    route: RouteOptions
    role: str = "shared"
    vector: bool = False
    reconnect: bool = True
    on_session_lost: str = "raise"
    factory_payload: bytes | None = None
    tensors: str = "torch"  # "numpy": the server sends tensors as numpy arrays
    device: Any = None  # where received tensors are placed (None: host memory, as received)


class ClientSession:
    """One session with a server, over a control channel and the route chosen for it.

    Not thread-safe: one caller at a time, like the env it stands for.
    """

    def __init__(self, channel: ClientChannel, options: SessionOptions, timeout: float | None) -> None:
        self.channel = channel
        self.options = options
        self.timeout = timeout
        self.state = ClientState.IDLE
        self.round_trips = RoundTrips()
        self.transport: ClientTransport | None = None
        self.plane = "tcp"  # the data plane the server was told: "shm" or "tcp"
        self.reason = ""
        self.welcome: dict[str, Any] = {}
        self._pending: PendingCall | None = None
        self._lost: SessionLost | None = None
        self._last_reset: tuple[tuple, dict] | None = None

    @property
    def address(self) -> str:
        """The server's control endpoint."""
        return self.channel.endpoint

    @property
    def session_id(self) -> str:
        """The server's id of this session."""
        return self.welcome["session"]

    @property
    def pending_what(self) -> str | None:
        """What the pending call is (``step()``, ...), or None."""
        return None if self._pending is None else self._pending.what

    # ------------------------------------------------------------------ opening

    def connect(self, timeout: float, *, retry_timeouts: bool) -> None:
        """Open a session, again with backoff while the connection drops on the way, for ``timeout`` seconds.

        A HELLO sent again replaces the session the first one may have opened
        (the server keys sessions by connection). ``retry_timeouts``: also try
        again after an attempt that got no answer in time.
        """
        deadline = time.monotonic() + timeout
        pause, longest = RECONNECT_BACKOFF_S
        while True:
            try:
                self._open(max(0.001, deadline - time.monotonic()))
                return
            except (ConnectionLost, FastEnvTimeout) as exc:
                self.close_transport()
                if isinstance(exc, SessionLost) or (isinstance(exc, FastEnvTimeout) and not retry_timeouts):
                    raise
                if time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, longest)

    def _open(self, timeout: float) -> None:
        """Handshake, then the route (probe, ATTACH, data stream): a new session on the server."""
        welcome = self._handshake(timeout)
        limits = welcome.get("server", {}).get("limits") or {}
        if isinstance(limits.get("max_message_bytes"), int):
            self.channel.max_message_bytes = limits["max_message_bytes"]
        self.welcome = welcome
        route = open_route(self.channel, welcome, self.options.route, timeout)
        self.transport, self.plane, self.reason = route.transport, route.plane, route.reason

    def _handshake(self, timeout: float) -> dict[str, Any]:
        hello = {
            "fastenv": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "host": host_identity(),
            "transport": self.options.route.transport,
            "compression": self.options.route.compression,
            "role": self.options.role,
            "vector": self.options.vector,
        }
        if self.options.tensors != "torch":
            hello["tensors"] = self.options.tensors
        if self.options.factory_payload is not None:
            hello["factory"] = self.options.factory_payload
        reply = self.channel.request(Kind.HELLO, hello, timeout, what="the handshake")
        body = unwrap(reply)
        if reply.kind is not Kind.WELCOME or not isinstance(body, dict) or "session" not in body:
            raise ProtocolError(f"unexpected handshake reply {reply.kind.name}")
        return body

    # ------------------------------------------------------------------ calls

    def check_open(self) -> None:
        """Raise :class:`~fastenv.ClientClosedError` once the session was closed."""
        if self.state is ClientState.CLOSED:
            raise ClientClosedError(f"FastRemoteEnv({self.address!r}) is closed")

    def invoke(self, name: str, args: tuple = (), kwargs: dict | None = None, timeout: Any = DEFAULT_TIMEOUT) -> Any:
        """Call the env's method ``name`` and return its result (raises what the env raised)."""
        if self.state is not ClientState.IDLE:
            self.send_call(name, args, kwargs, timeout)
            assert self._pending is not None
            return self._collect(self._pending.deadline, keep_on_timeout=False)  # one deadline for send and reply
        began = _perf()
        timeout = self.timeout if timeout is DEFAULT_TIMEOUT else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        body = (name, args if args.__class__ is tuple else tuple(args), kwargs or {})
        what = _CALL_LABELS.get(name) or describe_call(name, args)
        if name == "reset":
            self._last_reset = (body[1], body[2])
        transport = self.transport
        assert transport is not None
        try:
            ok, value = transport.exchange(body, deadline, what)
        except EncodeError as exc:
            raise EncodeError(f"{what} cannot be sent: {exc}") from None
        except ConnectionLost as exc:
            if not self.options.reconnect or isinstance(exc, SessionLost):
                raise
            pending = self._pending = PendingCall(body, what, None, deadline)
            try:
                self._resume(pending, deadline, exc)
                ok, value = self._receive(pending, deadline)
            finally:
                self._settle()
        if not ok:
            if is_session_gone(value):  # the server ended the session while the client was idle
                pending = self._pending = PendingCall(body, what, None, deadline)
                try:
                    ok, value = self._after_session_gone(pending, deadline, value)
                finally:
                    self._settle()
            if not ok:
                raise error_from_body(value, what)
        self.round_trips.record(_perf() - began)
        return value if self.options.device is None else to_device(value, self.options.device)

    def send_call(self, name: str, args: tuple = (), kwargs: dict | None = None, timeout: Any = DEFAULT_TIMEOUT) -> None:
        """Send a call without waiting for its result (:meth:`receive_result` collects it)."""
        self.check_open()
        if self._pending is not None:
            raise AlreadyPendingError(f"{self._pending.what} is still pending: collect it with receive_result()")
        timeout = self.timeout if timeout is DEFAULT_TIMEOUT else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        body = (name, tuple(args), kwargs or {})
        pending = PendingCall(body, describe_call(name, body[1]), None, deadline)
        if self._lost is not None:  # raises, or (recreate) re-created the session and sent a reset
            self._session_lost(pending, deadline, self._lost)
        else:
            assert self.transport is not None
            try:
                pending.ticket = self.transport.send(body, deadline, pending.what)
            except EncodeError as exc:
                raise EncodeError(f"{pending.what} cannot be sent: {exc}") from None
            except ConnectionLost:
                if not self.options.reconnect:
                    raise
                pending.sent = False  # sent again once the session is resumed
        if name == "reset":
            self._last_reset = (body[1], body[2])
        self._pending = pending
        self.state = ClientState.PENDING

    def receive_result(self, timeout: Any = DEFAULT_TIMEOUT) -> Any:
        """The result of the call sent by :meth:`send_call`; on a timeout the call stays pending."""
        timeout = self.timeout if timeout is DEFAULT_TIMEOUT else timeout
        return self._collect(None if timeout is None else time.monotonic() + timeout, keep_on_timeout=True)

    def _collect(self, deadline: float | None, *, keep_on_timeout: bool) -> Any:
        pending = self._pending
        if pending is None:
            self.check_open()
            raise NoPendingCallError("no call is pending: send one first (send_call / step_async)")
        try:
            ok, value = self._receive(pending, deadline)
        except FastEnvTimeout:
            if not keep_on_timeout:
                self._settle()  # its late reply will be dropped
            raise
        except BaseException:
            self._settle()
            raise
        self._settle()
        if not ok:
            raise error_from_body(value, pending.what)
        return value if self.options.device is None else to_device(value, self.options.device)

    def _settle(self) -> None:
        """No call pending any more: the session is idle, or lost."""
        self._pending = None
        if self.state is not ClientState.CLOSED:
            self.state = ClientState.IDLE if self._lost is None else ClientState.LOST

    def _receive(self, pending: PendingCall, deadline: float | None) -> Reply:
        """Wait for ``pending``'s reply, resuming the session after a dropped connection.

        A reply saying the server holds no session for this client (it ended
        the session, or it is a new server) goes through ``on_session_lost``.
        """
        while True:
            try:
                if not pending.sent:
                    raise ConnectionLost(f"the connection dropped before {pending.what} was sent")
                assert self.transport is not None
                ok, value = self.transport.receive(pending.ticket, deadline, pending.what)
            except ConnectionLost as exc:
                if not self.options.reconnect or isinstance(exc, SessionLost):
                    raise
                self._resume(pending, deadline, exc)
                continue
            if ok or not is_session_gone(value):
                return ok, value
            return self._after_session_gone(pending, deadline, value)

    def _after_session_gone(self, pending: PendingCall, deadline: float | None, body: Any) -> Reply:
        lost = SessionLost(f"the server at {self.address} no longer holds this session ({body.get('message')})")
        self._session_lost(pending, deadline, lost)  # raises, or re-sent an interrupted reset
        return self._receive(pending, deadline)

    # ------------------------------------------------------------------ resumption

    def _resume(self, pending: PendingCall, deadline: float | None, cause: ConnectionLost) -> None:
        """Take the session up again after ``cause`` and re-send ``pending``; raises if that is impossible."""
        assert self.transport is not None
        try:
            if not self.transport.resumable:  # shared memory: the client only gets here when the server died
                raise SessionLost(f"{cause}; the server process is gone, and the session with it") from cause
            self._resume_session(deadline, cause)
            self._reconnect_transport(deadline, cause)
        except SessionLost as lost:
            self._session_lost(pending, deadline, lost)  # raises, or re-sent an interrupted reset
            return
        pending.sent = False
        try:
            pending.ticket = self.transport.resend(pending.body, pending.deadline, pending.what)
        except ConnectionLost:
            return  # cut again before it went out: the caller resumes once more (within the deadline)
        pending.sent = True

    def _reconnect_transport(self, deadline: float | None, cause: ConnectionLost) -> None:
        assert self.transport is not None
        reconnect_transport(self.transport, deadline, cause, lambda: self._resume_session(deadline, cause))

    def _resume_session(self, deadline: float | None, cause: ConnectionLost) -> None:
        resume_session(self.channel, self.session_id, self.welcome.get("token", b""), deadline, cause)

    def _session_lost(self, pending: PendingCall, deadline: float | None, lost: SessionLost) -> None:
        """The server's session is gone: raise ``lost``, or re-create the session first when asked to.

        Until a new session exists the client stays lost: every later call
        raises ``lost`` again, or (``recreate``) tries again to re-create it.
        When the re-created session runs ``pending`` (a reset) this returns;
        otherwise it raises :class:`~fastenv.SessionLost` with ``recreated=True``.
        """
        if self.options.on_session_lost != "recreate":
            if self._lost is lost:  # a later call: the same news again
                raise SessionLost(str(lost))
            self._lost = lost
            self.state = ClientState.LOST
            raise lost
        self._lost = lost
        self.state = ClientState.LOST
        timeout = 10.0 if deadline is None else max(0.001, deadline - time.monotonic())
        self._recreate(timeout)  # raises while the server is not back: the session stays lost
        assert self.transport is not None
        if pending.body[0] == "reset":  # the interrupted call was a reset: just run it again
            self._pending = pending
            self.state = ClientState.PENDING
            pending.ticket = self.transport.send(pending.body, deadline, pending.what)
            pending.sent = True
            return
        last = self._last_reset
        reset_result = self.invoke("reset", last[0], last[1]) if last else None
        raise SessionLost(
            f"{lost}; a new session was created and reset", recreated=True, reset_result=reset_result
        ) from lost

    def _recreate(self, timeout: float) -> None:
        self.close_transport()
        self._pending = None  # the interrupted call is answered (or re-sent) by the caller
        deadline = time.monotonic() + timeout
        self.connect(timeout, retry_timeouts=True)
        self._lost = None
        self.state = ClientState.IDLE
        if self.options.role == "controller":
            self.acquire_control(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ lease and lifetime

    def acquire_control(self, timeout: float, sleep: Callable[[float], None] = time.sleep) -> None:
        """Take the control lease, trying again with backoff for up to ``timeout`` seconds."""
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
                sleep(min(pause, remaining))
                pause = min(pause * 2, longest)

    def ping(self, timeout: float) -> PingTimes | None:
        """Round-trip a PING on the control connection; its four times (None from a server that sends none)."""
        self.check_open()
        sent = wall_ns()
        body = unwrap(self.channel.request(Kind.PING, None, timeout, what="ping"))
        returned = wall_ns()
        if isinstance(body, dict) and isinstance(body.get("received"), int) and isinstance(body.get("replied"), int):
            return PingTimes(sent, body["received"], body["replied"], returned)
        return None

    def close_transport(self) -> None:
        """Release the route (the control channel stays)."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def close(self, timeout: float) -> None:
        """Say BYE (the server ends the session) and close everything; never raises for a gone server."""
        if self.state is ClientState.CLOSED:
            return
        self.state = ClientState.CLOSED
        proof = {"session": self.session_id, "token": self.welcome.get("token", b"")} if self.welcome else None
        deadline = time.monotonic() + timeout
        try:
            while True:  # BYE is idempotent: said again over a control connection that dropped and came back
                try:
                    self.channel.request(Kind.BYE, proof, max(0.0, deadline - time.monotonic()), what="close")
                    break
                except ConnectionLost:
                    if time.monotonic() >= deadline:
                        break
        except FastEnvError:
            pass  # the server is gone or slow: it reclaims the session itself
        finally:
            self.channel.close()
            self.close_transport()
            self._pending = None
