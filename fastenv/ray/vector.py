"""RayVectorEnv: one :class:`~fastenv.FastVectorEnv` over the servers of a :class:`~fastenv.ray.ServerGroup`.

Each server is reached through a :class:`ServerSlot`, which stands where a
:class:`~fastenv.FastRemoteEnv` stands in a ``FastVectorEnv`` (``send_call`` /
``receive_result`` and every attribute pass through to the current client).
A dropped connection is first left to the client's own reconnection (it
resumes the session when the server still holds it). When the server is gone
(the client raises :class:`~fastenv.ConnectionLost` or
:class:`~fastenv.SessionLost`, or a call times out and Ray reports the actor
on another process), the slot asks the actor where it serves now
(:meth:`ServerGroup.locate`: a call that Ray holds until the restarted actor
answers), opens a session there, resets it with the last ``reset`` arguments,
and answers the interrupted call: a ``step`` gets the reset observations with
reward 0 and no termination (as a next-step autoreset does), and each of the
server's envs gets ``info["fastenv_recreated"] = True``. The other servers'
envs step as usual in the same step. All of it within the call's timeout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fastenv.client import FastRemoteEnv
from fastenv.control.address import refuses_connections
from fastenv.errors import ConnectionLost, FastEnvError, FastEnvTimeout, IncompatibleEnvsError, TransportError
from fastenv.ray.actor import ServerLocation
from fastenv.ray.errors import ServerGone
from fastenv.session.client import DEFAULT_TIMEOUT
from fastenv.vector.client import FastVectorEnv

RECREATED_KEY = "fastenv_recreated"  # info key set on every env whose session was recreated in that call
RECOVER_TIMEOUT_S = 60.0
_POLL_S = 0.05  # between tries while a restarted server is not reachable yet
_LOCATE_S = 5.0  # longest single wait for the actor's answer while recovering


class Servers(Protocol):
    """What the vector env needs of a :class:`~fastenv.ray.ServerGroup`."""

    @property
    def servers(self) -> tuple[ServerLocation, ...]: ...

    @property
    def addresses(self) -> tuple[str, ...]: ...

    def __len__(self) -> int: ...

    def locate(self, index: int, timeout: float = ...) -> ServerLocation: ...

    def client_kwargs(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Recovery:
    """One server's envs recreated on a restarted server.

    Attributes:
        server: the server's index in the group.
        envs: the vector env's indices of the envs recreated.
        seconds: from the failed call's wait to the recreated envs' reset result.
        location: where the server serves now.
        cause: what the client saw (the error's type and message).
        at: when the recovery ended (``time.monotonic()``).
    """

    server: int
    envs: tuple[int, ...]
    seconds: float
    location: ServerLocation
    cause: str
    at: float


class ServerSlot:
    """The client of one server of a :class:`RayVectorEnv`, replaced when the server is restarted.

    Args:
        group: the servers.
        index: this server's index in the group.
        remote: the connected client.
        client_kwargs: how to connect a replacement (``transport``, ``auth``, ``timeout``, ...).
        recover_timeout: seconds a recovery may take when the call has no timeout of its own.
    """

    def __init__(
        self,
        group: Servers,
        index: int,
        remote: FastRemoteEnv,
        client_kwargs: dict[str, Any],
        recover_timeout: float,
    ) -> None:
        self.group = group
        self.index = index
        self.remote = remote
        self.client_kwargs = client_kwargs
        self.recover_timeout = recover_timeout
        self.first_env = 0
        self.recoveries: list[Recovery] = []
        self._call: tuple[str, tuple, dict[str, Any] | None] | None = None
        self._send_failure: FastEnvError | None = None
        self._last_reset: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        remote = self.__dict__.get("remote")
        if remote is None:
            raise AttributeError(name)
        return getattr(remote, name)

    # ------------------------------------------------------------------ the calls FastVectorEnv makes

    def send_call(
        self, name: str, args: tuple = (), kwargs: dict | None = None, *, timeout: Any = DEFAULT_TIMEOUT
    ) -> None:
        """Send a call; a server found gone here is recovered when the result is asked for."""
        self._call = (name, args, kwargs)
        self._send_failure = None
        if name == "reset":
            self._last_reset = dict(kwargs or {})
        try:
            self.remote.send_call(name, args, kwargs, timeout=timeout)
        except ConnectionLost as exc:
            self._send_failure = exc

    def receive_result(self, timeout: Any = DEFAULT_TIMEOUT) -> Any:
        """The call's result; after a lost server, the answer of its recreated envs (see the module)."""
        started = time.monotonic()
        failure = self._send_failure
        if failure is None:
            try:
                return self.remote.receive_result(timeout)
            except ConnectionLost as exc:
                failure = exc
            except FastEnvTimeout as exc:
                if not self._restarted():
                    raise
                failure = exc
        self._send_failure = None
        budget = self.recover_timeout if timeout is DEFAULT_TIMEOUT or timeout is None else float(timeout)
        return self._recover(failure, started + budget, started)

    def close(self, timeout: float = 2.0) -> None:
        """Close the client (ends the session)."""
        self.remote.close(timeout)

    # ------------------------------------------------------------------ recovery

    def _restarted(self) -> bool:
        """Whether Ray reports this server in another process than the one the client talks to."""
        known = self.group.servers[self.index]
        try:
            now = self.group.locate(self.index, timeout=_LOCATE_S)
        except FastEnvTimeout:
            return False
        return (now.pid, now.node_id, now.address) != (known.pid, known.node_id, known.address)

    def _recover(self, failure: FastEnvError, deadline: float, started: float) -> Any:
        if self._call is None:
            raise failure
        name, args, kwargs = self._call
        old = self.remote
        remote = self._reconnect(old.address, deadline, failure)
        try:
            reset_kwargs = {**self._last_reset, "options": _without_mask(self._last_reset.get("options"))}
            observations, infos = self._within(remote, "reset", (), reset_kwargs, deadline)
            self._check_same_envs(remote, old)
            if name == "step":
                n = int(remote.num_envs)
                result: Any = (
                    observations,
                    np.zeros(n, dtype=np.float64),
                    np.zeros(n, dtype=np.bool_),
                    np.zeros(n, dtype=np.bool_),
                    _marked(infos),
                )
            elif name == "reset":
                result = (observations, _marked(infos))
            else:
                result = self._within(remote, name, args, kwargs, deadline)
        except BaseException:
            remote.close(0.5)
            raise
        old.close(0.2)
        self.remote = remote
        location = self.group.servers[self.index]
        count = int(remote.num_envs)
        self.recoveries.append(
            Recovery(
                server=self.index,
                envs=tuple(range(self.first_env, self.first_env + count)),
                seconds=time.monotonic() - started,
                location=location,
                cause=f"{type(failure).__name__}: {failure}",
                at=time.monotonic(),
            )
        )
        return result

    def _reconnect(self, old_address: str, deadline: float, failure: FastEnvError) -> FastRemoteEnv:
        """A client connected to where the server serves now (polled until ``deadline``)."""
        last: BaseException = failure
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FastEnvTimeout(
                    f"server {self.index} of the group was not back within the call's timeout "
                    f"(last error: {type(last).__name__}: {last})"
                ) from failure
            try:
                location = self.group.locate(self.index, timeout=min(remaining, _LOCATE_S))
            except FastEnvTimeout as exc:  # Ray is still restarting the actor
                last = exc
                continue
            except ServerGone:
                raise
            if location.address == old_address and refuses_connections(location.address, min(remaining, 1.0)):
                time.sleep(_POLL_S)  # Ray has not noticed the death yet: ask again
                continue
            try:
                return FastRemoteEnv(
                    location.address,
                    vector=True,
                    connect_timeout=max(0.01, min(deadline - time.monotonic(), 10.0)),
                    **self.client_kwargs,
                )
            except (TransportError, FastEnvTimeout) as exc:
                last = exc
                time.sleep(_POLL_S)

    @staticmethod
    def _within(remote: FastRemoteEnv, name: str, args: tuple, kwargs: dict[str, Any] | None, deadline: float) -> Any:
        remote.send_call(name, args, kwargs)
        return remote.receive_result(max(0.0, deadline - time.monotonic()))

    def _check_same_envs(self, remote: FastRemoteEnv, old: FastRemoteEnv) -> None:
        for what in ("num_envs", "single_observation_space", "single_action_space"):
            if getattr(remote, what) != getattr(old, what):
                raise IncompatibleEnvsError(
                    f"server {self.index} came back with {what} {getattr(remote, what)}, "
                    f"not {getattr(old, what)} as before"
                )

    def __repr__(self) -> str:
        return f"ServerSlot({self.index}, {self.remote!r})"


def _without_mask(options: Any) -> Any:
    if isinstance(options, dict) and "reset_mask" in options:
        return {key: value for key, value in options.items() if key != "reset_mask"} or None
    return options


def _marked(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**info, RECREATED_KEY: True} for info in infos]


