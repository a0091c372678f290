"""All cores of a host behind one address: a VectorHost whose envs step in worker processes.

``fastenv serve TARGET --num-envs N --workers W`` serves a
:class:`WorkerVectorHost`: the N envs are spread over W worker processes
(contiguous slices that differ by at most one env, so N need not divide by
W), and the server process only moves batches. It behaves exactly like the
in-process :class:`~fastenv.vector.host.VectorHost` (same calls, same
results, seed for seed equal to ``gymnasium.vector.SyncVectorEnv``); what
changes is that W envs step at the same time.

One batch buffer
----------------
Host and workers share one memory segment (a ``memfd``: it has no name in
``/dev/shm`` and disappears with the last process that maps it, whatever the
way they exit). It holds the batched actions, observations, rewards,
terminations and truncations laid out as Gymnasium batches them
(:class:`BatchLayout`), a word per worker for its task, its last finished
step and whether a message follows, a byte per env saying its ``info`` is not
empty, and two futex doorbells (:class:`~fastenv.shm.doorbell.Doorbell`):

- *go*, rung by the host: every worker waits on it, reads its task word
  (step, command, stop) and clears it;
- *host*, rung by the worker that finishes a batch last (with the native
  backend the workers count down one atomic word; with the pure-Python
  fallback, which has no atomic add across processes, each rings): the host
  waits on this one doorbell per batch.

A step: the host copies the actions in, sets every task to *step* and rings
*go* (with the native backend one C call rings and starts waiting with the
GIL released). Each worker steps its slice (next-step autoreset as in
Gymnasium), writes its rows in place, marks the envs whose info is not empty,
stores the step's number in its done word and counts itself done. Only a
worker with something to say (non-empty infos, an exception) then sends one
pickled message on its pipe; a batch of empty infos costs nothing.

Everything else (``reset``, ``call``, ``get_attr``, ``set_attr``,
``render``, startup) travels as pickled messages on the worker's pipe, the
results of ``reset`` landing in the batch buffer.

Crashes
-------
Every wait is bounded: the host waits in slices of :data:`POLL_S` and, between
them, looks at the worker processes. A worker that died (killed, segfault) is
restarted: a new process builds its envs, resets them (with the seed each was
last given, else unseeded), its rows of the batch become those reset
observations (reward 0, not terminated, not truncated) and their info dicts
carry ``info["fastenv_worker_restarted"] = True`` (:data:`RESTARTED_KEY`).
The other workers' envs keep stepping. A worker dying in a ``call`` /
``get_attr`` / ``set_attr`` / ``render`` is restarted too and the call
raises :class:`WorkerCrashed`. Workers leave on their own when the server
process is gone. ``get_attr("fastenv_worker_pid")`` (:data:`WORKER_PID_ATTR`)
says which process runs each env.

Workers are fresh interpreters (``python -c``, nothing forked from the
threaded server) that build their envs from a picklable factory:
:class:`TargetFactory` re-resolves a ``fastenv serve`` target string.

This module is the host side; the batch buffer's layout is in
:mod:`fastenv.vector.worker_buffer`, the worker processes' start, commands
and restarts in :mod:`fastenv.vector.worker_pool`, and what runs in a worker
in :mod:`fastenv.vector.worker_process`.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from fastenv import envinfo, native
from fastenv.errors import FastEnvError, FastEnvTimeout, ServerConfigError, UnknownMethodError
from fastenv.shm import futex
from fastenv.shm.doorbell import Doorbell
from fastenv.vector.arguments import WORKER_PID_ATTR, attr_values, check_reset_mask, per_env_seeds
from fastenv.vector.host import VectorHost
from fastenv.vector.pool import POOL_PROTOCOL, PoolBook
from fastenv.vector.worker_async import WorkerPoolMixin
from fastenv.vector.worker_buffer import GO_WORD, HOST_WORD, REMAINING_WORD, SEQ_WORD, TASK_STEP, U32, BatchLayout
from fastenv.vector.worker_pool import POLL_S, WorkerCrashed, WorkerDied, WorkerPool
from fastenv.vector.worker_process import reraise
from fastenv.vector.worker_sizing import TargetFactory, default_workers, split_envs, usable_cpus

__all__ = [
    "POLL_S",
    "RESTARTED_KEY",
    "WORKER_PID_ATTR",
    "BatchLayout",
    "TargetFactory",
    "WorkerCrashed",
    "WorkerVectorHost",
    "default_workers",
    "split_envs",
    "usable_cpus",
]

log = logging.getLogger("fastenv.vector.workers")

#: The info key set (True) on every env of a worker that was restarted in that call.
RESTARTED_KEY = "fastenv_worker_restarted"
#: How long an idle worker spins for the next batch before it sleeps (µs; ``FASTENV_WORKER_SPIN_US``).
#: A wake from sleep can cost tens of µs (more on virtual machines); a short spin
#: catches a client that comes right back, and costs little when it does not.
WORKER_SPIN_US = 50
#: How long the host spins for a batch's last worker before it sleeps (µs;
#: ``FASTENV_HOST_SPIN_US``), when the workers, the server and a client each
#: have a CPU; 0 otherwise (its spin would take a CPU from a worker).
HOST_SPIN_US = 50
#: Seconds a worker has to build its envs and report ready.
START_TIMEOUT_S = 120.0


class WorkerVectorHost(WorkerPoolMixin, VectorHost):
    """A :class:`~fastenv.vector.host.VectorHost` whose ``num_envs`` envs step in ``workers`` processes.

    Args:
        factory: a picklable zero-argument callable making one env (a
            :class:`TargetFactory`, a module-level function or class); every
            worker calls it once per env of its slice.
        num_envs: how many envs.
        workers: how many worker processes (None: :func:`default_workers`);
            more than ``num_envs`` is cut down to ``num_envs``.
        timeout: seconds a ``step`` / ``reset`` / call may take on a worker
            before the worker is taken for hung, killed and restarted (None:
            as long as the worker lives).
        start_timeout: seconds a worker has to build its envs.
        spin_us: how long the host spins for a batch before sleeping (None:
            :data:`HOST_SPIN_US` when the workers, the server and a client fit
            on the usable CPUs, else 0), and ``worker_spin_us`` how long idle
            workers spin for the next one (None: :data:`WORKER_SPIN_US`).

    Attributes:
        workers: the worker count; ``slices``: each worker's env indices;
        ``worker_pids``: their process ids (they change when one is restarted);
        ``restarts``: how many workers were restarted so far.

    Raises:
        ServerConfigError: the factory cannot be pickled, a space cannot be
            laid out in a shared batch (Text, Graph, Sequence, ...), the envs'
            spaces differ, or the envs could not be built.
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        num_envs: int,
        workers: int | None = None,
        *,
        timeout: float | None = None,
        start_timeout: float = START_TIMEOUT_S,
        spin_us: int | None = None,
        worker_spin_us: int | None = None,
    ) -> None:
        if num_envs < 1:
            raise ServerConfigError("WorkerVectorHost needs at least one env")
        if workers is not None and workers < 1:
            raise ServerConfigError(f"workers must be at least 1, got {workers}")
        try:
            self._factory_bytes = pickle.dumps(factory)
        except Exception as exc:
            raise ServerConfigError(
                f"worker processes build their envs from the factory, which must be picklable "
                f"(a module-level function or class, or fastenv.vector.workers.TargetFactory): {exc}"
            ) from None
        self.envs = []  # the envs live in the workers
        self.close_envs = True
        self.closed = False
        self.num_envs = int(num_envs)
        self.slices = split_envs(self.num_envs, default_workers(num_envs) if workers is None else workers)
        self.workers = len(self.slices)
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.restarts = 0
        fits = self.workers + 2 <= usable_cpus()  # workers, this server and one client
        # A shared-memory client that spins while the workers step would take a CPU they need: the
        # server asks it not to (see fastenv.envinfo.client_spin_hint), unless every process has a CPU.
        self.shm_client_spin_us: int | None = None if fits else 0
        if spin_us is None:
            spin_us = int(os.environ.get("FASTENV_HOST_SPIN_US", HOST_SPIN_US if fits else 0))
        if worker_spin_us is None:
            worker_spin_us = int(os.environ.get("FASTENV_WORKER_SPIN_US", WORKER_SPIN_US))
        self._spin_us, self._worker_spin_us = spin_us, worker_spin_us
        self._env_seeds: list[int | None] = [None] * self.num_envs
        self.autoreset_mode = AutoresetMode.NEXT_STEP
        self.pool_protocol = POOL_PROTOCOL
        self._book = PoolBook(self.num_envs)
        self._lock = threading.RLock()
        self._seq = 0
        self._backend = futex.get_backend(None)
        self._atomic = self._backend is futex.native_backend
        compiled = native.BACKEND.native
        self._ring_wait = getattr(compiled, "ring_wait", None) if self._atomic else None
        self._pool = WorkerPool(self._factory_bytes, self.slices, worker_spin_us)
        self._finalizer = weakref.finalize(self, self._pool.release)
        try:
            self._start()
        except BaseException:
            self._finalizer()
            raise

    # ------------------------------------------------------------------ processes

    def _start(self) -> None:
        pool = self._pool
        self._describe(pool.launch(self.start_timeout))
        self._layout = BatchLayout.plan(
            self.single_observation_space, self.single_action_space, self.num_envs, self.workers
        )
        pool.attach(self._layout)
        self._buf = pool.buf
        self._views = pool.views
        self._mail_bytes = memoryview(pool.buf)[self._layout.mail : self._layout.mail + 4 * self.workers]
        self._no_mail = bytes(4 * self.workers)
        self._go = pool.go
        self._host = Doorbell(pool.buf, HOST_WORD, spin_us=self._spin_us)
        log.info(
            "fastenv: %d envs on %d worker processes (pids %s)",
            self.num_envs,
            self.workers,
            ", ".join(str(pid) for pid in self.worker_pids),
        )

    def _describe(self, description: dict[str, Any]) -> None:
        self.single_observation_space = description["observation_space"]
        self.single_action_space = description["action_space"]
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(description["metadata"])
        self.metadata["autoreset_mode"] = self.autoreset_mode
        self.spec = description["spec"]
        self.render_mode = description["render_mode"]

    def _restart(self, index: int, why: str) -> list[dict[str, Any]]:
        """Replace worker ``index`` by a new process; its envs rebuilt and reset. Returns their reset infos."""
        self.restarts += 1
        seeds = [self._env_seeds[i] for i in self.slices[index]]
        infos = self._pool.restart(index, why, seeds, self.timeout, self.start_timeout)
        for info in infos:
            info[RESTARTED_KEY] = True
        return infos

    # ------------------------------------------------------------------ messages

    def _commands(self, messages: dict[int, tuple]) -> dict[int, Any]:
        """:meth:`WorkerPool.commands`, restarting the workers that die (see there)."""
        return self._pool.commands(messages, self.timeout, self._restart)

    def _broadcast(self, make: Callable[[range], tuple], what: str) -> list[Any]:
        """Run a command on every worker; the per-env results in env order. A crash raises WorkerCrashed."""
        with self._lock:
            self._check_open(what)
            answers = self._commands({index: make(envs) for index, envs in enumerate(self.slices)})
        crashed = [index for index, answer in answers.items() if isinstance(answer, WorkerDied)]
        if crashed:
            raise WorkerCrashed(
                f"worker(s) {', '.join(map(str, crashed))} died during {what}; their envs were rebuilt and reset"
            )
        results: list[Any] = []
        for index in range(self.workers):
            results.extend(answers[index] or [])
        return results

    def _check_open(self, what: str = "a call") -> None:
        if self.closed:
            raise FastEnvError(f"{self!r} is closed")
        self._book.check_idle(what)

    # ------------------------------------------------------------------ env API

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, list[dict[str, Any]]]:
        """As :meth:`VectorHost.reset`; the envs reset in their workers, all workers at once."""
        seeds = per_env_seeds(seed, self.num_envs)
        mask = None
        if options is not None and "reset_mask" in options:
            options = dict(options)
            mask = check_reset_mask(options.pop("reset_mask"), self.num_envs, allow_empty=True)
        with self._lock:
            self._check_open("reset")
            for index, env_seed in enumerate(seeds):
                if env_seed is not None and (mask is None or mask[index]):
                    self._env_seeds[index] = env_seed
            messages = {}
            for index, envs in enumerate(self.slices):
                part = None if mask is None else [bool(flag) for flag in mask[envs.start : envs.stop]]
                if part is not None and not any(part):
                    continue
                messages[index] = ("reset", seeds[envs.start : envs.stop], options, part)
            answers = self._commands(messages)
            infos: list[dict[str, Any]] = []
            for index, envs in enumerate(self.slices):
                answer = answers.get(index)
                if isinstance(answer, WorkerDied):
                    answer = answer.restart  # type: ignore[attr-defined]
                infos.extend(answer if answer is not None else [{} for _ in envs])
            return self._views.observations, infos

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """As :meth:`VectorHost.step`; each worker steps its slice, all at once."""
        with self._lock:
            self._check_open("step")
            views, buf, backend = self._views, self._buf, self._backend
            views.write_actions(actions)
            self._seq = seq = (self._seq + 1) & U32
            backend.store(buf, SEQ_WORD, seq)
            if self._atomic:
                backend.store(buf, REMAINING_WORD, self.workers)
            views.task[:] = TASK_STEP
            seen = self._host.value()
            if self._ring_wait is not None:
                self._ring_wait(buf, GO_WORD, HOST_WORD, seen, POLL_S, self._spin_us)
            else:
                self._go.ring()
            restarted, failure = self._await_step(seq, seen)
            infos = self._step_infos(restarted)
            if isinstance(infos, BaseException):
                failure = failure or infos
            if failure is not None:
                raise failure
            return views.observations, views.rewards.copy(), views.terminations.copy(), views.truncations.copy(), infos

    def _await_step(self, seq: int, seen: int) -> tuple[dict[int, list[dict[str, Any]]], BaseException | None]:
        """Wait for every worker's ``seq``; restart the dead (and, past ``timeout``, the hung) ones."""
        done, processes = self._views.done, self._pool.processes
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        pending = list(range(self.workers))
        restarted: dict[int, list[dict[str, Any]]] = {}
        failure: BaseException | None = None
        while True:
            pending = [index for index in pending if done[index] != seq]
            if not pending:
                return restarted, failure
            try:
                seen = self._host.wait(seen, POLL_S)
                continue
            except FastEnvTimeout:
                pass
            hung = deadline is not None and time.monotonic() >= deadline
            for index in list(pending):
                process = processes[index]
                if process is not None and process.alive() and not hung:
                    continue
                if done[index] == seq:
                    continue
                pending.remove(index)
                if self._atomic:
                    self._backend.add(self._buf, REMAINING_WORD, U32)  # count it done, for the others' last ring
                why = (
                    "died during a step"
                    if process is None or not process.alive()
                    else f"hung in a step ({self.timeout} s)"
                )
                try:
                    restarted[index] = self._restart(index, why)
                except WorkerCrashed as exc:
                    failure = failure or exc
                    restarted[index] = [{RESTARTED_KEY: False} for _ in self.slices[index]]

    def _step_infos(self, restarted: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]] | BaseException:
        """The step's info dicts: messages only from the workers that marked some; restarted workers' reset infos."""
        views, processes = self._views, self._pool.processes
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for index, restart in restarted.items():
            infos[self.slices[index].start : self.slices[index].stop] = restart
        if self._no_mail == self._mail_bytes.tobytes():
            return infos
        failure: BaseException | None = None
        for index in np.flatnonzero(views.mail):
            index = int(index)
            if index in restarted:
                continue
            process = processes[index]
            envs = self.slices[index]
            try:
                assert process is not None
                _, dicts, error = self._pool.receive(process, self.timeout)
            except (WorkerDied, FastEnvTimeout, AssertionError):
                try:
                    infos[envs.start : envs.stop] = self._restart(index, "died before it sent a step's infos")
                except WorkerCrashed as exc:
                    failure = failure or exc
                continue
            if error is not None:
                failure = failure or reraise(*error, f"worker {index}")
            flagged = [envs.start + int(offset) for offset in np.flatnonzero(views.flags[envs.start : envs.stop])]
            for env_index, info in zip(flagged, dicts):
                infos[env_index] = info
        return failure if failure is not None else infos

    def _switch_autoreset(self, mode: AutoresetMode) -> None:
        """Every worker (and every restarted one) autoresets as ``mode``."""
        same_step = mode is AutoresetMode.SAME_STEP
        self._broadcast(lambda envs: ("autoreset", same_step), "set_autoreset_mode()")
        self._pool.same_step = same_step

    def render(self) -> tuple[Any, ...]:
        """Every env's ``render()`` (run in the workers)."""
        return tuple(self._broadcast(lambda envs: ("render",), "render()"))

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call the public method ``name`` of every env in its worker (or read it, if it is not callable)."""
        if name in envinfo.RESERVED_METHODS:
            raise UnknownMethodError(f"{name!r} cannot be called on the envs: close the vector env instead")
        if not isinstance(name, str) or not name or name.startswith("_"):
            raise UnknownMethodError(f"{name!r} is not a public member of the env")
        return tuple(self._broadcast(lambda envs: ("call", name, args, kwargs), f"call({name!r})"))

    def set_attr(self, name: str, values: Any) -> None:
        """Set attribute ``name`` on every env: one value per env (list or tuple), or one for all."""
        values = attr_values(name, values, self.num_envs)
        self._broadcast(lambda envs: ("set_attr", name, values[envs.start : envs.stop]), f"set_attr({name!r})")

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes' ids, in slice order."""
        return [process.pid if process is not None else -1 for process in self._pool.processes]

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stop the workers (they close their envs) and free the batch buffer; idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if hasattr(self, "_mail_bytes"):
                self._mail_bytes.release()
            self._views = None  # type: ignore[assignment]
            self._buf = None  # type: ignore[assignment]
            self._go = self._host = None  # type: ignore[assignment]
            self._finalizer()

    def __repr__(self) -> str:
        name = self.spec.id if getattr(self, "spec", None) is not None else "envs"
        return f"WorkerVectorHost({name}, num_envs={self.num_envs}, workers={self.workers})"
