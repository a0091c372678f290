"""The client side of the async pool: :class:`PoolClient`, which :class:`~fastenv.FastVectorEnv` drives.

``send`` puts the ``pool_send`` call on the wire and returns without waiting
for its answer, so the server starts stepping at once while the caller goes
on; the answer is collected before the next call (``recv`` collects it, then
asks for the batch). Every call is checked here first (:class:`~fastenv.vector.pool.PoolBook`),
so misuse raises the typed errors of :mod:`fastenv.errors` without a round
trip; after an error from the server the client reads the server's view of
what is in flight (``pool_state``) and carries on from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastenv.client import FastRemoteEnv
from fastenv.errors import (
    AlreadyPendingError,
    FastEnvError,
    FastEnvTimeout,
    IncompatibleEnvsError,
    PoolUsageError,
    RemoteEnvError,
)
from fastenv.vector.arguments import per_env_seeds
from fastenv.vector.pool import HELD, POOL_PROTOCOL, RUNNING, PoolBook, leading_rows, merge_batch_infos

__all__ = ["AsyncPoolMixin", "PoolClient"]

#: Share of the wait ``recv`` lets the server use, so that its timeout answers before the client's.
SERVER_WAIT_SHARE = 0.9


class PoolClient:
    """``async_reset`` / ``send`` / ``recv`` over one server's envs (see :class:`~fastenv.FastVectorEnv`).

    Args:
        remote: the connection to the server.
        num_envs: the server's env count.
        batch_size: how many envs ``recv`` returns.
        single_action_space: one env's action space.
    """

    def __init__(
        self,
        remote: FastRemoteEnv,
        num_envs: int,
        batch_size: int,
        single_action_space: Any,
    ) -> None:
        self.remote = remote
        self.batch_size = int(batch_size)
        self.book = PoolBook(num_envs)
        self.action_space = single_action_space
        self.last_ids: np.ndarray | None = None
        self._ack_pending = False

    @property
    def busy(self) -> bool:
        """Whether any env is in flight (or a send is not acknowledged yet)."""
        return self._ack_pending or bool(self.book.state.any())

    def async_reset(self, seed: int | Sequence[int | None] | None, options: dict[str, Any] | None) -> None:
        """Reset every env; the next ``recv`` calls return their reset observations."""
        self._settle()
        self.book.check_idle("async_reset")
        seeds = per_env_seeds(seed, self.book.num_envs)
        self._call("pool_reset", seeds, options)
        self.book.state[:] = RUNNING
        self.last_ids = None

    def send(self, actions: Any, env_ids: Any = None) -> None:
        """Start a step of the envs ``env_ids`` (default: those the last ``recv`` returned)."""
        if env_ids is None:
            if self.last_ids is None:
                raise PoolUsageError("send() needs env_ids: no recv() returned envs to send back")
            env_ids = self.last_ids
        ids = self.book.check_send(env_ids, leading_rows(self.action_space, actions))
        self._settle()
        self.remote.send_call("pool_send", (actions, ids))
        self._ack_pending = True
        self.book.sent(ids)
        self.last_ids = None

    def recv(
        self, timeout: float | None = None, batch_size: int | None = None
    ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any], np.ndarray]:
        """The first ``batch_size`` envs done: ``(obs, rewards, terminations, truncations, infos, env_ids)``."""
        self._settle()
        batch_size = self.book.check_recv(self.batch_size if batch_size is None else batch_size)
        wait = self.remote.timeout if timeout is None else timeout
        server_wait = None if wait is None else wait * SERVER_WAIT_SHARE
        observations, rewards, terminations, truncations, infos, ids = self._call(
            "pool_recv", batch_size, server_wait, timeout=wait
        )
        self.book.state[ids] = HELD
        self.last_ids = ids
        return (
            observations,
            rewards,
            terminations,
            truncations,
            merge_batch_infos(list(infos)),
            ids,
        )

    def discard(self, timeout: float | None) -> None:
        """Drop an unacknowledged send's answer (closing)."""
        if self._ack_pending:
            self._ack_pending = False
            try:
                self.remote.receive_result(timeout=timeout)
            except FastEnvError:
                pass  # closing: the server may be gone

    # ------------------------------------------------------------------ internals

    def _settle(self) -> None:
        """Collect the answer of the last send (raising what the server refused)."""
        if self._ack_pending:
            self._ack_pending = False
            try:
                self.remote.receive_result()
            except RemoteEnvError:
                self._resync()
                raise

    def _call(self, name: str, *args: Any, timeout: Any = None) -> Any:
        kwargs = {} if timeout is None else {"timeout": timeout}
        try:
            return self.remote.invoke(name, args, None, **kwargs)
        except RemoteEnvError as exc:
            self._resync()
            if exc.remote_type.endswith("FastEnvTimeout"):
                raise FastEnvTimeout(exc.remote_message) from exc
            raise

    def _resync(self) -> None:
        """Take the server's view of which envs are in flight."""
        try:
            in_flight = np.asarray(self.remote.invoke("pool_state"), dtype=bool)
        except FastEnvError:
            return  # the caller reports the first error
        self.book.clear()
        self.book.state[in_flight] = RUNNING
        self.last_ids = None


