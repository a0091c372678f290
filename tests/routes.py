"""The routes a call can take, each served behind proxies that can cut it.

A :class:`Route` starts a real ``fastenv serve`` of the counting env on fixed
ports of 127.0.0.1 and puts :class:`~tests.proxy.TcpProxy` in front of them on
127.0.0.2, the address clients use:

- ``shm``: calls through the shared-memory arena (only the control
  connection goes through a proxy: an arena cannot be cut);
- ``shm-python``: the same with the pure-Python doorbell and layout packer
  in the server (``FASTENV_NATIVE=0``) and the pure-Python doorbell in the
  client (:meth:`Route.client_backend`);
- ``shm-env-thread``: shared memory to a server whose env has a thread of its
  own (``--env-thread dedicated``): that thread waits for the first session's
  requests itself, and every other call is handed to it;
- ``tcp``: calls on the TCP data stream (both ports proxied);
- ``tcp-env-thread``: the TCP data stream to a server whose env has a thread
  of its own: that thread reads the first session's stream itself;
- ``control``: calls on the ZeroMQ control connection (the data port is not
  proxied, so it is unreachable at 127.0.0.2);
- ``control-auth``: the same with CURVE authentication (such a server offers
  no data stream).

Observers receive transitions on a third port the handshake announces;
:meth:`Route.proxy_transitions` puts a proxy in front of it too.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import fastenv
from fastenv.control.auth import keygen
from fastenv.server_process import ServerProcess
from tests.proxy import TcpProxy, free_port

ROUTES = ("shm", "shm-python", "shm-env-thread", "tcp", "tcp-env-thread", "control", "control-auth")
COUNTER = f"{Path(__file__).resolve().parent / 'envs' / 'session_envs.py'}:Counter"
PROXY_HOST = "127.0.0.2"


class Route:
    """A served counting env reached through one route (see the module docstring)."""

    def __init__(
        self, name: str, workdir: Path, server_args: tuple[str, ...] = (), env_kwargs: dict[str, Any] | None = None
    ) -> None:
        if name not in ROUTES:
            raise ValueError(f"unknown route {name!r}")
        self.name = name
        self.workdir = workdir
        self.env_kwargs = {"marker_dir": str(workdir), **(env_kwargs or {})}
        self.keys: Path | None = None
        self.port, self.data_port = free_port(), free_port()
        self.server_args = (
            "--port", str(self.port), "--data-port", str(self.data_port), "--log-level", "INFO", *server_args
        )
        if name.endswith("-env-thread"):
            self.server_args += ("--env-thread", "dedicated")
        if name == "control-auth":
            self.keys = workdir / "keys"
            keygen(self.keys)
            self.server_args += ("--auth", str(self.keys))
        self.server: ServerProcess | None = None
        self._stack = contextlib.ExitStack()
        self.control = self._stack.enter_context(TcpProxy((PROXY_HOST, self.port), ("127.0.0.1", self.port)))
        self.data: TcpProxy | None = None
        self.transitions: TcpProxy | None = None
        if self.uses_stream:
            self.data = self._stack.enter_context(
                TcpProxy((PROXY_HOST, self.data_port), ("127.0.0.1", self.data_port))
            )

    @property
    def uses_shm(self) -> bool:
        """Whether calls travel through the shared-memory arena."""
        return self.name.startswith("shm")

    @property
    def uses_stream(self) -> bool:
        """Whether calls travel on the TCP data stream."""
        return self.name.startswith("tcp")

    @property
    def client_backend(self) -> str | None:
        """The doorbell backend this route's clients use (None: the default)."""
        return "python" if self.name == "shm-python" else None

    @property
    def address(self) -> str:
        """Where clients connect: the control proxy."""
        return f"{PROXY_HOST}:{self.port}"

    def start_server(self) -> ServerProcess:
        """Start (or start again, on the same ports) ``fastenv serve`` of the counting env."""
        extra_env = {"FASTENV_NATIVE": "0"} if self.name == "shm-python" else None
        self.server = ServerProcess(COUNTER, self.server_args, env_kwargs=self.env_kwargs, extra_env=extra_env)
        self.server.start()
        self._stack.callback(self.server.stop)
        self.transitions = None  # a new server publishes on a new port
        return self.server

    def proxy_transitions(self, timeout: float = 20.0) -> TcpProxy:
        """Proxy the running server's transition port at the clients' address, so observers reach it.

        The port is announced in the handshake only: a short-lived client (on
        TCP: no shared-memory set-up needed for that) asks for it once per server.
        """
        if self.transitions is None:
            options = {**self.client_options(), "transport": "tcp"}
            with fastenv.FastRemoteEnv(self.address, timeout=timeout, connect_timeout=timeout, **options) as probe:
                offer = probe._session.welcome.get("observe")  # the handshake's offer (as tests/test_auth.py reads it)
            if not offer:
                raise RuntimeError(f"the server of route {self.name} offers no transition stream (not in shared mode?)")
            port = int(offer["port"])
            self.transitions = self._stack.enter_context(TcpProxy((PROXY_HOST, port), ("127.0.0.1", port)))
        return self.transitions

    def client_options(self) -> dict[str, Any]:
        """``FastRemoteEnv`` keyword arguments for this route (JSON-able: a child process uses them too)."""
        options: dict[str, Any] = {"transport": "shm" if self.uses_shm else "tcp"}
        if self.keys is not None:
            options["auth"] = str(self.keys)
        return options

    def connect(self, **kwargs: Any) -> fastenv.FastRemoteEnv:
        """A client on this route; checks the route was really taken."""
        env = fastenv.FastRemoteEnv(self.address, **{**self.client_options(), **kwargs})
        try:
            self.check_route(env)
        except BaseException:
            env.close()
            raise
        return env

    def check_route(self, env: fastenv.FastRemoteEnv) -> None:
        """Assert ``env``'s calls travel on this route."""
        reason = env.transport_reason
        if self.uses_shm:
            assert env.transport == "shm", reason
        elif self.uses_stream:
            assert env.transport == "tcp" and f"port {self.data_port}" in reason, reason
        else:
            assert env.transport == "tcp" and "ZeroMQ connection" in reason, reason
            if self.name == "control-auth":
                assert "CURVE" in reason, reason

    def cut(self) -> None:
        """Reset every open connection of the route, both ports."""
        self.control.cut()
        if self.data is not None:
            self.data.cut()

    def cut_arrivals(self, count: int) -> None:
        """Reset the next ``count`` connections on each proxied port as they arrive."""
        self.control.cut_arrivals(count)
        if self.data is not None:
            self.data.cut_arrivals(count)

    def let_arrivals_through(self) -> None:
        """Stop resetting new connections on both ports."""
        self.control.let_arrivals_through()
        if self.data is not None:
            self.data.let_arrivals_through()

    def close(self) -> None:
        """Stop the server and the proxies."""
        self._stack.close()

    def __enter__(self) -> Route:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
