"""VectorHost: N env instances behind one object that a server serves like any env.

``fastenv serve TARGET --num-envs N`` wraps N envs in a :class:`VectorHost`;
a :class:`~fastenv.FastVectorEnv` drives one or several of them. Stepping
follows ``gymnasium.vector.SyncVectorEnv`` with its default next-step
autoreset, so a host over the same envs, seeds and actions produces the same
observations, rewards, terminations and truncations. Two things differ, both
for the data plane's sake:

- ``reset`` and ``step`` return the per-env ``info`` dicts as a *list*; the
  client merges them (``VectorEnv._add_info``) once it knows each env's index
  across all servers;
- the observation returned is the host's own batch buffer (each env's
  observation is written into it once per call, and the data plane ships it
  from there). It is overwritten by the next ``reset`` / ``step``: copy it to
  keep it when you use a host in-process.

:meth:`VectorHost.set_autoreset_mode` switches to Gymnasium's same-step
autoreset (``final_obs`` / ``final_info`` in the info of an env that ended,
its observation the reset one). The ``pool_*`` methods are the server side of
the async pool (see :mod:`fastenv.vector.pool`); in this process the envs of a
``pool_send`` step at once, one after another.

``fastenv serve TARGET --num-envs N --workers W`` serves a
:class:`~fastenv.vector.workers.WorkerVectorHost` instead: the same calls and
results, with the envs stepping in W worker processes at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Box
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from fastenv import envinfo
from fastenv.errors import AutoresetModeError, PoolUsageError, ServerConfigError, UnknownMethodError
from fastenv.vector import batch
from fastenv.vector.arguments import (
    WORKER_PID_ATTR,
    attr_values,
    autoreset_mode,
    check_reset_mask,
    per_env_seeds,
    set_env_attrs,
    step_result,
)
from fastenv.vector.pool import HELD, POOL_PROTOCOL, PoolBook, leading_rows
from fastenv.vector.worker_buffer import row_writer



class VectorHost:
    """Hold ``envs`` (Gymnasium-style: spaces, ``reset`` / 5-tuple ``step``) and step them as one batch.

    Args:
        envs: the env instances; all must have equal observation and action spaces.
        close_envs: :meth:`close` also closes the envs (turn off for envs owned elsewhere).

    Attributes:
        num_envs: how many envs.
        single_observation_space, single_action_space: one env's spaces (env 0's).
        observation_space, action_space: the batched spaces
            (``gymnasium.vector.utils.batch_space``).
        metadata: env 0's metadata with ``autoreset_mode`` set to
            :attr:`autoreset_mode`, as Gymnasium's vector envs report it.
        autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default) or
            ``SAME_STEP`` (:meth:`set_autoreset_mode`).
        autoreset_fixed: whether :attr:`autoreset_mode` was declared fixed
            (:meth:`declare_autoreset_mode`).
        pool_protocol: version of the ``pool_*`` calls (:data:`~fastenv.vector.pool.POOL_PROTOCOL`).
        spec, render_mode: env 0's.

    Example::

        host = VectorHost([gymnasium.make("CartPole-v1") for _ in range(4)])
        obs, infos = host.reset(seed=0)           # infos: a list of 4 dicts
        obs, rewards, terminations, truncations, infos = host.step(np.zeros(4, np.int64))
    """

    autoreset_fixed = False

    def __init__(self, envs: Sequence[Any], *, close_envs: bool = True) -> None:
        self.envs = list(envs)
        if not self.envs:
            raise ServerConfigError("VectorHost needs at least one env")
        self.close_envs = close_envs
        self.num_envs = len(self.envs)
        first = self.envs[0]
        try:
            self.single_observation_space = first.observation_space
            self.single_action_space = first.action_space
        except AttributeError as exc:
            raise ServerConfigError(
                f"VectorHost needs envs with Gymnasium spaces; {type(first).__name__} has no {exc.name}"
            ) from None
        for index, env in enumerate(self.envs[1:], start=1):
            for name, expected in (
                ("observation_space", self.single_observation_space),
                ("action_space", self.single_action_space),
            ):
                got = getattr(env, name, None)
                if got != expected:
                    raise ServerConfigError(f"env {index} has {name} {got}, but env 0 has {expected}")
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata: dict[str, Any] = dict(getattr(first, "metadata", None) or {})
        self.metadata["autoreset_mode"] = self.autoreset_mode = AutoresetMode.NEXT_STEP
        self.spec = getattr(first, "spec", None)
        self.render_mode = getattr(first, "render_mode", None)
        self.closed = False
        self.pool_protocol = POOL_PROTOCOL
        self._book = PoolBook(len(self.envs))

        n = self.num_envs
        self._env_obs: list[Any] = [None] * n
        self._observations = create_empty_array(self.single_observation_space, n=n, fn=np.zeros)
        self._rewards = np.zeros(n, dtype=np.float64)
        self._terminations = np.zeros(n, dtype=np.bool_)
        self._truncations = np.zeros(n, dtype=np.bool_)
        self._autoreset = np.zeros(n, dtype=np.bool_)
        # A Box observation space: the batch is one array whose rows the envs' observations are written to.
        self._rows = type(self.single_observation_space) is Box and isinstance(self._observations, np.ndarray)

    # ------------------------------------------------------------------ env API

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Reset the envs; returns ``(batched observations, list of per-env infos)``.

        Args:
            seed: None (unseeded), an int (env ``i`` gets ``seed + i``), or one
                seed (or None) per env.
            options: passed to every env's ``reset``. An ``options["reset_mask"]``
                (bool array of shape ``(num_envs,)``) resets only the envs it
                marks, as in Gymnasium; unlike Gymnasium an all-False mask is
                allowed (nothing is reset), so a client can drive a slice of a
                larger vector env.
        """
        self._book.check_idle("reset")
        seeds = per_env_seeds(seed, self.num_envs)
        mask = None
        if options is not None and "reset_mask" in options:
            options = dict(options)
            mask = check_reset_mask(options.pop("reset_mask"), self.num_envs, allow_empty=True)
        infos: list[dict[str, Any]] = []
        if mask is None:
            self._terminations[:] = False
            self._truncations[:] = False
            self._autoreset[:] = False
        else:
            self._terminations[mask] = False
            self._truncations[mask] = False
            self._autoreset[mask] = False
        for index, (env, env_seed) in enumerate(zip(self.envs, seeds, strict=True)):
            if mask is not None and not mask[index]:
                infos.append({})
                continue
            self._env_obs[index], info = env.reset(seed=env_seed, options=options)
            infos.append(info)
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        return self._observations, infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step every env with its row of ``actions`` (a batch of :attr:`action_space`).

        With next-step autoreset (the default) an env that terminated or
        truncated on the previous step is reset instead (its action is
        ignored; reward 0, terminated and truncated False, its info from
        ``reset``); with same-step autoreset it is reset in the step that
        ended it, as Gymnasium's two modes do (:meth:`set_autoreset_mode`).

        Returns:
            ``(observations, rewards float64[n], terminations bool[n], truncations bool[n], infos)``
            with ``infos`` a list of the per-env info dicts.
        """
        self._book.check_idle("step")
        if self._rows and self.autoreset_mode is AutoresetMode.NEXT_STEP:
            return self._step_rows(actions)
        infos = [
            self._advance(index, env, action)
            for index, (action, env) in enumerate(zip(iterate(self.action_space, actions), self.envs, strict=True))
        ]
        self._observations = concatenate(self.single_observation_space, self._env_obs, self._observations)
        return self._observations, self._rewards.copy(), self._terminations.copy(), self._truncations.copy(), infos

    def _step_rows(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """:meth:`step` for a Box observation space with next-step autoreset: each observation written into its row.

        The same steps and results as the general loop (:meth:`_advance`, then
        ``concatenate``), with the per-env bookkeeping in Python lists and
        written to the flag arrays once per batch. A batch where no env is
        due for a reset (most) steps every env in one comprehension and
        transposes the results in C.
        """
        envs = self.envs
        if type(actions) is np.ndarray and type(self.action_space) is Box:
            rows_of_actions: Any = actions  # iterating a Box batch yields its rows, as gymnasium's iterate does
        else:
            rows_of_actions = iterate(self.action_space, actions)
        if not np.count_nonzero(self._autoreset):
            results = [env.step(action) for env, action in zip(envs, rows_of_actions, strict=True)]
            try:
                observations, rewards, terminations, truncations, infos = zip(*results, strict=True)
            except (TypeError, ValueError):
                observations = rewards = terminations = truncations = infos = ()
            if len(infos) != len(envs) or set(map(type, results)) != {tuple}:  # each must be step()'s 5-tuple
                for env, result in zip(envs, results, strict=True):
                    step_result(env, result)  # raises the error that says what a step must return
            self._env_obs[:] = observations
            infos = list(infos)
        else:
            pending = self._autoreset.tolist()
            observations, rewards, terminations, truncations, infos = [], [], [], [], []
            for index, (action, env) in enumerate(zip(rows_of_actions, envs, strict=True)):
                if pending[index]:
                    obs, info = env.reset()
                    reward, terminated, truncated = 0.0, False, False
                else:
                    result = env.step(action)
                    if type(result) is not tuple or len(result) != 5:
                        step_result(env, result)  # raises the error that says what a step must return
                    obs, reward, terminated, truncated, info = result
                self._env_obs[index] = obs
                observations.append(obs)
                rewards.append(reward)
                terminations.append(terminated)
                truncations.append(truncated)
                infos.append(info)
        rows = self._observations
        for index, obs in enumerate(observations):
            rows[index] = obs
        self._rewards[:] = rewards
        self._terminations[:] = terminations
        self._truncations[:] = truncations
        np.logical_or(self._terminations, self._truncations, out=self._autoreset)
        return rows, self._rewards.copy(), self._terminations.copy(), self._truncations.copy(), infos

    def _advance(self, index: int, env: Any, action: Any) -> dict[str, Any]:
        """Step (or autoreset) env ``index``: its observation into ``_env_obs``, reward and flags set; its info."""
        if self._autoreset[index]:
            self._env_obs[index], info = env.reset()
            self._rewards[index] = 0.0
            self._terminations[index] = self._truncations[index] = self._autoreset[index] = False
            return info
        obs, reward, terminated, truncated, info = step_result(env, env.step(action))
        self._rewards[index], self._terminations[index], self._truncations[index] = reward, terminated, truncated
        if terminated or truncated:
            if self.autoreset_mode is AutoresetMode.SAME_STEP:
                final = {"final_obs": obs, "final_info": info}
                obs, info = env.reset()
                info = {**final, **info}
            else:
                self._autoreset[index] = True
        self._env_obs[index] = obs
        return info

    def set_autoreset_mode(self, mode: str) -> str:
        """Autoreset as Gymnasium's ``mode`` (``"NextStep"`` or ``"SameStep"``, a name or value); the mode set.

        Meant to be called before the first ``reset``; ``metadata["autoreset_mode"]`` follows.

        Raises:
            AutoresetModeError: the mode was declared fixed
                (:meth:`declare_autoreset_mode`) and ``mode`` is another one.
        """
        parsed = autoreset_mode(mode)
        if self.autoreset_fixed and parsed is not self.autoreset_mode:
            raise AutoresetModeError(
                f"this server declares {self.autoreset_mode.name} autoreset for every client of its shared envs "
                f"(fastenv serve --autoreset); it cannot switch to {parsed.name}: connect without autoreset_mode= "
                "or serve it --mode per-client"
            )
        self._switch_autoreset(parsed)
        self.autoreset_mode = self.metadata["autoreset_mode"] = parsed
        return parsed.value

    def declare_autoreset_mode(self, mode: Any, *, fixed: bool = True) -> str:
        """Start in autoreset ``mode`` (``fastenv serve --autoreset``); the mode set.

        With ``fixed`` (a shared server) :meth:`set_autoreset_mode` refuses any
        other mode from then on; without (per-client envs) ``mode`` is only
        where the host starts, and its client may still switch.
        """
        value = self.set_autoreset_mode(mode)
        self.autoreset_fixed = fixed
        return value

    def _switch_autoreset(self, mode: AutoresetMode) -> None:
        """Make the envs autoreset as ``mode`` (in this process :meth:`_advance` reads :attr:`autoreset_mode`)."""

    # ------------------------------------------------------------------ async pool

    def pool_reset(self, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None) -> None:
        """Reset every env (as :meth:`reset`); all of them are then ready for :meth:`pool_recv`."""
        if options is not None and "reset_mask" in options:
            raise PoolUsageError("the async pool resets every env: options['reset_mask'] is not accepted")
        _, infos = self.reset(seed=seed, options=options)
        self._rewards[:] = 0.0
        self._book.ready(range(self.num_envs), infos)

    def pool_send(self, actions: Any, env_ids: Any) -> None:
        """Step the envs ``env_ids`` with ``actions`` (a batch of one row per id); they become ready."""
        book = self._book
        ids = book.check_send(env_ids, leading_rows(self.single_action_space, actions))
        rows = list(iterate(batch_space(self.single_action_space, len(ids)), actions))
        write = row_writer(self.single_observation_space, self._observations)
        for index, action in zip(ids.tolist(), rows, strict=True):
            try:
                info: Any = self._advance(index, self.envs[index], action)
                write(index, self._env_obs[index])
            except Exception as exc:  # raised by pool_recv, which returns this env
                info = exc
            book.ready([index], [info])

    def pool_recv(self, batch_size: int, timeout: float | None = None) -> tuple[Any, ...]:
        """The first ``batch_size`` ready envs: ``(obs, rewards, terminations, truncations, infos, env_ids)``.

        ``env_ids`` (int64) are sorted; ``infos`` is a list of their info dicts.
        """
        batch_size = self._book.check_recv(batch_size)
        return self._pool_result(self._book.take(batch_size))

    def pool_state(self) -> np.ndarray:
        """bool per env: in flight (sent or reset, not yet returned by :meth:`pool_recv`)."""
        return self._book.state != HELD

    def _pool_rows(self) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        return self._observations, self._rewards, self._terminations, self._truncations

    def _pool_result(self, ids: np.ndarray) -> tuple[Any, ...]:
        """Rows ``ids`` copied out; an env whose step raised is dropped and its error raised (the rest stay ready)."""
        book = self._book
        infos = [book.infos.get(index, {}) for index in ids.tolist()]
        failed = [index for index, info in zip(ids.tolist(), infos, strict=True) if isinstance(info, BaseException)]
        if failed:
            error = book.infos[failed[0]]
            book.forget(failed)
            book.put_back([index for index in ids.tolist() if index not in failed])
            raise error
        for index in ids.tolist():
            book.infos.pop(index, None)
        observations, rewards, terminations, truncations = self._pool_rows()
        obs = batch.take(self.single_observation_space, observations, ids)
        return obs, rewards[ids], terminations[ids], truncations[ids], infos, ids

    def render(self) -> tuple[Any, ...]:
        """Every env's ``render()``."""
        return tuple(env.render() for env in self.envs)

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call the public method ``name`` of every env (or read it, if it is not callable)."""
        results = []
        for env in self.envs:
            if name == WORKER_PID_ATTR and not hasattr(env, name):
                results.append(os.getpid())  # the process that steps the env (see fastenv.vector.workers)
                continue
            member = _public_member(env, name)
            results.append(member(*args, **kwargs) if callable(member) else member)
        return tuple(results)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Every env's attribute ``name`` (like Gymnasium's ``get_attr``, a method is called)."""
        return self.call(name)

    def set_attr(self, name: str, values: Any) -> None:
        """Set attribute ``name`` on every env: one value per env (list or tuple), or one for all."""
        set_env_attrs(self.envs, name, attr_values(name, values, self.num_envs))

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the envs (if ``close_envs``); idempotent. Every env is closed even if one fails."""
        if self.closed:
            return
        self.closed = True
        if not self.close_envs:
            return
        failure: BaseException | None = None
        for env in self.envs:
            close = getattr(env, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as exc:  # close the rest, then report the first failure
                failure = failure or exc
        if failure is not None:
            raise failure

    def __enter__(self) -> VectorHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = self.spec.id if self.spec is not None else type(self.envs[0]).__name__
        return f"VectorHost({name}, num_envs={self.num_envs})"


def _public_member(env: Any, name: str) -> Any:
    if name in envinfo.RESERVED_METHODS:
        raise UnknownMethodError(f"{name!r} cannot be called on the envs: close the vector env instead")
    return envinfo.resolve_member(env, name)
