"""FastRemoteEnv: the client object that behaves like the served env.

A thin env API over a :class:`~fastenv.session.client.ClientSession`, which
holds the connection, the route and the call machinery.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

from fastenv import gym_types  # noqa: F401  (registers Gymnasium spaces with the codec)
from fastenv.batching import pack_column, unpack_results
from fastenv.client_deadline import DeadlineCalls
from fastenv.client_stats import ClientStats, summarize
from fastenv.client_sharing import SharingCalls
from fastenv.client_views import HandshakeAttributes
from fastenv.control.address import normalize_address
from fastenv.control.auth import AuthLike, client_auth
from fastenv.control.dealer import ClientChannel
from fastenv.errors import TrustedModeError
from fastenv.observe import TransitionSubscriber
from fastenv.protocol import BATCH_STEP
from fastenv.session.client import DEFAULT_TIMEOUT, ClientSession, SessionOptions
from fastenv.session.state import ClientState
from fastenv.transport.choose import RouteOptions
from fastenv.trusted import NOT_AUTHENTICATED, pack_factory

try:  # with Gymnasium installed, FastRemoteEnv is a gymnasium.Env: wrappers, checkers and trainers take it
    from gymnasium import Env as _EnvBase
    from gymnasium.utils import seeding
except ImportError:  # Gymnasium is optional
    _EnvBase = object  # type: ignore[assignment,misc]
    seeding = None  # type: ignore[assignment]

TRANSPORTS = ("auto", "shm", "tcp")
ROLES = ("shared", "controller", "observer")
SESSION_LOST_POLICIES = ("raise", "recreate")
TENSOR_FORMS = ("torch", "numpy")


class FastRemoteEnv(HandshakeAttributes, SharingCalls, DeadlineCalls, _EnvBase):
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
        copy: on shared memory, return owned arrays instead of views into the
            arena (views are writable and never written again while held; up
            to ``shm_slots - 1`` held replies stay zero-copy, later ones are
            copied); on other routes arrays are always owned.
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
        tensors: how torch tensors the env returns arrive: ``"torch"`` (the
            default: tensors of the same dtype and shape; needs
            ``pip install "fastenv[torch]"`` here) or ``"numpy"`` (the server
            sends numpy arrays; dtypes numpy lacks are widened: ``bfloat16`` and
            ``float8`` to ``float32``).
        device: place every received tensor on this torch device (``"cuda:0"``);
            ``None`` leaves them in host memory (on shared memory, views of the
            reply).

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
        tensors: str = "torch",
        device: Any = None,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
        if tensors not in TENSOR_FORMS:
            raise ValueError(f"tensors must be one of {', '.join(TENSOR_FORMS)}")
        if device is not None and tensors != "torch":
            raise ValueError("device= places torch tensors: it needs tensors='torch'")
        if on_session_lost not in SESSION_LOST_POLICIES:
            raise ValueError(f"on_session_lost must be one of {', '.join(SESSION_LOST_POLICIES)}")
        self._auth = client_auth(auth)
        if factory is not None and self._auth is None:
            raise TrustedModeError(f"{NOT_AUTHENTICATED}: pass auth= (the factory is never sent unauthenticated)")
        if factory is not None and role == "observer":
            raise ValueError("an observer cannot ship an env factory")
        self.address = normalize_address(address)
        self.role = role
        self._observer: TransitionSubscriber | None = None
        options = SessionOptions(
            route=RouteOptions(transport=transport, copy=copy, spin_us=spin_us, compression=compression),
            role=role,
            vector=vector,
            reconnect=reconnect,
            on_session_lost=on_session_lost,
            factory_payload=pack_factory(factory) if factory is not None else None,
            tensors=tensors,
            device=device,
        )
        channel_options: dict[str, Any] = {"auth": self._auth}
        if heartbeat_interval is not None:
            channel_options["heartbeat_interval"] = heartbeat_interval
        channel = ClientChannel(self.address, **channel_options)
        self._session = session = ClientSession(channel, options, timeout)
        try:
            session.connect(connect_timeout, retry_timeouts=False)
            if role == "controller":
                session.acquire_control(lease_timeout)
            elif role == "observer":
                self._subscribe(connect_timeout)
        except BaseException:
            self._close_observer()
            session.close_transport()
            channel.close()
            session.state = ClientState.CLOSED
            raise

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

    # ------------------------------------------------------------------ the session

    @property
    def state(self) -> ClientState:
        """Where the session stands: idle, a call pending, lost, or closed (:class:`~fastenv.ClientState`)."""
        return self._session.state

    @property
    def timeout(self) -> float | None:
        """Seconds any call may take (None: no limit); settable."""
        return self._session.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._session.timeout = value

    @property
    def reconnect(self) -> bool:
        """Whether a dropped connection is resumed."""
        return self._session.options.reconnect

    @property
    def on_session_lost(self) -> str:
        """``"raise"`` or ``"recreate"``."""
        return self._session.options.on_session_lost

    # ------------------------------------------------------------------ calls

    def invoke(self, name: str, args: tuple = (), kwargs: dict | None = None, *, timeout: Any = DEFAULT_TIMEOUT) -> Any:
        """Call the env's method ``name`` with an explicit per-call ``timeout``."""
        return self._session.invoke(name, args, kwargs, timeout)

    def send_call(self, name: str, args: tuple = (), kwargs: dict | None = None, *, timeout: Any = DEFAULT_TIMEOUT) -> None:
        """Send a call without waiting for its result (:meth:`receive_result` collects it).

        One call may be outstanding per client; a second raises
        :class:`~fastenv.AlreadyPendingError`.
        """
        self._session.send_call(name, args, kwargs, timeout)

    def receive_result(self, timeout: Any = DEFAULT_TIMEOUT) -> Any:
        """The result of the call sent by :meth:`send_call` (raises what the env raised).

        Raises :class:`~fastenv.NoPendingCallError` when nothing was sent, and
        :class:`~fastenv.FastEnvTimeout` when the result did not come within
        ``timeout`` seconds; the call then stays pending (wait again to get it).
        """
        return self._session.receive_result(timeout)

    # ------------------------------------------------------------------ env API

    def reset(self, *args: Any, **kwargs: Any) -> Any:
        """``env.reset(...)`` on the server; arguments pass through unchanged.

        With a ``seed``, the client's own :attr:`np_random` (Gymnasium's) is
        seeded with it too, as a local env's ``super().reset(seed=seed)`` does.
        """
        result = self._session.invoke("reset", args, kwargs)
        seed = kwargs.get("seed")
        if seed is not None and seeding is not None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        return result

    def step(self, action: Any) -> Any:
        """``env.step(action)`` on the server; returns exactly what it returned."""
        return self._session.invoke("step", (action,))

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

    def step_wait(self, timeout: Any = DEFAULT_TIMEOUT) -> Any:
        """The result of the step sent by :meth:`step_async` (waits up to ``timeout`` seconds).

        Raises :class:`~fastenv.NoPendingCallError` if no step was sent.
        """
        return self.receive_result(timeout)

    def ping(self, timeout: float = 5.0) -> None:
        """Round-trip a PING; raises if the server does not answer in ``timeout`` seconds."""
        self._session.ping(timeout)

    def measure(self, pings: int = 8, timeout: float = 5.0) -> ClientStats:
        """Round-trip percentiles of the latest calls, and one-way delays from ``pings`` fresh pings.

        The one-way delays are corrected for the clock offset between this
        host and the server's, estimated from the pings (see
        :mod:`fastenv.client_stats`); :attr:`stats` is ``measure()``.
        """
        times = [self._session.ping(timeout) for _ in range(pings)]
        return summarize(self._session.round_trips, [ping for ping in times if ping is not None])

    @property
    def stats(self) -> ClientStats:
        """:meth:`measure` with its defaults (eight pings on the control connection)."""
        return self.measure()

    # ------------------------------------------------------------------ lifetime

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        session = self.__dict__.get("_session")
        return session is None or session.state is ClientState.CLOSED

    def _check_open(self) -> None:
        """Raise :class:`~fastenv.ClientClosedError` once :meth:`close` was called."""
        self._session.check_open()

    def close(self, timeout: float = 2.0) -> None:
        """End the session (the server closes a per-client env) and close the connection.

        Idempotent. Never raises for a server that is already gone.
        """
        session = self.__dict__.get("_session")
        if session is None:
            return
        session.close(timeout)
        self._close_observer()

    def __enter__(self) -> FastRemoteEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        session = self.__dict__.get("_session")
        if session is not None and session.state is not ClientState.CLOSED:
            warnings.warn(
                f"FastRemoteEnv({self.address!r}) was not closed; use `with` or call close()",
                ResourceWarning,
                stacklevel=2,
            )
            session.state = ClientState.CLOSED
            session.channel.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.transport
        return f"<FastRemoteEnv {self.env_info.get('class', '?')} at {self.address} ({state})>"


def connect(address: str, **kwargs: Any) -> FastRemoteEnv:
    """Connect to a fastenv server: ``fastenv.connect("127.0.0.1:5555")``."""
    return FastRemoteEnv(address, **kwargs)
