"""Place fastenv servers on a Ray cluster: :func:`place_servers` and the :class:`ServerGroup` it returns."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import ray
import zmq
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fastenv.control.address import is_loopback
from fastenv.control.auth import AuthConfig, AuthLike, client_auth
from fastenv.errors import FastEnvTimeout, ServerConfigError
from fastenv.ray.actor import ServerActor, ServerLocation, ServerSpec
from fastenv.ray.errors import PlacementError, PlacementTimeout, ServerGone

STRATEGIES = ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")
_POLL_S = 0.02
GENERATE = "generate"  # auth=GENERATE: the group makes a fresh CURVE key pair per side


def generated_keys() -> tuple[AuthConfig, AuthConfig]:
    """A fresh ``(server, client)`` pair of CURVE configurations that accept each other (kept in memory)."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    server = AuthConfig(server_public, server_secret, authorized_clients=frozenset({client_public}))
    return server, AuthConfig(client_public, client_secret, server_key=server_public)


def place_servers(
    target: str,
    num_servers: int,
    *,
    num_envs: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    strategy: str = "SPREAD",
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    resources: dict[str, float] | None = None,
    mode: str = "per-client",
    auth: AuthLike | None = None,
    insecure: bool = False,
    bind: str | None = None,
    max_restarts: int = -1,
    timeout: float = 60.0,
    **server_options: Any,
) -> ServerGroup:
    """Start ``num_servers`` fastenv servers as Ray actors, one per placement-group bundle.

    Each server is a Ray actor whose process builds its env(s) from ``target``
    (``num_envs`` of them, as ``fastenv serve TARGET --num-envs N`` does) and
    serves them on its node's address. The call returns once every server
    answers with its address, or raises within ``timeout``.

    Args:
        target: ``module:callable``, ``path/to/file.py:callable`` or a Gymnasium id;
            it must be importable on every node.
        num_servers: how many servers (actors, bundles).
        num_envs: envs behind each server; None for one plain env per server.
        env_kwargs: passed to the target's factory.
        strategy: how bundles are laid on nodes: ``"SPREAD"`` (across nodes,
            best effort), ``"PACK"`` (on as few nodes as possible), or the
            strict forms ``"STRICT_SPREAD"`` / ``"STRICT_PACK"``.
        num_cpus, num_gpus, resources: what each server reserves (its bundle).
        mode: ``"per-client"`` (each client session gets its own envs; what
            :class:`~fastenv.ray.RayVectorEnv` and the RLlib creator expect) or ``"shared"``.
        auth: CURVE authentication: ``"generate"`` (a key pair per side made
            here; the servers' keys travel to them in the actors' creation
            arguments), a key directory readable at the same path on every
            node and here (``fastenv keygen DIR``), or None.
        insecure: serve without authentication on the nodes' addresses (anyone
            who can reach the ports can drive the envs); needed when ``auth`` is
            None, as with ``fastenv serve --insecure``.
        bind: the interface each server binds (default: its node's address).
        max_restarts: how often Ray restarts a server whose process or node
            died (-1: always); a restarted server serves on a new address.
        timeout: seconds for the placement group and every server to come up.
        **server_options: further :class:`~fastenv.EnvServer` arguments
            (``heartbeat_interval``, ``shm``, ``workers``, ``shm_slots``, ``port``,
            ``data_port``, ...); a fixed ``port`` fits one server per node.

    Raises:
        ServerConfigError: bad arguments (no authentication and no ``insecure``).
        PlacementTimeout: the bundles or servers were not ready within ``timeout``.
        PlacementError: a server failed to start (its error in the message).

    Example::

        with fastenv.ray.place_servers("CartPole-v1", 4, num_envs=4, insecure=True) as group:
            with group.vector_env() as envs:
                obs, infos = envs.reset(seed=0)
    """
    if num_servers < 1:
        raise ServerConfigError("place_servers needs at least one server")
    if strategy not in STRATEGIES:
        raise ServerConfigError(f"unknown placement strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if auth is None and not insecure and (bind is None or not is_loopback(bind)):
        raise ServerConfigError(
            "servers on a cluster bind their node's address: pass auth='generate' (or a key directory "
            "from `fastenv keygen DIR`), or insecure=True if anyone who can reach the nodes may drive the envs"
        )
    server_keys: AuthLike | None = auth
    client_keys: AuthConfig | None = None
    if isinstance(auth, str) and auth == GENERATE:
        server_keys, client_keys = generated_keys()
    elif auth is not None:
        client_keys = client_auth(auth)
    bundle = {"CPU": float(num_cpus), "GPU": float(num_gpus), **{k: float(v) for k, v in (resources or {}).items()}}
    bundle = {name: amount for name, amount in bundle.items() if amount > 0}
    if not bundle:
        raise ServerConfigError("each server must reserve some resource (num_cpus, num_gpus or resources)")
    spec = ServerSpec(
        target=target,
        env_kwargs=dict(env_kwargs or {}),
        num_envs=num_envs,
        mode=mode,
        insecure=insecure,
        auth=server_keys,  # type: ignore[arg-type]  # a directory is loaded on the node
        bind=bind,
        server_options=dict(server_options),
    )
    deadline = time.monotonic() + timeout
    group_pg = placement_group([dict(bundle) for _ in range(num_servers)], strategy=strategy)
    group = ServerGroup(group_pg, spec, client_keys)
    try:
        try:
            ray.get(group_pg.ready(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise PlacementTimeout(
                f"the placement group of {num_servers} bundles {bundle} ({strategy}) was not ready within "
                f"{timeout:g}s: the cluster lacks those resources ({ray.available_resources()} available)"
            ) from None
        remote_class = ray.remote(ServerActor)
        for index in range(num_servers):
            options = {
                "num_cpus": bundle.get("CPU", 0),
                "num_gpus": bundle.get("GPU", 0),
                "resources": {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")},
                "max_restarts": max_restarts,
                "max_task_retries": -1,  # calls made while the actor restarts wait for the new incarnation
                "scheduling_strategy": PlacementGroupSchedulingStrategy(group_pg, placement_group_bundle_index=index),
            }
            group.actors.append(remote_class.options(**options).remote(spec))  # type: ignore[attr-defined]
        try:
            group.locate_all(max(0.0, deadline - time.monotonic()))
        except ServerGone as exc:  # an actor whose __init__ raised is dead from the start
            raise PlacementError(f"a server failed to start: {exc}") from exc
    except BaseException:
        group.shutdown()
        raise
    return group


class ServerGroup:
    """Servers placed by :func:`place_servers`: their addresses and nodes, a vector env over them, shutdown.

    Every Ray object it holds (actors, placement group) belongs to the driver's
    job, so the servers die with the driver even without :meth:`shutdown`.

    Attributes:
        actors: the server actors, in bundle order (env order of :meth:`vector_env`).
        placement_group: the placement group holding one bundle per server.
        spec: what every server serves.
        client_auth: the clients' CURVE keys (None without authentication);
            :meth:`client_kwargs` passes them on.
    """

    def __init__(self, group_pg: PlacementGroup, spec: ServerSpec, client_keys: AuthConfig | None) -> None:
        self.placement_group = group_pg
        self.spec = spec
        self.client_auth = client_keys
        self.actors: list[Any] = []
        self._locations: list[ServerLocation | None] = []
        self.closed = False

    # ------------------------------------------------------------------ where the servers are

    @property
    def servers(self) -> tuple[ServerLocation, ...]:
        """Each server's last known location (address, node, pid), in order."""
        return tuple(location for location in self._locations if location is not None)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Each server's last known address, in order."""
        return tuple(location.address for location in self.servers)

    @property
    def nodes(self) -> tuple[str, ...]:
        """The Ray node id each server last ran on, in order."""
        return tuple(location.node_id for location in self.servers)

    def __len__(self) -> int:
        return len(self.actors)

    def locate(self, index: int, timeout: float = 30.0) -> ServerLocation:
        """Ask server ``index`` where it serves now (after a restart: its new address).

        A call to an actor that Ray is restarting waits for the new
        incarnation, within ``timeout``.

        Raises:
            FastEnvTimeout: no answer within ``timeout``.
            ServerGone: the actor is dead for good.
        """
        self._check_open()
        location = self._get(self.actors[index].location.remote(), timeout, f"server {index}")
        self._locations[index] = location
        return location

    def locate_all(self, timeout: float = 30.0) -> tuple[ServerLocation, ...]:
        """Ask every server where it serves (one round, all at once, within ``timeout``)."""
        self._check_open()
        self._locations = list(self._get([actor.location.remote() for actor in self.actors], timeout, "the servers"))
        return self.servers

    def sessions(self, timeout: float = 30.0) -> tuple[int, ...]:
        """How many client sessions each server holds."""
        return tuple(self._get([actor.sessions.remote() for actor in self.actors], timeout, "the servers"))

    @staticmethod
    def _get(refs: Any, timeout: float, what: str) -> Any:
        try:
            return ray.get(refs, timeout=max(0.0, timeout))
        except ray.exceptions.GetTimeoutError:
            raise FastEnvTimeout(f"{what} did not answer within {timeout:g}s") from None
        except ray.exceptions.RayActorError as exc:
            raise ServerGone(f"{what}: the actor is dead and will not be restarted: {exc}") from exc
        except ray.exceptions.RayTaskError as exc:  # a server's __init__ raised: the actor never came up
            raise PlacementError(f"{what} failed to start: {exc}") from exc

    # ------------------------------------------------------------------ clients

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments a :class:`~fastenv.FastRemoteEnv` needs for these servers (``auth``)."""
        return {"auth": self.client_auth} if self.client_auth is not None else {}

    def vector_env(self, *, transports: Sequence[str] | dict[int, str] | None = None, **kwargs: Any) -> Any:
        """A :class:`~fastenv.ray.RayVectorEnv` over every server's envs (see there for the arguments)."""
        from fastenv.ray.vector import RayVectorEnv

        return RayVectorEnv(self, transports=transports, **kwargs)

    # ------------------------------------------------------------------ lifetime

    def _check_open(self) -> None:
        if self.closed:
            raise ServerGone("this ServerGroup was shut down")

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every server (sessions ended, envs closed), kill the actors, free the bundles; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.actors:
            ready, _ = ray.wait(
                [actor.close.remote() for actor in self.actors], num_returns=len(self.actors), timeout=timeout
            )
            for ref in ready:
                try:
                    ray.get(ref, timeout=0)
                except ray.exceptions.RayError:
                    pass  # an actor that died on its own has nothing left to close
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        try:
            remove_placement_group(self.placement_group)
        except ray.exceptions.RayError:
            return  # already removed with the job
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the bundles are free for the next placement once this returns
            if placement_group_table(self.placement_group).get("state") == "REMOVED":
                return
            time.sleep(_POLL_S)

    def __enter__(self) -> ServerGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def __del__(self) -> None:
        if not self.__dict__.get("closed", True) and ray.is_initialized():
            warnings.warn(
                f"ServerGroup of {len(self.actors)} servers was not shut down; use `with` or call shutdown()",
                ResourceWarning,
                stacklevel=2,
            )

    def __repr__(self) -> str:
        return f"ServerGroup({self.spec.target!r}, servers={len(self.actors)}, addresses={list(self.addresses)})"
