"""The async pool of a :class:`~fastenv.vector.workers.WorkerVectorHost`: envs stepping while others are returned.

:class:`WorkerPoolMixin` gives the worker host the ``pool_*`` calls of
:mod:`fastenv.vector.pool`. The batch buffer holds two words per env (see
:mod:`fastenv.vector.worker_buffer`): the host's request count and the
worker's completed count. ``pool_send`` writes the actions' rows, adds one to
each env's request count, sets ``TASK_POOL`` on the workers concerned and
rings *go*; a worker steps the envs of its slice whose counts differ, one by
one, and for each stores its completed count and rings *host* as soon as its
row is written. ``pool_recv`` waits on *host* (in slices of
:data:`~fastenv.vector.worker_pool.POLL_S`), scans the counts of the running
envs, and returns the first ``batch_size`` envs found done, copied out of the
buffer: the envs it does not return go on stepping, and so do the envs sent
while the client works on the batch.

Infos travel as the step's do: an env whose info is not empty (or whose step
raised) is flagged in the buffer and its worker sends ``("pool", env, info,
error)`` on its pipe after marking it complete; the host reads those only for
the envs it returns, keeping the others' messages until their turn.

A worker that dies (or, past the host's ``timeout``, hangs) is restarted as in
``step`` (``pool_recv`` looks at the workers of running envs every
:data:`~fastenv.vector.worker_pool.POLL_S`, even when other envs keep it
busy): its envs are rebuilt and reset. Its running and ready envs are then
ready with their reset observation and ``info["fastenv_worker_restarted"]``;
those the client held come back that way, without stepping, the next time
they are sent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastenv.errors import FastEnvError, FastEnvTimeout, PoolUsageError
from fastenv.vector import batch
from fastenv.vector.pool import READY, RUNNING, PoolBook, leading_rows
from fastenv.vector.worker_buffer import TASK_POOL
from fastenv.vector.worker_pool import POLL_S, WorkerCrashed, WorkerDied
from fastenv.vector.worker_process import reraise

__all__ = ["WorkerPoolMixin"]


class _PoolState:
    """What the host keeps for the async pool beyond :class:`~fastenv.vector.pool.PoolBook`."""

    def __init__(self, slices: Sequence[range]) -> None:
        self.worker_of = np.repeat(np.arange(len(slices)), [len(part) for part in slices])
        self.mailbox: list[dict[int, Any]] = [{} for _ in slices]
        self.fresh: dict[int, dict[str, Any]] = {}  # held envs rebuilt by a restart: their reset info
        self.looked_at = time.monotonic()  # when the workers of running envs were last looked at


class WorkerPoolMixin:
    """The ``pool_*`` calls of :class:`~fastenv.vector.workers.WorkerVectorHost` (see the module docstring)."""

    _book: PoolBook
    _lock: Any
    _views: Any
    _pool: Any
    _host: Any
    _go: Any
    closed: bool
    slices: list[range]
    timeout: float | None
    num_envs: int
    single_action_space: Any

    @property
    def _pool_state(self) -> _PoolState:
        state = self.__dict__.get("_pool_state_")
        if state is None:
            state = self.__dict__["_pool_state_"] = _PoolState(self.slices)
        return state

    def _pool_check_open(self) -> None:
        if self.closed:
            raise FastEnvError(f"{self!r} is closed")

    def pool_reset(
        self,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Reset every env in its worker; all of them are then ready for :meth:`pool_recv`."""
        if options is not None and "reset_mask" in options:
            raise PoolUsageError("the async pool resets every env: options['reset_mask'] is not accepted")
        with self._lock:
            _, infos = self.reset(seed=seed, options=options)  # type: ignore[attr-defined]
            self._views.rewards[:] = 0.0
            self._pool_state.fresh.clear()
            self._book.ready(range(self.num_envs), infos)

    def pool_send(self, actions: Any, env_ids: Any) -> None:
        """Start a step of each env of ``env_ids`` (``actions``: one row per id) in its worker; returns at once."""
        with self._lock:
            self._pool_check_open()
            book, views, state = self._book, self._views, self._pool_state
            ids = book.check_send(env_ids, leading_rows(self.single_action_space, actions))
            batch.put(self.single_action_space, views.actions, ids, actions)
            if state.fresh:
                local = [index for index in ids.tolist() if index in state.fresh]
                if local:
                    book.ready(local, [state.fresh.pop(index) for index in local])
                    ids = ids[~np.isin(ids, local)]
                    if not ids.size:
                        return
            book.sent(ids)
            views.requests[ids] += np.uint32(1)  # wraps modulo 2**32, as the worker's copy does
            views.task[np.unique(state.worker_of[ids])] = TASK_POOL
            self._go.ring()

    def pool_recv(self, batch_size: int, timeout: float | None = None) -> tuple[Any, ...]:
        """Wait for ``batch_size`` envs to be done (at most ``timeout`` s) and return them.

        Returns:
            ``(observations, rewards, terminations, truncations, infos, env_ids)``
            of the returned envs, copied out of the batch buffer; ``env_ids``
            (int64) sorted, ``infos`` a list of their info dicts.

        Raises:
            FastEnvTimeout: fewer than ``batch_size`` envs were done in time
                (nothing is returned; they stay in flight).
        """
        with self._lock:
            self._pool_check_open()
            book = self._book
            batch_size = book.check_recv(batch_size)
            deadline = None if timeout is None else time.monotonic() + timeout
            progress_at, ready = time.monotonic(), -1
            state = self._pool_state
            while True:
                seen = self._host.value()
                self._pool_collect()
                now = time.monotonic()
                if now - state.looked_at >= POLL_S:  # a dead worker is found even while others keep up
                    self._pool_repair(False)
                    continue
                if book.ready_count >= batch_size:
                    break
                if book.ready_count != ready:
                    progress_at, ready = now, book.ready_count
                if deadline is not None and now >= deadline:
                    raise FastEnvTimeout(f"{batch_size} envs were not done within {timeout} s ({ready} were)")
                try:
                    self._host.wait(
                        seen,
                        POLL_S if deadline is None else min(POLL_S, deadline - now),
                    )
                    continue
                except FastEnvTimeout:
                    pass
                self._pool_repair(self.timeout is not None and time.monotonic() - progress_at >= self.timeout)
            ids = book.take(batch_size)
            self._pool_mail_in(ids)
            return self._pool_result(ids)  # type: ignore[attr-defined]

    def pool_state(self) -> np.ndarray:
        """bool per env: in flight (sent or reset, not yet returned by :meth:`pool_recv`)."""
        return self._book.state != 0

    # ------------------------------------------------------------------ internals

    def _pool_rows(self) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        views = self._views
        return views.observations, views.rewards, views.terminations, views.truncations

    def _pool_collect(self) -> None:
        """Mark ready the running envs whose worker completed them (in env order)."""
        book, views = self._book, self._views
        running = book.running()
        if running.size:
            done = running[views.completes[running] == views.requests[running]]
            if done.size:
                book.ready(done.tolist())

    def _pool_repair(self, hung: bool) -> None:
        """Restart the workers of running envs that died, or (``hung``) made no progress for ``timeout``."""
        state, processes = self._pool_state, self._pool.processes
        state.looked_at = time.monotonic()
        for index in np.unique(state.worker_of[self._book.running()]).tolist():
            process = processes[index]
            if process is None or not process.alive():
                self._pool_restart(index, "died during a pool step")
            elif hung:
                self._pool_restart(index, f"hung in a pool step ({self.timeout} s)")

    def _pool_restart(self, index: int, why: str) -> None:
        """Restart worker ``index``; its envs' pool states follow (see the module docstring)."""
        book, state = self._book, self._pool_state
        envs = self.slices[index]
        state.mailbox[index].clear()
        try:
            infos = self._restart(index, why)  # type: ignore[attr-defined]
        except WorkerCrashed:
            book.forget(envs)  # nothing of theirs is in flight any more
            raise
        for index_env, info in zip(envs, infos, strict=True):
            if book.state[index_env] == RUNNING:
                book.ready([index_env], [info])
            elif book.state[index_env] == READY:
                book.infos[index_env] = info
            else:
                state.fresh[index_env] = info

    def _pool_mail_in(self, ids: np.ndarray) -> None:
        """Read the infos (or errors) of the flagged envs among ``ids`` from their workers' pipes."""
        book, views, state = self._book, self._views, self._pool_state
        for env in ids.tolist():
            if env in state.fresh:  # its worker was restarted while this batch was read: the reset row goes out
                book.infos[env] = state.fresh.pop(env)
            if env in book.infos or not views.flags[env]:
                continue
            index = int(state.worker_of[env])
            mailbox = state.mailbox[index]
            while env not in mailbox and env not in book.infos:
                process = self._pool.processes[index]
                try:
                    if process is None:
                        raise WorkerDied(index)
                    _, sender, info, error = self._pool.receive(process, self.timeout)
                except (WorkerDied, FastEnvTimeout):
                    self._pool_restart(index, "died before it sent a pool step's info")
                    book.infos[env] = state.fresh.pop(env)
                    break
                mailbox[sender] = info if error is None else reraise(*error, f"worker {index}")
            if env in mailbox:
                book.infos[env] = mailbox.pop(env)
