"""The worker processes of a :class:`~fastenv.vector.workers.WorkerVectorHost`, as the host drives them.

:class:`WorkerPool` owns the processes and the shared segment they map: it
starts the workers (fresh interpreters running
:func:`~fastenv.vector.worker_process.worker_main`) and waits for their
description of the envs, attaches them to the planned batch buffer, sends
commands and collects the answers, replaces a worker that died or hung
(:meth:`WorkerPool.restart`), and stops them all (:meth:`WorkerPool.release`,
which is safe to run from a finalizer: the pool holds no reference to its host).

Every wait is bounded: a wait for a worker's message polls in slices of
:data:`POLL_S` and, between them, looks whether the process still lives; a
worker that is gone raises :class:`WorkerDied`.
"""

from __future__ import annotations

import logging
import mmap
import os
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

from fastenv.errors import FastEnvError, FastEnvTimeout, ServerConfigError
from fastenv.shm import futex
from fastenv.shm.doorbell import Doorbell
from fastenv.vector.worker_buffer import GO_WORD, TASK_COMMAND, TASK_STOP, BatchLayout, shared_fd, task_word
from fastenv.vector.worker_process import reraise

__all__ = ["POLL_S", "STOP_TIMEOUT_S", "WorkerCrashed", "WorkerDied", "WorkerPool"]

log = logging.getLogger("fastenv.vector.workers")  # one logger for the host and its workers

#: How often a waiting host looks whether its workers are still alive (seconds).
POLL_S = 0.05
#: Seconds :meth:`WorkerPool.release` (so ``WorkerVectorHost.close``) waits for a worker to leave before killing it.
STOP_TIMEOUT_S = 5.0

# What a worker process runs (``python -c``): a fresh interpreter, nothing forked from the threaded server.
_ENTRY = "from fastenv.vector.worker_process import worker_main; raise SystemExit(worker_main())"


class WorkerCrashed(FastEnvError):
    """A worker process died (or could not be restarted) while it ran a call on its envs."""


class WorkerDied(Exception):
    """Internal: a worker process is gone (EOF on its pipe or an exit code)."""


class _Process:
    """One worker process as the host sees it."""

    __slots__ = ("conn", "envs", "index", "pid", "popen")

    def __init__(self, index: int, envs: range, popen: subprocess.Popen, conn: Connection) -> None:
        self.index = index
        self.envs = envs
        self.popen = popen
        self.conn = conn
        self.pid = popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float) -> None:
        """Close its pipe, wait up to ``timeout`` for it to leave, then kill it; reap it."""
        self.conn.close()  # a worker blocked on the pipe (starting, sending) leaves at once
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


