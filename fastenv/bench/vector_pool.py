"""The async pool as a row of ``fastenv-bench --scaling envs`` (``fastenv-pool``), and how it is checked.

:class:`PoolVector` drives ``FastVectorEnv(address, batch_size=N/2)`` on a
``fastenv serve --num-envs N --workers auto`` server: one timed call is a
``send`` of the actions of the envs the last ``recv`` returned, then a
``recv`` of the next N/2 envs to finish (the first call after a reset sends
all N). So a call makes N/2 env steps (:func:`pool_batch`), and which envs
come back depends on how fast they step.

The check cannot compare with a ``SyncVectorEnv`` stepped in lockstep, so
:class:`PoolReference` keeps one local env per index and steps env ``i`` (with
its row of the fixed batch of actions) only when the pool has returned env
``i`` once more: :meth:`PoolVector.comparable` has it catch up on the envs of
the result being checked and compares their rows (observations, rewards,
terminations, truncations).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastenv.bench.workloads import Workload

__all__ = ["PoolReference", "PoolVector", "pool_batch"]


def pool_batch(num_envs: int) -> int:
    """How many envs one ``recv`` of the ``fastenv-pool`` row returns: half of them (at least one)."""
    return max(1, num_envs // 2)


class PoolReference:
    """``num_envs`` local envs of ``workload``, each stepped as often as the pool has returned it.

    ``actions`` is the fixed batch the pool sends (env ``i`` always gets row ``i``).
    """

    def __init__(self, workload: Workload, num_envs: int, actions: np.ndarray) -> None:
        self.envs = [workload.make_env() for _ in range(num_envs)]
        self.actions = actions
        self.stepped = np.zeros(num_envs, np.int64)
        self._last: list[tuple[Any, ...]] = [()] * num_envs

    def reset(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset env ``i`` with ``seed + i``; the observations batched."""
        from gymnasium.vector.utils import concatenate, create_empty_array

        rows = [env.reset(seed=None if seed is None else seed + i)[0] for i, env in enumerate(self.envs)]
        self.stepped[:] = 0
        space = self.envs[0].observation_space
        return concatenate(space, rows, create_empty_array(space, len(rows))), {}

    def step(self, actions: Any) -> PoolReference:
        """Nothing yet: :meth:`rows` steps the envs a checked result returned (see the module docstring)."""
        return self

    def rows(self, ids: np.ndarray, counts: np.ndarray) -> tuple[Any, ...]:
        """Envs ``ids`` stepped until each was stepped ``counts[i]`` times; their last results, batched."""
        from gymnasium.vector.utils import concatenate, create_empty_array

        for i in ids.tolist():
            while self.stepped[i] < counts[i]:
                self._last[i] = self.envs[i].step(self.actions[i])
                self.stepped[i] += 1
        last = [self._last[i] for i in ids.tolist()]
        space = self.envs[0].observation_space
        obs = concatenate(space, [r[0] for r in last], create_empty_array(space, len(last)))
        flags = [np.array([r[k] for r in last], dtype=bool) for k in (2, 3)]
        return obs, np.array([r[1] for r in last], dtype=np.float64), *flags

    def close(self) -> None:
        """Close the local envs."""
        for env in self.envs:
            env.close()


class PoolVector:
    """``FastVectorEnv(address, batch_size=N/2)`` on shared memory, one ``send`` + ``recv`` per :meth:`step`.

    Raises:
        TransportUnavailable: the server's data plane is not shared memory.
    """

    name = "fastenv-pool"

    def __init__(self, address: str, num_envs: int, *, timeout: float = 30.0) -> None:
        from fastenv.bench.runner import TransportUnavailable
        from fastenv.vector import FastVectorEnv

        self._env = FastVectorEnv(
            address, batch_size=pool_batch(num_envs), transport="shm", copy=False, timeout=timeout,
            connect_timeout=timeout,
        )  # fmt: skip
        if self._env.transport != ("shm",):
            got = self._env.transport
            self._env.close()
            raise TransportUnavailable(f"{self.name}: got transport {got!r}")
        self.num_envs = int(self._env.num_envs)
        #: How often each env was returned by a step's ``recv`` (the reference catches up to it).
        self.returned = np.zeros(self.num_envs, np.int64)
        self._ids = np.arange(self.num_envs)

    def reset(self, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset every env; all N come back at once (then the first :meth:`step` sends all N)."""
        self._env.async_reset(seed=seed)
        obs, *_, infos, ids = self._env.recv(batch_size=self.num_envs)
        self._ids = ids
        self.returned[:] = 0
        return obs, infos

    def step(self, actions: Any) -> Any:
        """Send the returned envs' rows of ``actions``; ``recv`` the next envs: ``(obs, ..., infos, env_ids)``."""
        ids = self._ids
        self._env.send(actions[ids], ids)
        result = self._env.recv()
        self._ids = result[5]
        self.returned[self._ids] += 1
        return result

    def comparable(self, got: Any, expected: Any) -> tuple[Any, Any]:
        """A reset's observations as they are; a step's rows against the reference's same envs."""
        if not isinstance(expected, PoolReference):
            return tuple(got[:1]), tuple(expected[:1])
        ids = np.asarray(got[5])
        return tuple(got[:4]), expected.rows(ids, self.returned)

    def close(self) -> None:
        """Close the connection (envs still in flight are dropped); safe twice."""
        self._env.close()
