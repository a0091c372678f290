"""The Ray actor that is one fastenv server: builds its env(s) and serves them from its own process.

:func:`fastenv.ray.place_servers` starts one :class:`ServerActor` per
placement-group bundle. The actor's process is the server process (what
``fastenv serve TARGET --num-envs N`` would be): an :class:`~fastenv.EnvServer`
serving in background threads, bound to the node's address. When the process
dies, the server dies with it; when Ray restarts the actor (``max_restarts``),
``__init__`` runs again and serves on a new port, possibly on another node,
which :meth:`ServerActor.location` reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray

from fastenv.control.auth import AuthConfig
from fastenv.server import EnvServer


@dataclass(frozen=True)
class ServerLocation:
    """Where one incarnation of a server actor serves.

    Attributes:
        address: the endpoint clients connect to (``tcp://NODE_IP:PORT``).
        node_id: the Ray node id (hex) the actor runs on.
        node_ip: that node's address, which the server binds.
        pid: the server's process id (a restarted actor has another).
        restarted: True when this incarnation is a restart by Ray.
    """

    address: str
    node_id: str
    node_ip: str
    pid: int
    restarted: bool


@dataclass(frozen=True)
class ServerSpec:
    """What a server actor serves and how (shipped to the actor when it is created).

    Attributes:
        target: what ``fastenv serve`` takes: ``module:callable``, ``path.py:callable`` or a Gymnasium id.
        env_kwargs: passed to the target's factory.
        num_envs: envs behind the server (``--num-envs``); None for one plain env.
        mode: ``"per-client"`` (each session gets its own envs) or ``"shared"``.
        insecure: allow serving without authentication on the node's (non-loopback) address.
        auth: the server's CURVE keys, or None.
        bind: the interface to bind; None binds the node's address.
        server_options: further :class:`~fastenv.EnvServer` keyword arguments
            (``port``, ``data_port``, ``heartbeat_interval``, ``shm``, ``workers``, ...).
    """

    target: str
    env_kwargs: dict[str, Any]
    num_envs: int | None
    mode: str
    insecure: bool
    auth: AuthConfig | None
    bind: str | None
    server_options: dict[str, Any]


class ServerActor:
    """One fastenv server in a Ray actor's process (wrapped by ``ray.remote`` in :mod:`fastenv.ray.placement`).

    Args:
        spec: what to serve and how.
    """

    def __init__(self, spec: ServerSpec) -> None:
        from fastenv.target import resolve_target

        factory: Any = resolve_target(spec.target, spec.env_kwargs)
        if spec.server_options.get("workers") is not None:
            from fastenv.vector.workers import TargetFactory  # workers re-resolve the target in their own processes

            factory = TargetFactory(spec.target, spec.env_kwargs)
        options = dict(spec.server_options)
        self._node_ip = ray.util.get_node_ip_address()
        self._server = EnvServer(
            factory=factory,
            bind=spec.bind or self._node_ip,
            port=options.pop("port", 0),
            mode=spec.mode,
            insecure=spec.insecure,
            auth=spec.auth,
            num_envs=spec.num_envs,
            **options,
        )
        try:
            self._address = self._server.start()
        except BaseException:
            self._server.close()
            raise
        context = ray.get_runtime_context()
        self._location = ServerLocation(
            address=self._address,
            node_id=context.get_node_id(),
            node_ip=self._node_ip,
            pid=os.getpid(),
            restarted=bool(context.was_current_actor_reconstructed),
        )

    def location(self) -> ServerLocation:
        """Where this incarnation serves."""
        return self._location

    def sessions(self) -> int:
        """How many client sessions the server holds."""
        return self._server.sessions

    def close(self) -> None:
        """Stop serving: end the sessions, close the envs and sockets (idempotent)."""
        self._server.close()

    def __repr__(self) -> str:
        return f"ServerActor({getattr(self, '_address', 'starting')})"
