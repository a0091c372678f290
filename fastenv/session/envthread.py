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

No hop at all for one session: the owner can *host* a session's request loop
(:meth:`EnvThread.host`: a shared-memory session's worker, or a TCP data
stream's), waiting for that session's requests itself and running them at
once. A call from any other thread then *pokes* it: it rings the owner's
request doorbell, which the hosted wait watches beside the session's, and
wakes the hosted wait (its futex sleepers on shared memory, an eventfd it
polls beside the socket on TCP); the owner leaves the hosted wait, runs the
call, answers and goes back to waiting. Two threads on two cores per step
become one.
"""

from __future__ import annotations

import logging
import mmap
import threading
from collections.abc import Callable
from typing import Any, Protocol

from fastenv import native
from fastenv.errors import FastEnvError, FastEnvTimeout
from fastenv.loans import current_loans, use_loans
from fastenv.shm.doorbell import Doorbell

log = logging.getLogger("fastenv.server")

WAIT_SLICE_S = 0.05  # how often a waiting side looks at the stop flag
POKE_SLICE_S = 0.0005  # how often a caller wakes a hosted wait again until its call is taken


class HostedLoop(Protocol):
    """A session's request loop an :class:`EnvThread` can run on its owner thread (see :meth:`EnvThread.host`)."""

    def serve_hosted(self, poke: mmap.mmap, poke_offset: int, poke_seen: int) -> bool:
        """Serve requests until the u32 at ``poke_offset`` in ``poke`` leaves ``poke_seen``; False once stopped."""

    def wake(self) -> None:
        """Wake the thread waiting in :meth:`serve_hosted` (it then looks at the poke word)."""
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
        self._hosted: HostedLoop | None = None
        self._host_lock = threading.Lock()
        self._host_free = threading.Condition(self._host_lock)  # notified when the hosted loop leaves

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
            hosted = self._hosted
            if hosted is None:
                answered = self._ring_then_wait(self._request, REQUEST_BELL, self._reply, REPLY_BELL, seen) != seen
            else:
                answered = self._poke(hosted, seen)
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

    def _poke(self, hosted: HostedLoop, seen: int) -> bool:
        """Ring the request doorbell and wake ``hosted``'s wait until the owner takes the call; whether it answered.

        A wake that lands between the hosted wait's last look at the poke word
        and its sleep is lost (a poke leaves the word it sleeps on alone), so
        the wake is repeated every :data:`POKE_SLICE_S` until the call is taken.
        """
        self._request.ring()
        while True:
            hosted = self._hosted or hosted  # the loop it hosts now (the owner may have left one)
            hosted.wake()
            try:
                return self._reply.wait(seen, POKE_SLICE_S) != seen
            except FastEnvTimeout:
                if self._call is None or not self._serving.is_set():  # taken (now running), or nobody serves
                    return False

    def host(self, loop: HostedLoop, wait: float = 0.0) -> bool:
        """Run ``loop`` on the owner thread between calls, until it stops; False if this thread hosts another.

        The owner then waits for ``loop``'s requests itself: its calls need no
        hop. Calls from other threads poke it (see the module docstring).
        ``wait``: how long to wait for a loop hosted now to leave (one that
        was just stopped, such as the stream a reconnection replaces).
        """
        with self._host_lock:
            if self._hosted is not None and wait > 0:
                self._host_free.wait_for(lambda: self._hosted is None or self._stop.is_set(), wait)
            if self._hosted is not None or self._stop.is_set():
                return False
            self._hosted = loop
        self._request.ring()  # the owner leaves its own wait and starts hosting
        return True

    def poke(self) -> None:
        """Get the owner out of a hosted wait to look at its loop (which is stopping)."""
        self._request.ring()
        hosted = self._hosted
        if hosted is not None:
            hosted.wake()

    def serve(self, stop: threading.Event | None = None) -> None:
        """Run calls on this thread until :meth:`stop` (or ``stop`` is set)."""
        self._owner = threading.get_ident()
        seen = self._request.value()
        self._serving.set()
        answered = False  # a call was run and its answer not rung yet
        try:
            while not self._stop.is_set() and (stop is None or not stop.is_set()):
                hosted = self._hosted
                if hosted is not None:
                    if answered:
                        self._reply.ring()
                        answered = False
                    if self._request.value() == seen and not self._serve_hosted(hosted, seen):
                        with self._host_lock:
                            self._hosted = None
                            self._host_free.notify_all()
                    current = self._request.value()
                elif answered:
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

    def _serve_hosted(self, hosted: HostedLoop, seen: int) -> bool:
        """``hosted``'s requests until a poke; False once it stopped (or failed: its session then ends on its own)."""
        try:
            return hosted.serve_hosted(self._page, REQUEST_BELL, seen)
        except Exception:  # the loop's own failure must not take the env's thread down
            log.exception("a session's request loop failed on the env thread")
            return False

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
        self.poke()
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
