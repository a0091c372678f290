"""Vector-env clients for ``fastenv-bench --scaling envs``: N envs behind one ``step`` call.

Every client here has the ``reset(seed)`` / ``step(actions)`` / ``close`` shape
of :func:`fastenv.bench.timing.measure`'s clients and steps a batch of
``num_envs`` copies of a payload's env:

- ``fastenv-shm`` / ``fastenv-shm-py`` / ``fastenv-tcp``:
  :class:`fastenv.FastVectorEnv` (``copy=False``, as the comparison rows) on
  a running ``fastenv serve TARGET --num-envs N`` server;
- ``fastenv-workers``: :class:`fastenv.FastVectorEnv` on shared memory, the
  server started with ``--workers auto`` (the envs step in one worker process
  per usable CPU, at most N);
- ``fastenv-pool``: the same server driven as an async pool of N/2
  (:mod:`fastenv.bench.vector_pool`);
- ``gym-async``: ``gymnasium.vector.AsyncVectorEnv(N envs, shared_memory=True)``,
  one worker process per env (``spawn``), observations copied out of its
  shared memory (its default ``copy=True``), as the comparison's
  ``gym-async`` row;
- ``gym-sync``: ``gymnasium.vector.SyncVectorEnv(N envs)`` in the client
  process: no IPC at all, the in-process reference;
- ``sb3-subproc`` / ``puffer-mp``: SB3's and PufferLib's multiprocess
  vectorizers (:mod:`fastenv.bench.vector_peers`), where they import.

:func:`reference_env` is the local reference every client is checked
against (a ``SyncVectorEnv`` over the same envs: env ``i`` is seeded with
``seed + i``, next-step autoreset; env by env for the pool); :func:`batch_action` the fixed batch of
actions sent every step (row 0 is the payload's single-env action). The check
compares observations, rewards, terminations and truncations (infos are
merged differently by each implementation and are not compared).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from fastenv.bench.gym_async import EnvFactory
from fastenv.bench.runner import FASTENV_TRANSPORTS, TransportUnavailable
from fastenv.bench.vector_peers import PEER_VECTORS, PufferVector, Sb3Vector, peer_missing
from fastenv.bench.vector_pool import PoolReference, PoolVector, pool_batch
from fastenv.bench.workloads import Workload, get_workload
from fastenv.errors import FastEnvTimeout, MissingDependency

__all__ = [
    "GYM_VECTORS",
    "PEER_VECTORS",
    "VECTOR_TRANSPORTS",
    "WORKER_ROWS",
    "FastVector",
    "GymVector",
    "batch_action",
    "env_steps_per_call",
    "open_vector_client",
    "reference_env",
    "served_by",
    "unavailable",
    "vector_workload",
]

#: Gymnasium's own vector envs.
GYM_VECTORS: tuple[str, ...] = ("gym-async", "gym-sync")
#: fastenv rows on a ``--num-envs N --workers auto`` server: synchronous ``step``, and the async pool.
WORKER_ROWS: tuple[str, ...] = ("fastenv-workers", "fastenv-pool")
#: fastenv rows (a FastVectorEnv on a ``--num-envs`` server), Gymnasium's vector envs and the peers.
VECTOR_TRANSPORTS: tuple[str, ...] = (*FASTENV_TRANSPORTS, *WORKER_ROWS, *GYM_VECTORS, *PEER_VECTORS)


def served_by(name: str) -> str | None:
    """The fastenv server row that vector row ``name`` connects to (None: the client builds its own envs)."""
    if name in FASTENV_TRANSPORTS:
        return name
    return "fastenv-shm" if name in WORKER_ROWS else None


def unavailable(name: str, payload: str) -> str | None:
    """Why vector row ``name`` cannot run ``payload`` here (a peer's library is missing), or None."""
    return peer_missing(name, get_workload(payload)) if name in PEER_VECTORS else None


def env_steps_per_call(name: str, num_envs: int) -> int:
    """Env steps one timed call of row ``name`` makes: every env, or the pool's batch."""
    return pool_batch(num_envs) if name == "fastenv-pool" else num_envs


def vector_workload(payload: str, num_envs: int) -> Workload:
    """The payload's workload for ``num_envs`` envs stepped together (:meth:`Workload.for_envs`)."""
    return get_workload(payload).for_envs(num_envs)

_INSTALL_HINT = 'pip install "fastenv[gym]"'


def _gym_vector() -> Any:
    try:
        import gymnasium.vector
    except ImportError as exc:
        raise MissingDependency(f"--scaling envs needs Gymnasium: {_INSTALL_HINT}") from exc
    return gymnasium.vector


def batch_action(payload: str, num_envs: int) -> np.ndarray:
    """The batch of actions sent every step: ``num_envs`` deterministic rows, row 0 the single-env action."""
    workload = get_workload(payload)
    rng = np.random.default_rng(1234)  # the same stream as Workload.make_action
    return rng.uniform(-1.0, 1.0, (num_envs, workload.action_dim)).astype(np.float32)


def reference_env(payload: str, num_envs: int, name: str | None = None) -> Any:
    """A local ``gymnasium.vector.SyncVectorEnv`` over ``num_envs`` of the payload's envs (the reference).

    For the ``fastenv-pool`` row (``name``), a :class:`~fastenv.bench.vector_pool.PoolReference` instead.

    Raises:
        MissingDependency: Gymnasium is not installed.
    """
    workload = vector_workload(payload, num_envs)
    if name == "fastenv-pool":
        return PoolReference(workload, num_envs, batch_action(payload, num_envs))
    return _gym_vector().SyncVectorEnv([workload.make_env] * num_envs)


def _comparable(result: Any, expected: Any) -> tuple[Any, Any]:
    """Observations, rewards, terminations, truncations (a reset: the observations)."""
    keep = min(len(result), len(expected), 4)
    return tuple(result[:keep]), tuple(expected[:keep])


class GymVector:
    """``gym-async`` or ``gym-sync`` over ``num_envs`` of the payload's envs, in this process."""

    def __init__(self, name: str, payload: str, num_envs: int, *, timeout: float = 30.0) -> None:
        if name not in GYM_VECTORS:
            raise KeyError(f"{name!r} is not a Gymnasium vector env; choose from {', '.join(GYM_VECTORS)}")
        vector = _gym_vector()
        workload = vector_workload(payload, num_envs)
        self.name = name
        self.timeout = float(timeout)
        if name == "gym-async":
            factory = EnvFactory(workload)  # the workers inherit this process's MALLOC_* settings
            self._env = vector.AsyncVectorEnv([factory] * num_envs, shared_memory=True, context="spawn",
                                              daemon=True)  # fmt: skip
        else:
            self._env = vector.SyncVectorEnv([workload.make_env] * num_envs)
        self._async = name == "gym-async"

    def _wait(self, wait: Any) -> Any:
        import multiprocessing

        try:
            return wait(timeout=self.timeout)
        except multiprocessing.TimeoutError:
            raise FastEnvTimeout(f"{self.name}: no reply within {self.timeout:.0f}s") from None

    def reset(self, seed: int | None = None) -> Any:
        if not self._async:
            return self._env.reset(seed=seed)
        self._env.reset_async(seed=seed)
        return self._wait(self._env.reset_wait)

    def step(self, actions: Any) -> Any:
        if not self._async:
            return self._env.step(actions)
        self._env.step_async(actions)
        return self._wait(self._env.step_wait)

    comparable = staticmethod(_comparable)

    def close(self) -> None:
        """Close the vector env (its workers too); safe twice."""
        if not self._env.closed:
            self._env.close(**({"timeout": self.timeout} if self._async else {}))


class FastVector:
    """:class:`fastenv.FastVectorEnv` over the ``--num-envs`` server at ``address``, for fastenv row ``name``.

    Raises:
        MissingDependency: Gymnasium is not installed.
        TransportUnavailable: the server's data plane is not the row's.
    """

    def __init__(self, name: str, address: str, *, timeout: float = 30.0) -> None:
        rows = (*FASTENV_TRANSPORTS, "fastenv-workers")
        if name not in rows:
            raise KeyError(f"{name!r} is not a synchronous fastenv row; choose from {', '.join(rows)}")
        _gym_vector()
        from fastenv.shm import futex
        from fastenv.vector import FastVectorEnv

        if name == "fastenv-shm-py" and futex.BACKEND != "python":
            raise TransportUnavailable(f"{name} needs the pure-Python doorbell in this process (FASTENV_NATIVE=0)")
        transport = "tcp" if name == "fastenv-tcp" else "shm"
        self._env = FastVectorEnv(address, transport=transport, copy=False, timeout=timeout, connect_timeout=timeout)
        if self._env.transport != (transport,):
            got = self._env.transport
            self._env.close()
            raise TransportUnavailable(f"{name}: got transport {got!r}")

    @property
    def num_envs(self) -> int:
        """How many envs the server serves."""
        return int(self._env.num_envs)

    def reset(self, seed: int | None = None) -> Any:
        return self._env.reset(seed=seed)

    def step(self, actions: Any) -> Any:
        return self._env.step(actions)

    comparable = staticmethod(_comparable)

    def close(self) -> None:
        """Close the connection (the server keeps running); safe twice."""
        self._env.close()


@contextlib.contextmanager
def open_vector_client(
    name: str, payload: str, num_envs: int, *, address: str | None = None, timeout: float = 30.0
) -> Iterator[Any]:
    """A vector client of ``name`` (see the module docstring), closed on exit.

    fastenv rows connect to the server at ``address`` (which serves
    ``num_envs`` envs); Gymnasium's vector envs build their own.

    Raises:
        KeyError: unknown transport or payload.
        ValueError: a fastenv row without ``address``, or ``num_envs`` below 1.
        MissingDependency: Gymnasium is not installed.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    get_workload(payload)
    if name in GYM_VECTORS:
        client: Any = GymVector(name, payload, num_envs, timeout=timeout)
    elif name in PEER_VECTORS:
        client = (Sb3Vector if name == "sb3-subproc" else PufferVector)(vector_workload(payload, num_envs), num_envs)
    elif name in VECTOR_TRANSPORTS:
        if address is None:
            raise ValueError(f"{name} needs the address of a `fastenv serve --num-envs {num_envs}` server")
        if name == "fastenv-pool":
            client = PoolVector(address, num_envs, timeout=timeout)
        else:
            client = FastVector(name, address, timeout=timeout)
        if client.num_envs != num_envs:
            got = client.num_envs
            client.close()
            raise ValueError(f"{name}: the server at {address} serves {got} envs, not {num_envs}")
    else:
        raise KeyError(f"unknown vector transport {name!r}; choose from {', '.join(VECTOR_TRANSPORTS)}")
    try:
        yield client
    finally:
        client.close()
