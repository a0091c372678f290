"""The async pool's bookkeeping, shared by the client and the hosts (``send`` / ``recv``).

A :class:`~fastenv.FastVectorEnv` made with ``batch_size=k`` drives its envs
as a pool: ``send(actions, env_ids)`` starts a step of the named envs and
returns at once, ``recv()`` returns the first ``k`` envs to finish (with
their ids) while the others keep stepping. The server side is three public
methods of a host (:class:`~fastenv.vector.host.VectorHost` and
:class:`~fastenv.vector.workers.WorkerVectorHost`), versioned by
:data:`POOL_PROTOCOL` (a host attribute of that name):

- ``pool_reset(seed, options)``: reset every env; all of them are then ready;
- ``pool_send(actions, env_ids)``: start a step of each named env;
- ``pool_recv(batch_size, timeout)``: wait until ``batch_size`` envs are
  ready and return ``(observations, rewards, terminations, truncations,
  infos, env_ids)`` for those (infos: a list of dicts, one per returned env);
- ``pool_state()``: which envs are in flight (bool per env), for a client to
  resynchronise after an error.

:class:`PoolBook` holds the state of every env (held by the client, running,
ready to be returned) and the order in which envs became ready; both sides
check every call against it, so misuse gives the typed errors of
:mod:`fastenv.errors` (:class:`~fastenv.errors.EnvInFlightError`,
:class:`~fastenv.errors.PoolNotReadyError`, :class:`~fastenv.errors.PoolUsageError`).
"""

from __future__ import annotations

import functools
import types
from collections import deque
from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import VectorEnv

from fastenv.errors import AlreadyPendingError, EnvInFlightError, PoolNotReadyError, PoolUsageError

__all__ = [
    "HELD",
    "POOL_PROTOCOL",
    "READY",
    "RUNNING",
    "PoolBook",
    "check_env_ids",
    "leading_rows",
    "merge_batch_infos",
]

#: Version of the host's pool calls (``pool_reset`` / ``pool_send`` / ``pool_recv`` / ``pool_state``).
POOL_PROTOCOL = 1
#: An env's state: held by the client (it may be sent), stepping, or done and waiting for ``recv``.
HELD, RUNNING, READY = 0, 1, 2


