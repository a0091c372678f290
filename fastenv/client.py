"""FastRemoteEnv: the client object that behaves like the served env."""

from __future__ import annotations

import functools
import warnings
from typing import Any

from fastenv import gym_types  # noqa: F401  (registers Gymnasium spaces with the codec)
from fastenv import protocol
from fastenv._version import __version__
from fastenv.control.address import host_identity, normalize_address
from fastenv.control.dealer import ClientChannel
from fastenv.errors import (
    ClientClosedError,
    EncodeError,
    FastEnvError,
    FrameTooLarge,
    ProtocolError,
    ProtocolVersionError,
    TransportError,
    UnknownMethodError,
    make_remote_env_error,
)
from fastenv.protocol import GETATTR, Kind, Message
from fastenv.shm.arena import Arena
from fastenv.shm.plane import ShmClientPlane
from fastenv.tcp.plane import TcpClientPlane, connect_data_stream

TRANSPORTS = ("auto", "shm", "tcp")
_MISSING = object()


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
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")
        self._channel: ClientChannel | None = None
        self._plane: ShmClientPlane | TcpClientPlane | None = None
        self.address = normalize_address(address)
        self.timeout = timeout
        self._channel = ClientChannel(self.address)
        try:
            welcome = self._handshake(connect_timeout, transport, compression)
            self.transport, self.transport_reason = self._choose_transport(
                welcome, transport, copy, spin_us, connect_timeout
            )
            if self.transport == "tcp":
                self.transport_reason += "; " + self._open_data_stream(welcome.get("tcp"), compression, connect_timeout)
        except BaseException:
            if self._plane is not None:
                self._plane.close()
            self._channel.close()
            raise
        self.session_id: str = welcome["session"]
        self.server_info: dict[str, Any] = welcome["server"]
        self.env_info: dict[str, Any] = welcome["env"]
        self.env_hash: str = welcome["env_hash"]
        self._methods = frozenset(self.env_info.get("methods", ()))
        self._attributes: dict[str, Any] = dict(self.env_info.get("attributes", {}))

    # ------------------------------------------------------------------ plumbing

    def _handshake(self, timeout: float, transport: str, compression: str | None) -> dict[str, Any]:
        hello = {
            "fastenv": __version__,
            "protocol": protocol.PROTOCOL_VERSION,
            "host": host_identity(),
            "transport": transport,
            "compression": compression,
        }
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
        self._plane = ShmClientPlane(arena, self._channel.check_alive, copy=copy, spin_us=spin_us)
        return "shm", (
            f"{'auto: ' if wanted == 'auto' else ''}the client mapped the server's segment and echoed its nonce "
            "(same host, same /dev/shm)"
        )

    def _open_data_stream(self, offer: dict[str, Any] | None, compression: str | None, timeout: float) -> str:
        """Connect the TCP data stream; returns how calls will travel."""
        assert self._channel is not None
        if not offer:
            return "calls travel as frames on the ZeroMQ connection (the server offers no data stream)"
        host = self.address.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
        try:
            sock = connect_data_stream(host, int(offer["port"]), offer["token"], timeout)
        except (FastEnvError, OSError) as exc:  # refused, unreachable or filtered: stay on the control connection
            return f"calls travel as frames on the ZeroMQ connection (data stream unreachable: {exc})"
        self._plane = TcpClientPlane(sock, self._channel.check_alive, compression=compression)
        return f"arrays stream in chunks on a dedicated connection to port {offer['port']}"

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
            raise _error_from(body)
        return body

    def invoke(self, name: str, args: tuple = (), kwargs: dict | None = None, *, timeout: Any = _MISSING) -> Any:
        """Call the env's method ``name`` with an explicit per-call ``timeout``."""
        channel = self._channel
        if channel is None or channel.closed:
            raise ClientClosedError(f"FastRemoteEnv({self.address!r}) is closed")
        plane = self._plane
        if plane is not None:
            what = f"{name}()" if name != GETATTR else f"reading .{args[0]}"
            ok, value = plane.call((name, args, kwargs or {}), self.timeout if timeout is _MISSING else timeout, what)
            if not ok:
                raise _error_from(value)
            return value
        reply = channel.request(
            Kind.CALL,
            (name, args, kwargs or {}),
            self.timeout if timeout is _MISSING else timeout,
            what=f"{name}()" if name != GETATTR else f"reading .{args[0]}",
        )
        return self._unwrap(reply)

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

    def ping(self, timeout: float = 5.0) -> None:
        """Round-trip a PING; raises if the server does not answer in ``timeout`` seconds."""
        if self._channel is None or self._channel.closed:
            raise ClientClosedError(f"FastRemoteEnv({self.address!r}) is closed")
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
            if self._plane is not None:
                self._plane.close()

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


def _error_from(body: Any) -> FastEnvError:
    if not isinstance(body, dict):
        return ProtocolError(f"malformed error reply: {body!r}")
    kind = body.get("kind")
    type_name = str(body.get("type", "Exception"))
    message = str(body.get("message", ""))
    if kind == "remote":
        return make_remote_env_error(type_name, message, str(body.get("traceback", "")))
    if kind == "unknown_method":
        return UnknownMethodError(message)
    if kind == "encode":
        return EncodeError(f"the server could not send the result: {message}")
    if type_name == "FrameTooLarge":
        return FrameTooLarge(f"server refused the request: {message}")
    return ProtocolError(f"server rejected the request ({kind}): {message}")


def connect(address: str, **kwargs: Any) -> FastRemoteEnv:
    """Connect to a fastenv server: ``fastenv.connect("127.0.0.1:5555")``."""
    return FastRemoteEnv(address, **kwargs)