class RayVectorEnv(FastVectorEnv):
    """A :class:`~fastenv.FastVectorEnv` over the servers of a :class:`~fastenv.ray.ServerGroup`, surviving restarts.

    Envs are the servers' envs in server order (bundle order, whatever the
    nodes), so ``reset(seed=s)`` seeds env ``i`` with ``s + i`` as
    ``SyncVectorEnv`` does. Each client picks its transport with the usual
    probe: shared memory when the server's process is on this host and its
    segment can be mapped, TCP otherwise; ``transports`` forces some servers'.

    When a server's process or node dies and Ray restarts it, the next call
    recreates that server's envs on the new incarnation (reset with the last
    ``reset`` arguments), reports them in that call's infos
    (``infos["fastenv_recreated"]``, a bool per env, with its ``"_"`` mask),
    and the other envs step on. :attr:`recoveries` lists every recovery.

    Args:
        group: the servers (from :func:`~fastenv.ray.place_servers`).
        transports: per-server transport: one per server, or ``{index: transport}``
            for some; the others use ``client_kwargs["transport"]`` (default ``"auto"``).
        recover_timeout: seconds a recovery may take for a call without a
            timeout of its own (a ``step_wait(timeout)`` bounds it instead).
        **client_kwargs: passed to every :class:`~fastenv.FastRemoteEnv`
            (``timeout``, ``copy``, ``heartbeat_interval``, ...); the group's keys are added.
    """

    def __init__(
        self,
        group: Servers,
        *,
        transports: Sequence[str] | dict[int, str] | None = None,
        recover_timeout: float = RECOVER_TIMEOUT_S,
        **client_kwargs: Any,
    ) -> None:
        client_kwargs = {**group.client_kwargs(), **client_kwargs}
        client_kwargs.pop("vector", None)
        default = client_kwargs.get("transport", "auto")
        if transports is None:
            chosen = [default] * len(group)
        elif isinstance(transports, dict):
            chosen = [transports.get(index, default) for index in range(len(group))]
        else:
            chosen = list(transports)
        if len(chosen) != len(group):
            raise ValueError(f"transports needs one entry per server: got {len(chosen)} for {len(group)} servers")
        self.group = group
        super().__init__(list(group.addresses), **client_kwargs)
        try:
            slots = []
            for index, remote in enumerate(self.remotes):
                kwargs = {**client_kwargs, "transport": chosen[index]}
                if chosen[index] != default:  # reconnect with the transport asked for this server
                    remote.close()
                    remote = FastRemoteEnv(remote.address, vector=True, **kwargs)
                    self.remotes = (*self.remotes[:index], remote, *self.remotes[index + 1 :])
                slots.append(ServerSlot(group, index, remote, kwargs, recover_timeout))
            first = 0
            for slot, count in zip(slots, self.envs_per_server):
                slot.first_env = first
                first += count
            self.remotes = tuple(slots)  # type: ignore[arg-type]  # a slot answers as its FastRemoteEnv does
        except BaseException:
            self.close()
            raise

    @property
    def slots(self) -> tuple[ServerSlot, ...]:
        """One :class:`ServerSlot` per server, in order."""
        return self.remotes  # type: ignore[return-value]

    @property
    def recoveries(self) -> list[Recovery]:
        """Every recovery so far, oldest first."""
        return sorted((r for slot in self.slots for r in slot.recoveries), key=lambda r: r.at)

    def __repr__(self) -> str:
        return f"RayVectorEnv(num_envs={self.num_envs}, servers={len(self.remotes)}, transports={self.transport})"
