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
- ``RemoteEnv.auto_start_remote_server`` starts the server with
  :func:`fastenv.launch.launch` (no ``ssh`` subprocess, no 10 s sleep: it
  returns when the server is ready, or False at once with the remote error),
  reaches it through an SSH tunnel, points ``host`` / ``port`` at it, and
  ``close()`` stops it. See :func:`auto_start_remote_server`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fastenv.client import FastRemoteEnv
from fastenv.errors import FastEnvError
from fastenv.server import EnvServer

if TYPE_CHECKING:
    from fastenv.launch.handle import LaunchedServer


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
        self.launched: LaunchedServer | None = None  # the server auto_start_remote_server started

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

    def auto_start_remote_server(
        self,
        ssh_host: str,
        remote_script_path: str,
        task_name: str = "stack_cube",
        num_envs: int = 1,
        **launch_kwargs: Any,
    ) -> bool:
        """Start the script's env on ``ssh_host`` (see :func:`auto_start_remote_server`); then :meth:`connect`.

        Returns True once the server is ready, with ``host`` / ``port`` now
        pointing at it (the local end of the SSH tunnel by default); False,
        after printing why (the remote output included), if it could not start.
        :meth:`close` stops the server; the handle is :attr:`launched`.
        """
        print(f"Starting remote server on {ssh_host}...")
        try:
            server = auto_start_remote_server(ssh_host, remote_script_path, task_name, num_envs, **launch_kwargs)
        except FastEnvError as exc:
            print(f"Failed to start remote server: {exc}")
            return False
        self._stop_launched()
        self.launched = server
        self.host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
        self.port = int(port)
        print(f"Remote server ready on {ssh_host} (pid {server.remote_pid}), reachable at {self.host}:{self.port}")
        return True

    def _stop_launched(self) -> None:
        if self.launched is not None:
            self.launched.stop()
            self.launched = None

    def close(self) -> None:
        """Close the connection, and stop the server :meth:`auto_start_remote_server` started (idempotent)."""
        self.connected = False
        try:
            if self._env is not None:
                self._env.close()
                self._env = None
        finally:
            self._stop_launched()

    def __enter__(self) -> RemoteEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def auto_start_remote_server(
    ssh_host: str,
    remote_script_path: str,
    task_name: str = "stack_cube",
    num_envs: int = 1,
    *,
    script: str = "example.py",
    factory: str = "create_local_env",
    **launch_kwargs: Any,
) -> LaunchedServer:
    """Serve a seed-style script's env on ``ssh_host``; return the :class:`~fastenv.launch.LaunchedServer`.

    The seed ran ``ssh HOST "cd REMOTE_SCRIPT_PATH && conda activate ... &&
    python example.py server --task T --num_envs N"``, whose server served
    ``create_local_env(T, N)`` on every interface, and slept 10 s. Here the
    remote side runs ``fastenv serve example.py:create_local_env`` in
    ``remote_script_path`` with ``task_name=T, num_envs=N`` as the factory's
    keyword arguments, and this returns as soon as it is ready (or raises a
    :class:`~fastenv.LaunchError` carrying the remote output).

    Args:
        ssh_host: ``[user@]host[:port]`` or an SSH config alias.
        remote_script_path: the remote directory holding ``script`` (as in the
            seed), or the path of the script itself.
        task_name, num_envs: passed to the factory.
        script: the script's file name when ``remote_script_path`` is a directory.
        factory: the function of the script that builds the env.
        launch_kwargs: passed to :func:`fastenv.launch.launch`, e.g.
            ``setup="source ~/anaconda3/etc/profile.d/conda.sh && conda activate roboverse"``,
            ``python=...``, ``tunnel=...``, ``ssh_config=...``.
    """
    from fastenv.launch.launcher import launch

    path = remote_script_path.rstrip("/")
    directory, file = posixpath.split(path) if path.endswith(".py") else (path, script)
    launch_kwargs.setdefault("cwd", directory or None)
    env_kwargs = {"task_name": task_name, "num_envs": num_envs, **launch_kwargs.pop("env_kwargs", {})}
    return launch(ssh_host, f"{file}:{factory}", env_kwargs=env_kwargs, **launch_kwargs)
