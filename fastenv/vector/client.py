"""FastVectorEnv: a Gymnasium ``VectorEnv`` over the envs of one or more fastenv servers."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from fastenv.client import FastRemoteEnv
from fastenv.errors import (
    AlreadyPendingError,
    AutoresetModeError,
    ClientClosedError,
    FastEnvError,
    IncompatibleEnvsError,
    NoPendingCallError,
)
from fastenv.vector import batch, calls
from fastenv.vector.batched import FastBatchedVectorEnv, parse_autoreset_mode
from fastenv.vector.arguments import check_reset_mask, per_env_seeds
from fastenv.vector.infos import merge_infos
from fastenv.vector.pool_client import AsyncPoolMixin, PoolClient


class _State(Enum):
    DEFAULT = "default"
    WAITING_STEP = "step"


class FastVectorEnv(AsyncPoolMixin, VectorEnv):
    """Gymnasium's ``VectorEnv`` over the envs served by one or more fastenv servers.

    Each address is a server started with ``fastenv serve TARGET --num-envs N``
    (a server without ``--num-envs`` contributes its one env). The vector env's
    envs are the servers' envs in the order given: with two servers of 4 envs,
    envs 0-3 live on the first, 4-7 on the second. It behaves like
    ``gymnasium.vector.SyncVectorEnv`` over the same envs: batched spaces,
    next-step autoreset (or same-step, see ``autoreset_mode``),
    ``reset(seed=s)`` seeding env ``i`` with ``s + i``, infos merged into
    Gymnasium's ``{key: array, "_key": mask}`` form.

    ``step`` sends the actions to every server before it waits for any, so the
    servers step at the same time. With one server the batch comes back as the
    server sent it: on shared memory the observations, rewards, terminations
    and truncations are views into the session's arena, never written again
    while the caller holds them (pass ``copy=True`` for owned arrays). With
    several servers each server's rows are written once into a new batch.

    With ``batch_size=k`` (one server) the envs can also be driven as an
    EnvPool-style async pool: :meth:`send` starts a step of some envs and
    returns at once, :meth:`recv` returns the first ``k`` envs to finish with
    their ids while the others keep stepping (``--workers`` servers step
    them in parallel, so uneven envs do not wait for the slowest)::

        envs = fastenv.FastVectorEnv(address, batch_size=8)
        envs.async_reset(seed=0)
        while training:
            obs, rewards, terminations, truncations, infos, env_ids = envs.recv()
            envs.send(policy(obs), env_ids)

    Args:
        addresses: one server address, or a list of them (on any hosts).
        batch_size: how many envs :meth:`recv` returns (None: no async pool).
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` or ``SAME_STEP`` (or
            their names, ``"same_step"``): how the servers' envs autoreset,
            set on the servers that differ when connecting (in shared mode
            every client of a server sees it) and declared in
            ``metadata["autoreset_mode"]``. Same-step puts ``final_obs`` /
            ``final_info`` in the infos, as ``SyncVectorEnv`` does. None
            (default): as the servers declare (``fastenv serve --autoreset``;
            next-step when they do not). A shared server that declares a mode
            refuses another one with :class:`~fastenv.errors.AutoresetModeError`.
        **client_kwargs: passed to every :class:`~fastenv.FastRemoteEnv`
            (``timeout``, ``transport``, ``copy``, ...).

    Example::

        with fastenv.FastVectorEnv(["10.0.0.5:5555", "10.0.0.6:5555"]) as envs:
            obs, infos = envs.reset(seed=0)
            obs, rewards, terminations, truncations, infos = envs.step(envs.action_space.sample())
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        *,
        batch_size: int | None = None,
        autoreset_mode: AutoresetMode | str | None = None,
        **client_kwargs: Any,
    ) -> None:
        addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        if not addresses:
            raise ValueError("FastVectorEnv needs at least one server address")
        self.closed = False
        self._state = _State.DEFAULT
        self._pending: list[calls.PendingCall] = []
        self._pool: PoolClient | None = None
        self.remotes: tuple[FastRemoteEnv, ...] = ()
        connected: list[FastRemoteEnv] = []
        try:
            for address in addresses:
                connected.append(FastRemoteEnv(address, vector=True, **client_kwargs))
            self.remotes = tuple(connected)
            self._describe()
            self._agree_autoreset(None if autoreset_mode is None else parse_autoreset_mode(autoreset_mode))
            if batch_size is not None:
                self._pool = self._open_pool(batch_size)
        except BaseException:
            self.closed = True
            for remote in connected:
                remote.close()
            raise

    @classmethod
    def batched(cls, address: str, **client_kwargs: Any) -> FastBatchedVectorEnv:
        """A vector env over ONE served env that is batched inside (Isaac Lab's shape).

        The env at ``address`` (served without ``--num-envs``) has ``num_envs``
        rows, ``single_observation_space`` / ``single_action_space``, steps all
        rows in one call and resets done rows itself; see
        :class:`~fastenv.FastBatchedVectorEnv` (``autoreset_mode=`` and the
        :class:`~fastenv.FastRemoteEnv` keyword arguments are accepted).

        Example::

            with fastenv.FastVectorEnv.batched("gpu-box:5555") as envs:
                obs, infos = envs.reset(seed=0)
        """
        return FastBatchedVectorEnv(address, **client_kwargs)

    def _describe(self) -> None:
        """Read each server's env count and spaces; check the servers agree."""
        counts = []
        first = self.remotes[0]
        for remote in self.remotes:
            try:
                counts.append(int(remote.num_envs))
                spaces = (remote.single_observation_space, remote.single_action_space)
            except AttributeError:
                raise IncompatibleEnvsError(
                    f"the server at {remote.address} does not serve a vector of envs "
                    f"({remote.env_info.get('class')}); update it to a fastenv that supports --num-envs"
                ) from None
            if remote is first:
                self.single_observation_space, self.single_action_space = spaces
            elif spaces != (self.single_observation_space, self.single_action_space):
                raise IncompatibleEnvsError(
                    f"the server at {remote.address} serves spaces {spaces[0]} / {spaces[1]}, but the one at "
                    f"{first.address} serves {self.single_observation_space} / {self.single_action_space}"
                )
        self.envs_per_server: tuple[int, ...] = tuple(counts)
        self._bounds = list(itertools.pairwise(itertools.accumulate(counts, initial=0)))
        self.num_envs = sum(counts)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(first.metadata or {})
        self.spec = first.spec
        self.render_mode = first.render_mode

    def _agree_autoreset(self, wanted: AutoresetMode | None) -> None:
        """Autoreset as ``wanted`` (switching the servers that differ), else as the servers declare."""
        served = [
            parse_autoreset_mode((remote.metadata or {}).get("autoreset_mode", AutoresetMode.NEXT_STEP))
            for remote in self.remotes
        ]
        if wanted is None:
            if len(set(served)) > 1:
                modes = ", ".join(f"{remote.address}: {mode.name}" for remote, mode in zip(self.remotes, served))
                raise IncompatibleEnvsError(
                    f"the servers autoreset differently ({modes}); pass autoreset_mode= to choose one for all"
                )
            self.metadata["autoreset_mode"] = served[0]
            return
        for remote, mode in zip(self.remotes, served):
            if mode is wanted:
                continue
            try:
                remote.call("set_autoreset_mode", wanted.value)
            except AutoresetModeError as exc:
                raise AutoresetModeError(f"the server at {remote.address}: {exc}") from None
            except AttributeError:
                raise IncompatibleEnvsError(
                    f"the server at {remote.address} cannot switch autoreset modes; update its fastenv"
                ) from None
        self.metadata["autoreset_mode"] = wanted

    # ------------------------------------------------------------------ info

    @property
    def transport(self) -> tuple[str, ...]:
        """Each server's data plane (``"shm"`` or ``"tcp"``), in server order."""
        return tuple(remote.transport for remote in self.remotes)

    @property
    def transport_reason(self) -> tuple[str, ...]:
        """Why each server's data plane was chosen."""
        return tuple(remote.transport_reason for remote in self.remotes)

    @property
    def addresses(self) -> tuple[str, ...]:
        """The servers' addresses, in order."""
        return tuple(remote.address for remote in self.remotes)

    # ------------------------------------------------------------------ reset / step

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every env; returns ``(observations, infos)`` like ``SyncVectorEnv.reset``.

        Args:
            seed: None, an int (env ``i`` gets ``seed + i``), or one seed per env.
            options: passed to every env's ``reset``; ``options["reset_mask"]``
                (bool array, one per env) resets only the marked envs.
        """
        self._check_idle("reset")
        seeds = per_env_seeds(seed, self.num_envs)
        mask = None
        if options is not None and "reset_mask" in options:
            mask = check_reset_mask(options["reset_mask"], self.num_envs)
        pending = []
        for remote, (start, stop) in zip(self.remotes, self._bounds):
            server_options = options
            if mask is not None:
                server_options = {**options, "reset_mask": mask[start:stop]}  # type: ignore[dict-item]
            pending.append(
                calls.PendingCall(remote, "reset", (), {"seed": seeds[start:stop], "options": server_options})
            )
        calls.start(pending)
        results = calls.gather(pending, None)
        return self._join_observations([obs for obs, _ in results]), self._join_infos([infos for _, infos in results])

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env with its row of ``actions``; autoreset as ``metadata["autoreset_mode"]`` says.

        Returns:
            ``(observations, rewards, terminations, truncations, infos)``.
        """
        if len(self.remotes) == 1:  # one round trip: the client's synchronous call (one C call each way on shm)
            self._check_idle("step")
            observations, rewards, terminations, truncations, infos = self.remotes[0].step(actions)
            return observations, rewards, terminations, truncations, self._join_infos([infos])
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: Any) -> None:
        """Send each server its rows of ``actions`` (a batch of :attr:`action_space`).

        Raises:
            ClientClosedError: the vector env is closed.
            AlreadyPendingError: a ``step_async`` is still waiting for its :meth:`step_wait`.
        """
        self._check_idle("step_async")
        if len(self.remotes) == 1:
            parts = [actions]
        else:
            parts = [batch.split(self.single_action_space, actions, start, stop) for start, stop in self._bounds]
        pending = [calls.PendingCall(remote, "step", (part,), None) for remote, part in zip(self.remotes, parts)]
        calls.start(pending)
        self._pending = pending
        self._state = _State.WAITING_STEP

    def step_wait(self, timeout: float | None = None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Wait for the step sent by :meth:`step_async` and return the batched results.

        Args:
            timeout: seconds to wait for all servers; None waits as long as each
                client's own ``timeout``.

        Raises:
            ClientClosedError: the vector env is closed.
            NoPendingCallError: no :meth:`step_async` is pending.
            FastEnvTimeout: the servers did not all answer in time (the step is
                then abandoned: reset before stepping again).
        """
        self._check_open("step_wait")
        if self._state is not _State.WAITING_STEP:
            raise NoPendingCallError("step_wait() was called without a pending step_async()")
        pending, self._pending = self._pending, []
        self._state = _State.DEFAULT
        results = calls.gather(pending, timeout)
        if len(results) == 1:
            observations, rewards, terminations, truncations, _ = results[0]
        else:
            observations = self._join_observations([result[0] for result in results])
            rewards, terminations, truncations = (np.concatenate([result[k] for result in results]) for k in (1, 2, 3))
        return observations, rewards, terminations, truncations, self._join_infos([result[4] for result in results])

    # ------------------------------------------------------------------ other calls

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call the method ``name`` of every env (or read it, if it is not callable); one result per env."""
        return tuple(
            itertools.chain.from_iterable(self._broadcast("call", [(name, *args)] * len(self.remotes), kwargs))
        )

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Every env's attribute ``name``, one per env."""
        return tuple(itertools.chain.from_iterable(self._broadcast("get_attr", [(name,)] * len(self.remotes))))

    def set_attr(self, name: str, values: Any) -> None:
        """Set attribute ``name`` on every env: one value per env (list or tuple), or one for all."""
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr needs one value per env: got {len(values)} values for {self.num_envs} envs")
        self._broadcast("set_attr", [(name, list(values[start:stop])) for start, stop in self._bounds])

    def render(self) -> tuple[Any, ...]:
        """Every env's ``render()`` result, one per env."""
        return tuple(itertools.chain.from_iterable(self._broadcast("render", [()] * len(self.remotes))))

    def _broadcast(self, method: str, args: list[tuple], kwargs: dict[str, Any] | None = None) -> list[Any]:
        self._check_idle(method)
        pending = [calls.PendingCall(remote, method, arg, kwargs) for remote, arg in zip(self.remotes, args)]
        calls.start(pending)
        return calls.gather(pending, None)

    # ------------------------------------------------------------------ merging

    def _join_observations(self, parts: list[Any]) -> Any:
        if len(parts) == 1:
            return parts[0]
        return batch.join(self.single_observation_space, parts, batch.empty(self.single_observation_space, self.num_envs))

    def _join_infos(self, per_server: list[list[dict[str, Any]]]) -> dict[str, Any]:
        every = per_server[0] if len(per_server) == 1 else list(itertools.chain.from_iterable(per_server))
        return merge_infos(every, self.num_envs, self._add_info)

    # ------------------------------------------------------------------ lifetime

    def _check_open(self, what: str) -> None:
        if self.closed:
            raise ClientClosedError(f"{what}() on a closed FastVectorEnv")

    def _check_idle(self, what: str) -> None:
        self._check_open(what)
        if self._state is not _State.DEFAULT:
            raise AlreadyPendingError(f"{what}() while a step_async() is waiting for step_wait()")
        if self._pool is not None and self._pool.busy:
            raise AlreadyPendingError(f"{what}() while envs of the async pool are in flight: recv() them first")

    def close_extras(self, timeout: float = 2.0, **kwargs: Any) -> None:
        """Drop a pending step and close every server connection (``close()`` is idempotent)."""
        pending, self._pending = self._pending, []
        self._state = _State.DEFAULT
        for call in pending:
            call.discard(timeout)
        if self._pool is not None:
            self._pool.discard(timeout)
        for remote in self.remotes:
            try:
                remote.close(timeout)
            except FastEnvError:
                pass  # close the others; FastRemoteEnv.close does not raise for a server that is gone

    def __enter__(self) -> FastVectorEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self.__dict__.get("closed", True) and self.__dict__.get("remotes"):
            warnings.warn(
                f"FastVectorEnv({list(self.addresses)}) was not closed; use `with` or call close()",
                ResourceWarning,
                stacklevel=2,
            )
            self.close(timeout=0.5)

    def __repr__(self) -> str:
        name = f"{self.spec.id}, " if getattr(self, "spec", None) is not None else ""
        return f"FastVectorEnv({name}num_envs={self.num_envs}, servers={len(self.remotes)})"
