"""What runs inside a worker process of a :class:`~fastenv.vector.workers.WorkerVectorHost`.

:func:`worker_main` is the process's entry point (the host starts it as
``python -c``, passing its pipe and the shared segment as inherited file
descriptors). :class:`_Worker` builds the envs of its slice from the pickled
factory, describes their spaces, maps the batch buffer
(:class:`~fastenv.vector.worker_buffer.BatchLayout`) and then serves: it waits
on the *go* doorbell, steps its envs into their rows of the batch (next-step
or same-step autoreset, as Gymnasium's), steps the envs the async pool asked
for one by one (``TASK_POOL``: each env is marked complete and the host rung
as soon as it is done), or runs a command (``reset``, ``call``, ``set_attr``,
``render``, ``autoreset``) received on its pipe. It leaves when told to stop,
when its pipe closes, or when the server process is gone.

:func:`portable_error` and :func:`reraise` carry exceptions across the pipe:
the worker sends the exception (or a picklable stand-in) with its formatted
traceback, and the host raises it with the traceback as a note.
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from fastenv import envinfo
from fastenv.errors import FastEnvTimeout, ServerConfigError
from fastenv.shm import futex
from fastenv.shm.doorbell import Doorbell
from fastenv.vector.arguments import WORKER_PID_ATTR, set_env_attrs, step_result
from fastenv.vector.worker_buffer import (
    GO_WORD,
    HOST_WORD,
    REMAINING_WORD,
    SEQ_WORD,
    TASK_COMMAND,
    TASK_IDLE,
    TASK_POOL,
    TASK_STEP,
    U32,
    BatchLayout,
)

__all__ = ["WORKER_POLL_S", "portable_error", "reraise", "worker_main"]

log = logging.getLogger("fastenv.vector.workers")  # one logger for the host and its workers

#: How often an idle worker looks whether the server is still alive (seconds).
WORKER_POLL_S = 0.25


def portable_error(exc: BaseException) -> tuple[BaseException, str]:
    """``exc`` (or a stand-in if it does not survive pickling) and its formatted traceback."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    exc.__traceback__ = None
    return exc, text


def reraise(exc: BaseException, text: str, where: str) -> BaseException:
    """The worker's exception, with its traceback attached as a note (Python 3.11+)."""
    add_note = getattr(exc, "add_note", None)
    if add_note is not None and text:
        add_note(f"in {where}:\n{text.rstrip()}")
    return exc