class WorkerPool:
    """The worker processes of one host, one per slice of envs, and the segment they share.

    Args:
        factory_bytes: the pickled env factory every worker builds its envs with.
        slices: each worker's env indices.
        worker_spin_us: how long idle workers spin for the next batch.

    Attributes:
        fd: the shared segment's file descriptor (closed by :meth:`release`);
        ``buf``, ``layout``, ``views``, ``go``: the mapped segment, its layout,
        numpy views and *go* doorbell (None until :meth:`attach`);
        ``processes``: one :class:`_Process` per slice (None while one is replaced);
        ``same_step``: whether workers autoreset in the same step (set by the host).
    """

    def __init__(self, factory_bytes: bytes, slices: list[range], worker_spin_us: int) -> None:
        self.fd = shared_fd()
        self.buf: mmap.mmap | None = None
        self.processes: list[_Process | None] = []
        self.released = False
        self.factory_bytes = factory_bytes
        self.slices = slices
        self.worker_spin_us = worker_spin_us
        self.backend = futex.get_backend(None)
        self.layout: BatchLayout | None = None
        self.views: Any = None
        self.go: Doorbell | None = None
        self.same_step = False  # the autoreset mode new workers start with

    # ------------------------------------------------------------------ starting

    def spawn(self, index: int) -> _Process:
        """Start worker ``index`` and send it its slice; it answers with :meth:`ready`'s message."""
        parent_end, child_end = Pipe(duplex=True)
        command = [
            sys.executable, "-c", _ENTRY,
            "--conn", str(child_end.fileno()), "--shm", str(self.fd), "--spin-us", str(self.worker_spin_us),
        ]  # fmt: skip
        try:
            stdout = sys.stderr.fileno()  # never the server's stdout: it carries the ready line
        except (AttributeError, OSError, ValueError):
            stdout = subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                command,
                pass_fds=(child_end.fileno(), self.fd),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
            )
        finally:
            child_end.close()
        envs = self.slices[index]
        process = _Process(index, envs, popen, parent_end)
        try:
            parent_end.send(
                ("init", list(sys.path), self.factory_bytes, envs.start, envs.stop, index, os.getpid(), self.same_step)
            )
        except OSError:
            pass  # it died at once: the ready wait says so
        return process

    def launch(self, start_timeout: float) -> dict[str, Any]:
        """Start every worker and wait until all are ready; the first one's description of its envs.

        Raises ServerConfigError if a worker could not build its envs or their spaces differ.
        """
        self.processes = [self.spawn(index) for index in range(len(self.slices))]
        descriptions = [self.ready(process, start_timeout) for process in self.processes]  # type: ignore[arg-type]
        first = descriptions[0]
        for process, description in zip(self.processes[1:], descriptions[1:], strict=True):
            for name in ("observation_space", "action_space"):
                if description[name] != first[name]:
                    assert process is not None
                    raise ServerConfigError(
                        f"env {process.envs.start} has {name} {description[name]}, but env 0 has {first[name]}"
                    )
        return first

    def attach(self, layout: BatchLayout) -> None:
        """Size and map the segment for ``layout`` and hand it to every worker."""
        os.ftruncate(self.fd, layout.size)
        self.layout = layout
        self.buf = mmap.mmap(self.fd, layout.size)
        self.views = layout.views(self.buf)
        self.go = Doorbell(self.buf, GO_WORD)
        for process in self.processes:
            assert process is not None
            process.conn.send(("attach", layout, self.go.value()))

    def ready(self, process: _Process, start_timeout: float) -> dict[str, Any]:
        """Wait for a new worker's ready message; its description of the envs."""
        try:
            reply = self.receive(process, start_timeout)
        except WorkerDied:
            raise ServerConfigError(
                f"worker {process.index} (pid {process.pid}) exited with code {process.popen.poll()} "
                "before its envs were built; see the server's log for its error"
            ) from None
        except FastEnvTimeout:
            raise ServerConfigError(
                f"worker {process.index} did not build its {len(process.envs)} envs within {start_timeout:g} s"
            ) from None
        if reply[0] == "error":
            _, exc, text = reply
            raise reraise(exc, text, f"worker {process.index} building its envs")
        return reply[2]

    # ------------------------------------------------------------------ messages

    def receive(self, process: _Process, timeout: float | None) -> Any:
        """The next message from ``process``: :class:`WorkerDied` if it is gone, FastEnvTimeout after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = process.conn
        while True:
            wait = POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - time.monotonic()))
            try:
                if conn.poll(wait):
                    return conn.recv()
            except (EOFError, OSError):
                raise WorkerDied(process.index) from None
            if not process.alive():
                if conn.poll(0):  # it said something before it left
                    continue
                raise WorkerDied(process.index)
            if deadline is not None and time.monotonic() >= deadline:
                raise FastEnvTimeout(f"worker {process.index} (pid {process.pid}) did not answer within {timeout} s")

    def commands(
        self,
        messages: dict[int, tuple],
        timeout: float | None,
        restart: Callable[[int, str], list[dict[str, Any]]] | None = None,
    ) -> dict[int, Any]:
        """Send each worker its message, wake them, collect the answers (each within ``timeout``).

        A worker that died (or hung) is replaced with ``restart(index, why)``
        and answers with :class:`WorkerDied` as its result, its ``restart``
        attribute the reset infos (None if the restart failed); without
        ``restart`` the death is raised. An exception a worker raised (or a
        failed restart's :class:`WorkerCrashed`) is re-raised once every answer is in.
        """
        processes = self.processes
        buf = self.buf
        for index in messages:
            self.backend.store(buf, task_word(index), TASK_COMMAND)
        assert self.go is not None
        self.go.ring()
        for index, message in messages.items():
            process = processes[index]
            try:
                assert process is not None
                process.conn.send(message)
            except (OSError, AssertionError):
                pass  # dead: the answer wait finds out
        answers: dict[int, Any] = {}
        failure: BaseException | None = None
        for index, message in messages.items():
            process = processes[index]
            try:
                if process is None:
                    raise WorkerDied(index)
                reply = self.receive(process, timeout)
            except (WorkerDied, FastEnvTimeout) as exc:
                if restart is None:
                    raise
                what = _message_name(message)
                why = f"died during {what}" if isinstance(exc, WorkerDied) else f"hung in {what} ({timeout} s)"
                died = WorkerDied(index)
                died.restart = None  # type: ignore[attr-defined]
                try:
                    died.restart = restart(index, why)  # type: ignore[attr-defined]
                except WorkerCrashed as crash:
                    failure = failure or crash
                answers[index] = died
                continue
            if reply[0] == "error":
                _, exc, text = reply
                failure = failure or reraise(exc, text, f"worker {index}")
                answers[index] = None
            else:
                answers[index] = reply[1]
        if failure is not None:
            raise failure
        return answers

    # ------------------------------------------------------------------ restarts and release

    def restart(
        self, index: int, why: str, seeds: list[int | None], timeout: float | None, start_timeout: float
    ) -> list[dict[str, Any]]:
        """Replace worker ``index`` by a new process; its envs rebuilt and reset with ``seeds``.

        Its rows of the batch are cleared (reward 0, not terminated, not
        truncated, no info) and hold the reset observations. Returns the reset
        infos; raises :class:`WorkerCrashed` if the new worker fails.
        """
        old = self.processes[index]
        envs = self.slices[index]
        log.warning(
            "fastenv: worker %d (pid %s, envs %d..%d) %s; restarting it",
            index, old.pid if old else "?", envs.start, envs.stop - 1, why,
        )  # fmt: skip
        self.processes[index] = None
        if old is not None:
            old.popen.kill()
            old.stop(STOP_TIMEOUT_S)
        views, layout, go = self.views, self.layout, self.go
        assert layout is not None and go is not None
        views.mail[index] = 0
        views.flags[envs.start : envs.stop] = 0
        views.rewards[envs.start : envs.stop] = 0.0
        views.terminations[envs.start : envs.stop] = False
        views.truncations[envs.start : envs.stop] = False
        views.requests[envs.start : envs.stop] = views.completes[envs.start : envs.stop]  # nothing left to step
        try:
            process = self.spawn(index)
            self.processes[index] = process
            description = self.ready(process, start_timeout)
            for name in ("observation_space", "action_space"):
                if description[name] != getattr(layout, name):
                    raise ServerConfigError(f"the restarted worker's envs have another {name}")
            process.conn.send(("attach", layout, go.value()))
            return self.commands({index: ("reset", seeds, None, None)}, timeout)[index]
        except Exception as exc:  # whatever went wrong, the caller gets one typed error and keeps its protocol
            raise WorkerCrashed(
                f"worker {index} (envs {envs.start}..{envs.stop - 1}) {why} and could not be restarted: {exc}"
            ) from exc

    def release(self, stop_timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop every worker (killed after ``stop_timeout``), unmap the segment and close its fd; idempotent."""
        if self.released:
            return
        self.released = True
        running = [process for process in self.processes if process is not None]
        if self.buf is not None:
            backend = futex.get_backend(None)
            for process in running:
                backend.store(self.buf, task_word(process.index), TASK_STOP)
            Doorbell(self.buf, GO_WORD).ring()
        else:
            for process in running:
                process.popen.kill()
        deadline = time.monotonic() + stop_timeout
        for process in running:
            process.stop(max(0.0, deadline - time.monotonic()))
        self.views = self.go = None  # numpy views would keep the mapping from closing
        if self.buf is not None:
            try:
                self.buf.close()
            except BufferError:
                pass  # a batch returned earlier is still referenced: the mapping goes with it
        os.close(self.fd)


def _message_name(message: tuple) -> str:
    """How a command reads in a log line."""
    if message[0] == "call":
        return f"call({message[1]!r})"
    return f"{message[0]}()"