class AsyncPoolMixin:
    """The async pool's public methods of :class:`~fastenv.FastVectorEnv` (``batch_size=``)."""

    _pool: PoolClient | None
    remotes: tuple[FastRemoteEnv, ...]
    num_envs: int
    single_action_space: Any

    @property
    def batch_size(self) -> int | None:
        """How many envs :meth:`recv` returns (None: made without ``batch_size``, no async pool)."""
        return None if self._pool is None else self._pool.batch_size

    def _open_pool(self, batch_size: int) -> PoolClient:
        if len(self.remotes) != 1:
            raise PoolUsageError("batch_size= (the async pool) needs exactly one server address")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= self.num_envs:
            raise PoolUsageError(f"batch_size must be an int in [1, {self.num_envs}], got {batch_size!r}")
        remote = self.remotes[0]
        try:
            version = remote.pool_protocol
        except AttributeError:
            version = None
        if version != POOL_PROTOCOL:
            raise IncompatibleEnvsError(
                f"the server at {remote.address} speaks async pool protocol {version}, this client "
                f"{POOL_PROTOCOL}; run the same fastenv on both"
            )
        return PoolClient(remote, self.num_envs, batch_size, self.single_action_space)

    # ------------------------------------------------------------------ async pool

    def async_reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Reset every env (seeded as :meth:`reset`); the next :meth:`recv` calls return them.

        Raises:
            PoolUsageError: made without ``batch_size``.
            AlreadyPendingError: envs are still in flight.
        """
        self._check_pool("async_reset").async_reset(seed, options)

    def send(self, actions: Any, env_ids: Any = None) -> None:
        """Start a step of the envs ``env_ids`` and return at once (EnvPool's ``send``).

        Args:
            actions: one row per env id (a batch of ``len(env_ids)`` actions).
            env_ids: distinct env indices; default: those the last :meth:`recv` returned.

        Raises:
            EnvInFlightError: an env is still in flight (sent, not yet returned).
            PoolUsageError: ids out of range or repeated, or an action count
                that does not match them; or made without ``batch_size``.
        """
        self._check_pool("send").send(actions, env_ids)

    def recv(
        self, timeout: float | None = None, *, batch_size: int | None = None
    ) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any], np.ndarray]:
        """The first ``batch_size`` envs to finish, while the others keep stepping.

        Args:
            timeout: seconds to wait (default: the client's own timeout).
            batch_size: this time, return this many (default: the
                ``batch_size`` the env was made with), for example to collect
                the last envs in flight.

        Returns:
            ``(observations, rewards, terminations, truncations, infos, env_ids)``:
            batches of ``batch_size`` rows, row ``j`` from env ``env_ids[j]``
            (int64, sorted); ``infos`` in Gymnasium's vector form over those
            rows. An env that ended autoresets as in :meth:`step` (next-step:
            on its next send; same-step: at once, ``final_obs`` in its info).

        Raises:
            PoolNotReadyError: fewer than ``batch_size`` envs are in flight.
            FastEnvTimeout: they were not done within ``timeout`` seconds
                (default: the client's own); they stay in flight.
        """
        return self._check_pool("recv").recv(timeout, batch_size)

    def _check_pool(self, what: str) -> PoolClient:
        self._check_open(what)  # type: ignore[attr-defined]
        if self._pool is None:
            raise PoolUsageError(f"{what}() needs the async pool: make the FastVectorEnv with batch_size=")
        if self._pending:  # type: ignore[attr-defined]
            raise AlreadyPendingError(f"{what}() while a step_async() is waiting for step_wait()")
        return self._pool