class _Worker:
    """The envs of one slice, in their own process (see the module docstring)."""

    def __init__(self, conn: Connection, fd: int) -> None:
        self.conn = conn
        self.fd = fd
        message = conn.recv()
        _, path, factory_bytes, self.lo, self.hi, self.index, self.parent, same_step = message
        self.same_step = bool(same_step)
        for entry in reversed(path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        self.envs: list[Any] = []
        self.autoreset = [False] * (self.hi - self.lo)
        self.buf: mmap.mmap | None = None
        factory = pickle.loads(factory_bytes)
        for _ in range(self.hi - self.lo):
            self.envs.append(factory())
        self.description = self._describe()

    def _describe(self) -> dict[str, Any]:
        first = self.envs[0]
        try:
            observation_space, action_space = first.observation_space, first.action_space
        except AttributeError as exc:
            raise ServerConfigError(
                f"--workers needs envs with Gymnasium spaces; {type(first).__name__} has no {exc.name}"
            ) from None
        for offset, env in enumerate(self.envs[1:], start=1):
            for name, expected in (("observation_space", observation_space), ("action_space", action_space)):
                got = getattr(env, name, None)
                if got != expected:
                    raise ServerConfigError(
                        f"env {self.lo + offset} has {name} {got}, but env {self.lo} has {expected}"
                    )
        description = {
            "observation_space": observation_space,
            "action_space": action_space,
            "metadata": dict(getattr(first, "metadata", None) or {}),
            "spec": getattr(first, "spec", None),
            "render_mode": getattr(first, "render_mode", None),
        }
        for key in ("metadata", "spec", "render_mode"):
            try:
                pickle.dumps(description[key])
            except Exception:
                description[key] = {} if key == "metadata" else None
        return description

    def attach(self, layout: BatchLayout) -> None:
        self.layout = layout
        self.buf = mmap.mmap(self.fd, layout.size)
        self.views = layout.views(self.buf)
        backend = futex.get_backend(None)
        self.load, self.store, self.add = backend.load, backend.store, backend.add
        self.atomic = backend is futex.native_backend
        self.task_word = layout.task + 4 * self.index
        self.done_word = layout.done + 4 * self.index
        self.mail_word = layout.mail + 4 * self.index

    def serve(self, seen: int, spin_us: int) -> None:
        assert self.buf is not None
        go = Doorbell(self.buf, GO_WORD, spin_us=spin_us)
        self.host = Doorbell(self.buf, HOST_WORD)
        buf, load, store, task_word = self.buf, self.load, self.store, self.task_word
        while True:
            try:
                seen = go.wait(seen, WORKER_POLL_S)
            except FastEnvTimeout:
                if os.getppid() != self.parent:
                    return  # the server is gone
                continue
            task = load(buf, task_word)
            if task == TASK_IDLE:
                continue  # a ring for other workers
            store(buf, task_word, TASK_IDLE)
            if task == TASK_STEP:
                self.step()
            elif task == TASK_POOL:
                self.pool_step()
            elif task == TASK_COMMAND:
                self.command(self.conn.recv())
            else:
                return

    def step(self) -> None:
        views, buf, lo = self.views, self.buf, self.lo
        seq = self.load(buf, SEQ_WORD)
        rewards, terminations, truncations = views.rewards, views.terminations, views.truncations
        flags, write, read, autoreset = views.flags, views.write_observation, views.read_action, self.autoreset
        same_step = self.same_step
        flags[lo : self.hi] = 0
        infos: list[dict[str, Any]] = []
        error = None
        index = lo
        try:
            for offset, env in enumerate(self.envs):
                index = lo + offset
                if autoreset[offset]:
                    obs, info = env.reset()
                    rewards[index] = 0.0
                    terminations[index] = truncations[index] = autoreset[offset] = False
                else:
                    obs, reward, terminated, truncated, info = step_result(env, env.step(read(index)))
                    rewards[index] = reward
                    terminations[index] = terminated
                    truncations[index] = truncated
                    if terminated or truncated:
                        if same_step:
                            final = {"final_obs": obs, "final_info": info}
                            obs, info = env.reset()
                            info = {**final, **info}
                        else:
                            autoreset[offset] = True
                write(index, obs)
                if info:
                    flags[index] = 1
                    infos.append(info)
        except Exception as exc:
            error = portable_error(exc)
        mail = 1 if infos or error is not None else 0
        self.store(buf, self.mail_word, mail)
        self.store(buf, self.done_word, seq)
        if not self.atomic or self.add(buf, REMAINING_WORD, U32) == 1:  # add(-1): the last one rings
            self.host.ring()
        if mail:
            self._send(("step", infos, error))

    def pool_step(self) -> None:
        """Step the envs of this slice whose request count is ahead of their completed count, until none is.

        Each env, once written, gets its completed count stored and the host
        rung; an env with a non-empty info (or an error) then sends
        ``("pool", env index, info, error)`` on the pipe.
        """
        views, buf, lo, hi = self.views, self.buf, self.lo, self.hi
        requests, completes, flags = views.requests[lo:hi], views.completes[lo:hi], views.flags
        store, ring = self.store, self.host.ring
        completes_word = self.layout.completes
        while True:
            pending = np.flatnonzero(requests != completes)
            if not pending.size:
                return
            for offset in pending.tolist():
                index = lo + offset
                ticket = int(requests[offset])
                info: dict[str, Any] = {}
                error = None
                try:
                    info = self._advance_one(offset, index)
                except Exception as exc:
                    error = portable_error(exc)
                mail = bool(info) or error is not None
                flags[index] = mail
                store(buf, completes_word + 4 * index, ticket)
                ring()
                if mail:
                    self._send(("pool", index, info, error))

    def _advance_one(self, offset: int, index: int) -> dict[str, Any]:
        """Step (or autoreset) one env of the slice into its row; its info."""
        views, env = self.views, self.envs[offset]
        if self.autoreset[offset]:
            obs, info = env.reset()
            views.rewards[index] = 0.0
            views.terminations[index] = views.truncations[index] = self.autoreset[offset] = False
        else:
            obs, reward, terminated, truncated, info = step_result(env, env.step(views.read_action(index)))
            views.rewards[index], views.terminations[index], views.truncations[index] = reward, terminated, truncated
            if terminated or truncated:
                if self.same_step:
                    final = {"final_obs": obs, "final_info": info}
                    obs, info = env.reset()
                    info = {**final, **info}
                else:
                    self.autoreset[offset] = True
        views.write_observation(index, obs)
        return info

    def command(self, message: tuple) -> None:
        try:
            reply: tuple = ("ok", getattr(self, f"_do_{message[0]}")(*message[1:]))
        except Exception as exc:
            reply = ("error", *portable_error(exc))
        self._send(reply)

    def _send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # nothing was written: say why instead
            error = TypeError(f"a result of the envs cannot be sent back from the worker process: {exc}")
            if message[0] == "step":
                self.conn.send(("step", [{} for _ in message[1]], (error, "")))
            elif message[0] == "pool":
                self.conn.send(("pool", message[1], {}, (error, "")))
            else:
                self.conn.send(("error", error, ""))

    def _do_reset(self, seeds: list[int | None], options: Any, mask: list[bool] | None) -> list[dict[str, Any]]:
        views, infos = self.views, []
        for offset, (env, seed) in enumerate(zip(self.envs, seeds, strict=True)):
            if mask is not None and not mask[offset]:
                infos.append({})
                continue
            index = self.lo + offset
            obs, info = env.reset(seed=seed, options=options)
            views.write_observation(index, obs)
            views.terminations[index] = views.truncations[index] = False
            self.autoreset[offset] = False
            infos.append(info)
        return infos

    def _do_autoreset(self, same_step: bool) -> None:
        self.same_step = bool(same_step)

    def _do_call(self, name: str, args: tuple, kwargs: dict[str, Any]) -> list[Any]:
        results = []
        for env in self.envs:
            if name == WORKER_PID_ATTR and not hasattr(env, name):
                results.append(os.getpid())
                continue
            member = envinfo.resolve_member(env, name)
            results.append(member(*args, **kwargs) if callable(member) else member)
        return results

    def _do_set_attr(self, name: str, values: list[Any]) -> None:
        set_env_attrs(self.envs, name, values)

    def _do_render(self) -> list[Any]:
        return [env.render() for env in self.envs]

    def close(self) -> None:
        for env in self.envs:
            close = getattr(env, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing an env in worker %d failed", self.index)


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a worker process (started by :class:`WorkerVectorHost`, never by hand)."""
    parser = argparse.ArgumentParser(prog="fastenv-vector-worker")
    parser.add_argument("--conn", type=int, required=True)
    parser.add_argument("--shm", type=int, required=True)
    parser.add_argument("--spin-us", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which stops its workers
    conn = Connection(args.conn)
    worker = None
    try:
        try:
            worker = _Worker(conn, args.shm)
        except Exception as exc:
            conn.send(("error", *portable_error(exc)))
            return 1
        conn.send(("ready", os.getpid(), worker.description))
        message = conn.recv()
        if message[0] != "attach":
            return 0
        _, layout, seen = message
        worker.attach(layout)
        worker.serve(seen, args.spin_us)
        return 0
    except (EOFError, OSError, KeyboardInterrupt):
        return 0  # the server went away
    finally:
        if worker is not None:
            worker.close()