def check_env_ids(env_ids: Any, num_envs: int) -> np.ndarray:
    """``env_ids`` as a 1-D int64 array; raises PoolUsageError unless they are distinct and in range."""
    if isinstance(env_ids, Integral) and not isinstance(env_ids, bool):
        env_ids = [env_ids]
    try:
        ids = np.asarray(env_ids)
    except (TypeError, ValueError) as exc:
        raise PoolUsageError(f"env_ids must be a sequence of env indices: {exc}") from None
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise PoolUsageError(f"env_ids must be a 1-D sequence of integers, got {ids.dtype} of shape {ids.shape}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size == 0:
        raise PoolUsageError("env_ids is empty: send at least one env")
    if ids.min() < 0 or ids.max() >= num_envs:
        raise PoolUsageError(f"env_ids must lie in [0, {num_envs}), got {ids.tolist()}")
    if np.unique(ids).size != ids.size:
        raise PoolUsageError(f"env_ids names an env more than once: {ids.tolist()}")
    return ids


def leading_rows(space: spaces.Space, actions: Any) -> int:
    """How many rows a batch of ``space`` holds (its first leaf's leading axis)."""
    if isinstance(space, spaces.Dict):
        if not isinstance(actions, dict) or not space.spaces:
            raise PoolUsageError(f"actions must be a dict of batches for {space}")
        key = next(iter(space.spaces))
        if key not in actions:
            raise PoolUsageError(f"actions has no entry {key!r}")
        return leading_rows(space.spaces[key], actions[key])
    if isinstance(space, spaces.Tuple):
        if not isinstance(actions, tuple) or not space.spaces or len(actions) != len(space.spaces):
            raise PoolUsageError(f"actions must be a tuple of {len(space.spaces)} batches for {space}")
        return leading_rows(space.spaces[0], actions[0])
    shape = np.shape(actions)
    if not shape:
        raise PoolUsageError("actions must have one row per env id, got a scalar")
    return int(shape[0])


def merge_batch_infos(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Gymnasium's vector info (``{key: array, "_key": mask}``) of a batch of ``len(infos)`` envs."""
    merger = types.SimpleNamespace(num_envs=len(infos))
    merger._add_info = functools.partial(VectorEnv._add_info, merger)
    merged: dict[str, Any] = {}
    for index, info in enumerate(infos):
        if info:
            merged = merger._add_info(merged, info, index)
    return merged


class PoolBook:
    """The state of every env of a pool (:data:`HELD`, :data:`RUNNING`, :data:`READY`) and the ready order.

    Args:
        num_envs: how many envs.

    Attributes:
        state: uint8 per env; ``infos``: the info (or error) of each ready env
        that has one.
    """

    def __init__(self, num_envs: int) -> None:
        self.num_envs = int(num_envs)
        self.state = np.zeros(self.num_envs, np.uint8)
        self.infos: dict[int, Any] = {}
        self._order: deque[int] = deque()

    @property
    def in_flight(self) -> int:
        """Envs sent (or reset) and not yet returned."""
        return int(np.count_nonzero(self.state))

    @property
    def ready_count(self) -> int:
        """Envs done and waiting for ``recv``."""
        return len(self._order)

    def running(self) -> np.ndarray:
        """Ids of the envs stepping now."""
        return np.flatnonzero(self.state == RUNNING)

    def check_send(self, env_ids: Any, rows: int | None = None) -> np.ndarray:
        """The checked ids of a ``send``; ``rows``: how many actions came with them."""
        ids = check_env_ids(env_ids, self.num_envs)
        busy = ids[self.state[ids] != HELD]
        if busy.size:
            raise EnvInFlightError(f"env(s) {busy.tolist()} are still in flight: recv() them before sending them again")
        if rows is not None and rows != ids.size:
            raise PoolUsageError(f"send got {rows} actions for {ids.size} env ids")
        return ids

    def check_recv(self, batch_size: int) -> int:
        """``batch_size`` checked against the envs in flight."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or not 1 <= batch_size <= self.num_envs:
            raise PoolUsageError(f"batch_size must be an int in [1, {self.num_envs}], got {batch_size!r}")
        in_flight = self.in_flight
        if in_flight < batch_size:
            raise PoolNotReadyError(
                f"recv() returns {batch_size} envs but only {in_flight} are in flight: "
                "send() actions (or async_reset()) first"
            )
        return int(batch_size)

    def check_idle(self, what: str) -> None:
        """Raise AlreadyPendingError while any env is in flight (``what`` names the refused call)."""
        if self.state.any():
            raise AlreadyPendingError(
                f"{what}() while {self.in_flight} env(s) of the async pool are in flight: recv() them first"
            )

    def sent(self, ids: np.ndarray) -> None:
        """Mark ``ids`` running."""
        self.state[ids] = RUNNING

    def ready(self, ids: Iterable[int], infos: Sequence[Any] | None = None) -> None:
        """Mark ``ids`` done (in this order), with their infos (one per id) if given."""
        for position, index in enumerate(ids):
            index = int(index)
            self.state[index] = READY
            self._order.append(index)
            if infos is not None:
                self.infos[index] = infos[position]

    def take(self, batch_size: int) -> np.ndarray:
        """The first ``batch_size`` ready envs, sorted by id; they become held."""
        ids = np.sort(np.array([self._order.popleft() for _ in range(batch_size)], np.int64))
        self.state[ids] = HELD
        return ids

    def put_back(self, ids: Iterable[int]) -> None:
        """Make ``ids`` (taken, then not returned) ready again, first in line."""
        for index in reversed(list(ids)):
            self.state[int(index)] = READY
            self._order.appendleft(int(index))

    def forget(self, ids: Iterable[int]) -> None:
        """Make ``ids`` held, wherever they were (an env whose step failed, a reset)."""
        drop = {int(index) for index in ids}
        self._order = deque(index for index in self._order if index not in drop)
        for index in drop:
            self.state[index] = HELD
            self.infos.pop(index, None)

    def clear(self) -> None:
        """Every env held, nothing ready."""
        self.state[:] = HELD
        self.infos.clear()
        self._order.clear()
