"""One thread for every call on an env: for simulators bound to the thread that made them.

Isaac Sim's ``SimulationApp``, OpenGL and EGL contexts and many C++
simulators must be called from the thread that created them. An
:class:`EnvThread` runs calls on its owner thread: the server's main thread
(``fastenv serve --env-thread main``) or a thread of its own per env
(``--env-thread dedicated``). Any other thread hands it a call and waits.

The hop is two doorbells on a private page (:mod:`fastenv.shm.doorbell`):
the caller publishes the call and rings, the owner (spinning for the next
call with the GIL released, then asleep in the kernel) runs it and rings
back; with the native doorbell a call that comes while the owner spins costs
two atomic operations and two GIL hand-overs, no system call. Calls are made
one at a time, in the order callers got the submission lock.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable
from typing import Any

from fastenv import native
from fastenv.errors import FastEnvError, FastEnvTimeout
from fastenv.loans import current_loans, use_loans
from fastenv.shm.doorbell import Doorbell

WAIT_SLICE_S = 0.05  # how often a waiting side looks at the stop flag
REQUEST_BELL, REPLY_BELL = 0, 64  # doorbell words on the page (separate cache lines)


class EnvThreadStopped(FastEnvError):
    """The env thread has stopped: the server is shutting down."""


class EnvThread:
    """Runs calls on one owner thread (see the module docstring).

    Args:
        owner: the thread calls run on, when it is an existing one that will
            call :meth:`serve` (the main thread); calls it makes itself run at
            once, even before it serves. None: :meth:`start` makes one.
        spin_us: how long each side spins for the other before sleeping
            (None: the doorbell's default).
        name: the thread's name when :meth:`start` gives it a thread of its own.
    """

    def __init__(self, *, owner: int | None = None, spin_us: int | None = None, name: str = "fastenv-env") -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)
        self._request = Doorbell(self._page, REQUEST_BELL, spin_us=spin_us)
        self._reply = Doorbell(self._page, REPLY_BELL, spin_us=spin_us)
        compiled = native.BACKEND.native
        # One C call rings and waits with the GIL released throughout: the peer never waits for the GIL.
        self._ring_wait = getattr(compiled, "ring_wait", None) if self._request.backend is compiled else None
        self._spin_us = compiled.DEFAULT_SPIN_US if spin_us is None and compiled is not None else (spin_us or 0)
        self._submit = threading.Lock()
        self._call: tuple[Callable[..., Any], tuple, Any] | None = None
        self._result: tuple[bool, Any] | None = None
        self._stop = threading.Event()
        self._owner = owner
        self._serving = threading.Event()
        self._thread: threading.Thread | None = None
        self._name = name

    @property
    def dedicated(self) -> bool:
        """Whether the env has this thread to itself (:meth:`start` made it), to stop with the env."""
        return self._thread is not None

    def on_owner(self) -> bool:
        """Whether the current thread is the one calls run on."""
        return threading.get_ident() == self._owner

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the owner thread; returns what it returned, raises what it raised."""
        if threading.get_ident() == self._owner:
            return fn(*args)  # already there (a call made from within a call)
        with self._submit:
            while not self._serving.is_set() or self._stop.is_set():  # not serving yet, or any more
                if self._stop.is_set():
                    raise EnvThreadStopped("the env thread has stopped: the server is shutting down")
                self._serving.wait(WAIT_SLICE_S)
            seen = self._reply.value()
            self._call = (fn, args, current_loans())  # reply_array() in the call lends the caller's reply slot
            answered = self._ring_then_wait(self._request, REQUEST_BELL, self._reply, REPLY_BELL, seen) != seen
            while not answered:
                try:
                    answered = self._reply.wait(seen, WAIT_SLICE_S) != seen
                except FastEnvTimeout:
                    pass
                if not answered and not self._serving.is_set() and self._call is not None:
                    self._call = None
                    raise EnvThreadStopped("the env thread stopped before it ran the call")
            assert self._result is not None
            ok, value = self._result
            self._result = None
        if ok:
            return value
        raise value

    def serve(self, stop: threading.Event | None = None) -> None:
        """Run calls on this thread until :meth:`stop` (or ``stop`` is set)."""
        self._owner = threading.get_ident()
        seen = self._request.value()
        self._serving.set()
        answered = False  # a call was run and its answer not rung yet
        try:
            while not self._stop.is_set() and (stop is None or not stop.is_set()):
                if answered:
                    current = self._ring_then_wait(self._reply, REPLY_BELL, self._request, REQUEST_BELL, seen)
                    answered = False
                else:
                    try:
                        current = self._request.wait(seen, WAIT_SLICE_S)
                    except FastEnvTimeout:
                        continue
                if current == seen:
                    continue
                seen = current
                call, self._call = self._call, None
                if call is None:
                    continue
                fn, args, loans = call
                previous = use_loans(loans)
                try:
                    self._result = (True, fn(*args))
                except BaseException as exc:  # handed to the caller, whatever it is
                    self._result = (False, exc)
                finally:
                    use_loans(previous)
                del call, fn, args, loans
                answered = True
        finally:
            if answered:
                self._reply.ring()
            self._serving.clear()

    def _ring_then_wait(self, ring: Doorbell, ring_offset: int, wait: Doorbell, wait_offset: int, seen: int) -> int:
        """Ring ``ring``, then wait one slice while ``wait`` still reads ``seen``; returns what it reads."""
        if self._ring_wait is not None:
            self._ring_wait(self._page, ring_offset, wait_offset, seen, WAIT_SLICE_S, self._spin_us)
            return wait.value()
        ring.ring()
        try:
            return wait.wait(seen, WAIT_SLICE_S)
        except FastEnvTimeout:
            return seen

    def start(self) -> EnvThread:
        """Give the calls a thread of their own; returns self."""
        self._thread = threading.Thread(target=self.serve, name=self._name, daemon=True)
        self._thread.start()
        self._serving.wait(5.0)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (a call in progress finishes first); joins a thread :meth:`start` made."""
        self._stop.set()
        self._request.ring()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


ENV_THREADS = ("caller", "main", "dedicated")


class EnvThreads:
    """Which thread a server's envs are built and called on (``env_thread``).

    ``"caller"`` (the default): no hop; each call runs on the thread that
    received it (a session's worker, or the control loop), one at a time per
    env under its lock. Fastest, and right for every env that does not care
    which thread calls it. ``"main"``: every env on the thread that made the
    server, which must then run :meth:`fastenv.EnvServer.serve_forever`
    (``fastenv serve`` does: its main thread). ``"dedicated"``: each env on a
    thread of its own, started with it and stopped when it is closed.
    """

    def __init__(self, policy: str) -> None:
        if policy not in ENV_THREADS:
            raise ValueError(f"unknown env_thread {policy!r}; choose one of {', '.join(ENV_THREADS)}")
        self.policy = policy
        self.main = EnvThread(owner=threading.get_ident()) if policy == "main" else None

    def for_new_env(self) -> EnvThread | None:
        """The thread a new env is built and called on (None: its callers')."""
        if self.policy == "dedicated":
            return EnvThread().start()
        return self.main
