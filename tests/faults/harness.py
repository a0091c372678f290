"""The routes a call can take, each behind proxies that can cut it, and the server's resources.

A :class:`Route` starts a real ``fastenv serve`` of the counting env on fixed
ports of 127.0.0.1 and puts :class:`~tests.proxy.TcpProxy` in front of them on
127.0.0.2, the address clients use:

- ``shm``: calls through the shared-memory arena (only the control
  connection goes through a proxy: an arena cannot be cut);
- ``tcp``: calls on the TCP data stream (both ports proxied);
- ``control``: calls on the ZeroMQ control connection (the data port is not
  proxied, so it is unreachable at 127.0.0.2);
- ``control-auth``: the same with CURVE authentication (such a server offers
  no data stream).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

import fastenv
from fastenv.control.auth import keygen
from fastenv.server_process import ServerProcess
from tests.polling import wait_until
from tests.proxy import TcpProxy, free_port

ROUTES = ("shm", "tcp", "control", "control-auth")
COUNTER = f"{Path(__file__).resolve().parent.parent / 'envs' / 'session_envs.py'}:Counter"
PROXY_HOST = "127.0.0.2"
SHM_SEGMENT = "/dev/shm/fastenv-"




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
        if name == "control-auth":
            self.keys = workdir / "keys"
            keygen(self.keys)
            self.server_args += ("--auth", str(self.keys))
        self.server: ServerProcess | None = None
        self._stack = contextlib.ExitStack()
        self.control = self._stack.enter_context(TcpProxy((PROXY_HOST, self.port), ("127.0.0.1", self.port)))
        self.data: TcpProxy | None = None
        if name == "tcp":
            self.data = self._stack.enter_context(
                TcpProxy((PROXY_HOST, self.data_port), ("127.0.0.1", self.data_port))
            )

    @property
    def address(self) -> str:
        """Where clients connect: the control proxy."""
        return f"{PROXY_HOST}:{self.port}"

    def start_server(self) -> ServerProcess:
        """Start (or start again, on the same ports) ``fastenv serve`` of the counting env."""
        self.server = ServerProcess(COUNTER, self.server_args, env_kwargs=self.env_kwargs)
        self.server.start()
        self._stack.callback(self.server.stop)
        return self.server

    def client_options(self) -> dict[str, Any]:
        """``FastRemoteEnv`` keyword arguments for this route (JSON-able: a child process uses them too)."""
        options: dict[str, Any] = {"transport": "shm" if self.name == "shm" else "tcp"}
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
        if self.name == "shm":
            assert env.transport == "shm", reason
        elif self.name == "tcp":
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

    def close(self) -> None:
        """Stop the server and the proxies."""
        self._stack.close()

    def __enter__(self) -> Route:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------- client processes

CLIENT_SCRIPT = """
import json, sys, time
import fastenv
address, options, mode = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
if mode == "handshakes":  # open and close sessions until killed
    print("ready", flush=True)
    while True:
        fastenv.FastRemoteEnv(address, timeout=20, **options).close()
env = fastenv.FastRemoteEnv(address, timeout=20, **options)
env.reset()
print("ready", flush=True)
if mode == "idle":
    time.sleep(600)
while True:  # mid-step: slow steps, so a kill lands inside one most of the time
    env.step(-5)
"""


@contextlib.contextmanager
def client_process(route: Route, mode: str) -> Iterator[subprocess.Popen[str]]:
    """A child process driving ``route`` (``mode``: ``stepping``, ``idle`` or ``handshakes``), ready when yielded."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT_SCRIPT, route.address, json.dumps(route.client_options()), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = _readline(process, timeout=30)
        assert line.strip() == "ready", f"client did not start: {line!r}"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, or '' after ``timeout`` seconds."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


# ---------------------------------------------------------------- resources


@dataclass(frozen=True)
class Usage:
    """What a server process holds, and the machine's shared memory."""

    fds: int
    threads: int
    segment_mappings: int  # mappings of fastenv shared-memory segments
    shmem_kib: int  # the machine's Shmem (/proc/meminfo)

    @classmethod
    def of(cls, pid: int) -> Usage:
        process = psutil.Process(pid)
        mappings = 0
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                if SHM_SEGMENT in line:
                    mappings += 1
        return cls(process.num_fds(), process.num_threads(), mappings, _shmem_kib())

    def within(self, baseline: Usage, bound: Usage) -> bool:
        """Whether each figure is at most ``baseline`` plus ``bound``."""
        return all(
            getattr(self, field) <= getattr(baseline, field) + getattr(bound, field)
            for field in ("fds", "threads", "segment_mappings", "shmem_kib")
        )


def _shmem_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    return 0


def settled_usage(pid: int, baseline: Usage, bound: Usage, timeout: float) -> tuple[bool, Usage]:
    """Wait until the server's usage is back within ``bound`` of ``baseline``; (whether it is, the last usage)."""
    last = [Usage.of(pid)]

    def settled() -> bool:
        last[0] = Usage.of(pid)
        return last[0].within(baseline, bound)

    ok = wait_until(settled, timeout, interval=0.1)
    return ok, last[0]


def env_flag(name: str, default: float = 0.0) -> float:
    """A number from the environment (0 when unset)."""
    value = os.environ.get(name, "")
    return float(value) if value else default


__all__ = [
    "COUNTER",
    "ROUTES",
    "Route",
    "Usage",
    "client_process",
    "env_flag",
    "settled_usage",
    "wait_until",
]
