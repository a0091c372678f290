"""EnvServer: owns the env(s), accepts sessions and dispatches calls.

A thin facade: it checks its configuration, binds the sockets, and runs the
control loop; the session layer (:mod:`fastenv.session`) does the rest:
:mod:`~fastenv.session.handlers` answers requests,
:mod:`~fastenv.session.registry` opens and ends sessions and gives each its
route, :mod:`~fastenv.session.dispatch` runs calls on envs.

One thread runs the ZeroMQ control loop (handshakes, ATTACH, RESUME, BYE,
liveness checks, and calls of clients without a data plane); each session on
shared memory or the TCP stream has a worker thread for its calls (or, for an
env bound to a thread, its first session is served on that thread: see
:mod:`~fastenv.session.envthread`). Every call
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
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from fastenv import codec
from fastenv.codec import Limits
from fastenv.control.address import check_bind_allowed, host_identity
from fastenv.control.auth import AuthConfig, AuthLike, server_auth
from fastenv.control.dealer import HEARTBEAT_INTERVAL_S
from fastenv.control.router import ServerSocket
from fastenv.control.zap import ZapHandler
from fastenv.errors import FastEnvError, ServerConfigError
from fastenv.observe import TransitionPublisher
from fastenv.metrics import MetricsEndpoint, ServerCollector, ServerMetrics
from fastenv.recording.recorder import DEFAULT_MAX_RECORDS
from fastenv.session.config import (
    ATTACH_GRACE_S,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_SESSIONS,
    ServerConfig,
    check_settings,
)
from fastenv.session.dispatch import Dispatcher, close_quietly
from fastenv.session.envthread import EnvThreads
from fastenv.session.handlers import ControlHandlers
from fastenv.session.loop import ControlLoop
from fastenv.session.registry import SessionRegistry
from fastenv.session.table import EnvHandle
from fastenv.shm.arena import reclaim_stale
from fastenv.shm.plane import DEFAULT_SHAPE, SERVER_SPIN_US
from fastenv.tcp.listener import TcpDataListener

if TYPE_CHECKING:
    from gymnasium.vector import AutoresetMode

log = logging.getLogger("fastenv.server")


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
        shm_slots: reply slots per session arena (up to ``shm_slots - 1``
            replies a client holds stay zero-copy; later ones are copied).
        shm_spin_us: how long a shared-memory worker spins for the next request
            before sleeping (default :data:`fastenv.shm.plane.SERVER_SPIN_US`).
        data_port: TCP port of the data stream that carries calls for clients
            without shared memory (0: a free port; clients learn it in the handshake).
        num_envs: host this many envs from ``factory`` behind one
            :class:`~fastenv.vector.host.VectorHost` (batched ``reset``/``step``;
            drive it with :class:`fastenv.FastVectorEnv`). In per-client mode each
            client gets its own N envs.
        workers: with ``num_envs``, step the envs in this many worker
            processes behind the one address (``"auto"``: one per usable CPU,
            at most ``num_envs``); see :mod:`fastenv.vector.workers`. The
            factory must then be picklable (workers build their own envs).
            None: the envs step one after another in this process.
        autoreset_mode: with ``num_envs``, ``"next-step"`` or ``"same-step"``
            (or an ``AutoresetMode``), declared in ``metadata["autoreset_mode"]``
            so a plain :class:`~fastenv.FastVectorEnv` follows it; fixed in shared
            mode (:class:`~fastenv.errors.AutoresetModeError`), each client's
            default per client. None: next-step, which clients may switch.
        heartbeat_interval: seconds between heartbeats; a vanished client's
            session is reclaimed within two intervals.
        observers: publish transitions to observer clients (shared mode only).
        env_thread: the thread envs are built and called on: ``"caller"``
            (default: the thread that received the call; no hop), ``"main"``
            (the thread that made this server, which then runs
            :meth:`serve_forever`; for simulators bound to the main thread) or
            ``"dedicated"`` (a thread per env); see
            :class:`~fastenv.session.envthread.EnvThreads`.
        metrics_port: serve Prometheus metrics on this port of ``bind`` (0: a
            free one, see :attr:`metrics_port`; None: no metrics, nothing
            recorded). Needs ``pip install "fastenv[metrics]"``; see :mod:`fastenv.metrics`.
        record: write every call of every session and its result to this MCAP
            file (see :mod:`fastenv.recording`). Needs ``pip install "fastenv[record]"``.
        record_queue: with ``record``, calls waiting for the writer before further calls are dropped.

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
        workers: int | str | None = None,
        autoreset_mode: AutoresetMode | str | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        observers: bool = True,
        auth: AuthLike | None = None,
        allow_trusted: bool = False,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_pending: int = DEFAULT_MAX_PENDING,
        attach_grace: float = ATTACH_GRACE_S,
        env_thread: str = "caller",
        metrics_port: int | None = None,
        record: str | None = None,
        record_queue: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        if (env is None) == (factory is None):
            raise ServerConfigError("give EnvServer exactly one of env= or factory=")
        if num_envs is not None and (num_envs < 1 or factory is None):
            raise ServerConfigError("num_envs needs a factory and must be at least 1")
        self.autoreset_mode: AutoresetMode | None = None
        if num_envs is not None or workers is not None or autoreset_mode is not None:
            from fastenv.vector.serving import check_vector_options  # optional dependency (Gymnasium)

            self.autoreset_mode = check_vector_options(num_envs, workers, autoreset_mode)
        mode = mode or ("shared" if env is not None else "per-client")
        check_settings(mode, factory is not None, heartbeat_interval, max_sessions, max_pending, attach_grace, shm_slots)
        self.auth: AuthConfig | None = server_auth(auth)
        if allow_trusted and self.auth is None:
            raise ServerConfigError(
                "trusted mode (--allow-trusted) runs code that clients send: it needs authentication (--auth DIR)"
            )
        check_bind_allowed(bind, insecure=insecure, authenticated=self.auth is not None)
        self.config = ServerConfig(
            mode=mode,
            limits=limits,
            max_message_bytes=max_message_bytes,
            max_sessions=max_sessions,
            max_pending=max_pending,
            attach_grace=attach_grace,
            heartbeat_interval=heartbeat_interval,
            shm=shm,
            arena_shape=dataclasses.replace(DEFAULT_SHAPE, slots=shm_slots),
            shm_spin_us=SERVER_SPIN_US if shm_spin_us is None else shm_spin_us,
            authenticated=self.auth is not None,
            allow_trusted=allow_trusted,
        )
        self.mode = mode
        self.bind_host = bind
        self.port = port
        self.data_port = data_port
        self.num_envs = num_envs
        self.workers = workers
        self.stats = dict.fromkeys(("requests", "protocol_errors", "env_errors", "reaped", "resumed", "limit_errors"), 0)
        self._factory = factory
        self._shared_env = env
        self._close_shared = close_env if close_env is not None else env is None
        self._observers = observers and mode == "shared"
        self._dispatcher = Dispatcher(self.stats)
        self.metrics_port = metrics_port
        self._metrics: MetricsEndpoint | None = None
        if metrics_port is not None:
            self._dispatcher.metrics = ServerMetrics()
        if record is not None:
            from fastenv.recording.recorder import Recorder  # optional dependency (mcap)

            self._dispatcher.recorder = Recorder(
                record, mode=mode, target=getattr(factory, "__qualname__", ""), max_records=record_queue
            )
        try:
            self._env_threads = EnvThreads(env_thread)
        except ValueError as exc:
            raise ServerConfigError(str(exc)) from None
        self._context: zmq.Context | None = None  # with auth: the server's own, run by its ZAP handler
        self._zap: ZapHandler | None = None
        self._socket: ServerSocket | None = None
        self._data_listener: TcpDataListener | None = None
        self._publisher: TransitionPublisher | None = None
        self._registry: SessionRegistry | None = None
        self._handlers: ControlHandlers | None = None
        self._control_loop: ControlLoop | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

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

    @property
    def sessions(self) -> int:
        """How many sessions are open."""
        return 0 if self._registry is None else len(self._registry.table)

    def _bind(self) -> ServerSocket:
        if self._socket is not None:
            return self._socket
        if self._closed:
            raise ServerConfigError("this EnvServer is closed")
        if self.mode == "shared":
            shared = EnvHandle(self._shared_env, runner=self._env_threads.for_new_env())
            if shared.env is None:
                shared.env = self._shared_env = shared.on_env_thread(self._make_env)
            self._dispatcher.shared = shared
        if self.config.shm:
            for name in reclaim_stale():
                log.warning("removed stale shared-memory segment %s (its owner is dead)", name)
        if self.auth is not None:
            self._context = zmq.Context()
            self._zap = ZapHandler(self._context, self.auth.authorized_clients)
        try:
            self._socket = ServerSocket(
                self.bind_host,
                self.port,
                max_message_bytes=self.config.max_message_bytes,
                heartbeat_interval=self.config.heartbeat_interval,
                auth=self.auth,
                context=self._context,
            )
            registry = SessionRegistry(self.config, self._dispatcher, self._socket, streams=self.auth is None)
            if self.auth is None:  # with auth, calls travel on the encrypted control connection
                self._data_listener = TcpDataListener(self.bind_host, self.data_port, on_connection=registry.adopt_stream)
            if self._observers:
                self._publisher = TransitionPublisher(self.bind_host, auth=self.auth, context=self._context)
        except FastEnvError:
            self._close_sockets()
            self._socket = None
            raise
        self._dispatcher.publisher = self._publisher
        self._registry = registry
        if self._dispatcher.metrics is not None and self._metrics is None:
            collector = ServerCollector(
                self._dispatcher.metrics, lambda: iter(registry.table), self.stats, self._dispatcher.recorder
            )
            self._metrics = MetricsEndpoint(collector, self.metrics_port or 0, self.bind_host)
            self.metrics_port = self._metrics.port
        handlers = self._handlers = ControlHandlers(
            self._socket,
            registry,
            self._dispatcher,
            make_env=self._make_env,
            env_runner=self._env_threads.for_new_env,
            publisher=self._publisher,
            data_port=self._data_listener.port if self._data_listener is not None else None,
            host=host_identity(),
            stats=self.stats,
        )
        self._control_loop = ControlLoop(self._socket, handlers, registry, self._data_listener, self.stats)
        return self._socket

    def _make_env(self) -> Any:
        """A new env from the factory (``num_envs`` of them behind a VectorHost)."""
        assert self._factory is not None
        if self.num_envs is None:
            return self._factory()
        from fastenv.vector.serving import make_vector_host  # optional dependency (Gymnasium), only for --num-envs

        return make_vector_host(
            self._factory,
            self.num_envs,
            workers=self.workers,
            declared=self.autoreset_mode,
            fixed=self.mode == "shared",
        )

    def serve_forever(self, poll_interval: float = 0.25) -> None:
        """Serve until :meth:`stop` (or KeyboardInterrupt); then close sessions and sockets.

        The control loop is :class:`~fastenv.session.loop.ControlLoop`. With
        ``env_thread="main"`` this thread runs the envs' calls and the control
        loop runs on a thread of its own.
        """
        main = self._env_threads.main
        if main is None:
            try:
                self._loop(poll_interval)
            finally:
                self._shutdown()
            return
        if not main.on_owner():
            raise ServerConfigError("env_thread='main': call serve_forever() on the thread that made the EnvServer")
        self._bind()
        loop = threading.Thread(target=self._loop, args=(poll_interval,), name="fastenv-server", daemon=True)
        loop.start()
        try:
            main.serve(self._stopping)
        finally:
            self._stopping.set()
            loop.join()
            self._shutdown()

    def _loop(self, poll_interval: float) -> None:
        self._bind()
        assert self._control_loop is not None
        self._control_loop.run(self._stopping, poll_interval)

    def start(self) -> str:
        """Serve in a background thread; returns the address."""
        if self._env_threads.main is not None:
            raise ServerConfigError("env_thread='main' serves on the thread that made the server: call serve_forever()")
        address = self.address
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, name="fastenv-server", daemon=True)
            self._thread.start()
        return address

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop and wait for it (safe from signal handlers and other threads)."""
        self._stopping.set()
        main = self._env_threads.main
        if main is not None:
            main.poke()  # the main thread may be waiting for a session's requests it hosts: it looks up
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
        self._dispatcher.deadlines.stop()
        if self._registry is not None:
            self._registry.end_all()
        shared = self._dispatcher.shared
        if self._close_shared and self._shared_env is not None:
            if shared is not None:
                shared.on_env_thread(close_quietly, self._shared_env)
            else:
                close_quietly(self._shared_env)
        if shared is not None and shared.runner is not None and shared.runner.dedicated:
            shared.runner.stop()
        self._close_sockets()

    def _close_sockets(self) -> None:
        """Close the metrics endpoint, publisher, data listener, control socket, ZAP handler and context (idempotent)."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._dispatcher.recorder is not None:
            self._dispatcher.recorder.close()
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
