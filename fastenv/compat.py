"""The seed wrapper's names, on top of fastenv.

A script written for the seed's ``RemoteServer`` / ``RemoteEnv`` runs after
changing only its imports::

    from fastenv.compat import RemoteEnv, RemoteServer

Differences, all on the safe side:

- ``RemoteServer()`` with no host binds 127.0.0.1, not 0.0.0.0. An explicit
  non-loopback host is refused (with an error saying how to tunnel over SSH)
  unless ``insecure=True`` is passed.
- Failures raise :class:`CompatError`, which is both a ``RuntimeError`` (what
  the seed raised) and a :class:`fastenv.FastEnvError`; the original fastenv
  error is its ``__cause__``.
- Nothing a peer sends can run code: values travel through fastenv's
  data-only codec instead of the seed's plain pickle.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastenv.client import FastRemoteEnv
from fastenv.errors import FastEnvError
from fastenv.server import EnvServer


class CompatError(FastEnvError, RuntimeError):
    """What the compat layer raises where the seed raised ``RuntimeError``."""


class RemoteServer:
    """Serve one env to every client (the seed's shared mode).

    Args:
        host: interface to bind; default 127.0.0.1 (loopback only).
        port: TCP port (the seed's default, 8888).
        insecure: allow a non-loopback ``host`` without authentication.
    """

    def __init__(self, host: str | None = None, port: int = 8888, *, insecure: bool = False) -> None:
        self.host = host or "127.0.0.1"
        self.port = port
        self.insecure = insecure
        self.env: Any = None
        self._server: EnvServer | None = None

    def set_environment(self, env: Any) -> None:
        """The env every client will drive."""
        self.env = env

    def start(self, block: bool = True) -> None:
        """Serve the env; blocks until :meth:`stop` (from another thread or a signal) unless ``block=False``."""
        if self.env is None:
            raise CompatError("call set_environment(env) before start()")
        if self._server is None:
            self._server = EnvServer(self.env, bind=self.host, port=self.port, mode="shared", insecure=self.insecure)
            scope = "loopback only" if self.host in ("127.0.0.1", "localhost", "::1") else "NETWORK-REACHABLE"
            print(f"fastenv: serving {type(self.env).__name__} on {self._server.address} ({scope})", flush=True)
            print(f"fastenv: ready {self._server.address}", flush=True)
        if block:
            try:
                self._server.serve_forever()
            except KeyboardInterrupt:
                pass
        else:
            self._server.start()

    @property
    def address(self) -> str:
        """The bound endpoint (``tcp://host:port``)."""
        if self._server is None:
            raise CompatError("the server is not started")
        return self._server.address

    def stop(self) -> None:
        """Stop serving (the env itself is left open: it is yours)."""
        if self._server is not None:
            self._server.close()
            self._server = None


class RemoteEnv:
    """Connect to a :class:`RemoteServer` (or any ``fastenv serve``) and use it like the env."""

    def __init__(
        self, host: str = "localhost", port: int = 8888, *, timeout: float = 60.0, connect_timeout: float = 10.0
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.connected = False
        self._env: FastRemoteEnv | None = None

    def connect(self) -> bool:
        """Connect; returns True on success, False (after printing why) on failure."""
        try:
            self._env = FastRemoteEnv(f"{self.host}:{self.port}", timeout=self.timeout, connect_timeout=self.connect_timeout)
        except FastEnvError as exc:
            print(f"Failed to connect: {exc}")
            return False
        self.connected = True
        print(f"Connected to {self.host}:{self.port}")
        return True

    def _call(self, what: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if not self.connected or self._env is None:
            raise CompatError("Not connected to server")
        try:
            return self._env.invoke(name, args, kwargs)
        except FastEnvError as exc:
            self.connected = False
            raise CompatError(f"{what} failed: {exc}") from exc

    def reset(self, *args: Any, **kwargs: Any) -> Any:
        """Reset the remote env; returns what its ``reset`` returned."""
        return self._call("Reset", "reset", *args, **kwargs)

    def step(self, action: Any) -> Any:
        """Step the remote env; returns what its ``step`` returned."""
        return self._call("Step", "step", action)

    def get_state(self) -> Any:
        """The remote env's ``get_state()``."""
        return self._call("Get state", "get_state")

    def batch_step(self, actions: Iterable[Any]) -> list[Any]:
        """Step once per action, in order; returns the list of step results."""
        return [self.step(action) for action in actions]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.connected = False
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> RemoteEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
