"""Start a fastenv server on another machine over SSH, and reach it.

::

    from fastenv.launch import launch, launch_and_connect

    with launch("gpu-box", "sim.py:make_env", cwd="~/sim", setup="source venv/bin/activate") as server:
        with fastenv.FastRemoteEnv(server.address) as env:
            env.reset(seed=0)

SSH goes through paramiko the way ``ssh`` would: ``~/.ssh/config`` (aliases,
``HostName``, ``User``, ``Port``, ``IdentityFile``, ``ProxyJump``), keys and the
agent, ``known_hosts`` checked. The server runs under a small agent
(:mod:`fastenv.launch.remote`) that ends its whole process group when asked, or
when the SSH connection drops. By default the server binds 127.0.0.1 on the
remote host and is reached through a tunnel in the SSH connection.

Modules: :mod:`~fastenv.launch.destination` (host spec + SSH config),
:mod:`~fastenv.launch.connection` (paramiko connection, host keys, jumps),
:mod:`~fastenv.launch.command` (the remote shell command),
:mod:`~fastenv.launch.remote` (the agent), :mod:`~fastenv.launch.pidfiles` and
:mod:`~fastenv.launch.procgroup` (its records and process-group handling),
:mod:`~fastenv.launch.forward` (port forwarding), :mod:`~fastenv.launch.handle`
(:class:`LaunchedServer`), :mod:`~fastenv.launch.launcher` (:func:`launch`),
:mod:`~fastenv.launch.cli` (``fastenv launch``).

Names are imported lazily, so the remote agent and ``fastenv serve`` never
load paramiko.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastenv.launch.handle import LaunchedServer
    from fastenv.launch.launcher import launch, launch_and_connect

__all__ = ["LaunchedServer", "launch", "launch_and_connect"]

_HOMES = {
    "LaunchedServer": "fastenv.launch.handle",
    "launch": "fastenv.launch.launcher",
    "launch_and_connect": "fastenv.launch.launcher",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
