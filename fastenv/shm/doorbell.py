"""A sequence-counter doorbell on one 32-bit word of a shared buffer.

The ringing side publishes its data (for example a slot of the arena), then
calls :meth:`Doorbell.ring`, which increments the counter with release
semantics and wakes every waiter.  The waiting side remembers the last value it
saw and calls :meth:`Doorbell.wait` with it; when that returns, everything
written before the matching ``ring()`` is visible.  Because waiters compare
against the value they saw rather than consuming a flag, rings are never lost:
a ring that happens before the waiter goes to sleep simply makes ``wait``
return at once.  The counter wraps modulo 2**32.

The word after the counter (``offset + SLEEPERS_OFFSET``, 4) counts the threads asleep in the
kernel on it: ``ring()`` makes the FUTEX_WAKE system call only when that count
is non-zero, so ringing a peer that is still spinning costs two atomic
instructions. Both words belong to the doorbell; keep them zero-initialised.

With the pure-Python backend a doorbell must have a single ringing process
(see :mod:`fastenv.shm.futex`); the native backend allows any number.
"""

from __future__ import annotations

import operator
from typing import Any

from fastenv import native
from fastenv.errors import FastEnvTimeout
from fastenv.shm import futex

__all__ = ["DOORBELL_BYTES", "SLEEPERS_OFFSET", "Doorbell"]

#: The sleepers word lies this many bytes after the counter word.
SLEEPERS_OFFSET = 4
#: Bytes a doorbell takes in its buffer (the counter, then the sleepers word).
DOORBELL_BYTES = 8

# The shared-memory fast path (fastenv._layout) finds a doorbell's sleepers word on its own.
native.verify_constants(
    {
        "BELL_SLEEPERS": ("fastenv.shm.doorbell.SLEEPERS_OFFSET", SLEEPERS_OFFSET),
        "BELL_BYTES": ("fastenv.shm.doorbell.DOORBELL_BYTES", DOORBELL_BYTES),
    },
    (native.LAYOUT_MODULE,),
)

class Doorbell:
    """Sequence-counter doorbell on the 32-bit word at ``offset`` of ``buf``.

    Args:
        buf: a writable buffer shared with the peer (``SharedMemory.buf``,
            an ``mmap``, ...).  The doorbell keeps a reference to it but does
            not hold a buffer export between calls, so the owner can still
            close it.
        offset: byte offset of the counter word; a multiple of 4, with the
            sleepers word at ``offset + 4`` also inside ``buf``.
        backend: ``None`` for the backend :mod:`fastenv.native` selected
            (:data:`fastenv.shm.futex.BACKEND`), ``"native"`` / ``"python"``,
            or a backend module.
        spin_us: spin budget of :meth:`wait` before it sleeps, in microseconds;
            ``None`` for the backend's default.

    Raises:
        ValueError: ``offset`` is misaligned or out of bounds.
        fastenv.native.NativeBackendError: ``backend="native"`` and the extension
            cannot be used (an ``ImportError``).
    """

    __slots__ = ("_backend", "_buf", "_offset", "_sleepers", "_spin_us")

    def __init__(
        self,
        buf: Any,
        offset: int,
        *,
        backend: Any = None,
        spin_us: int | None = None,
    ) -> None:
        self._backend = futex.get_backend(backend)
        self._buf = buf
        self._offset = operator.index(offset)
        self._sleepers = self._offset + SLEEPERS_OFFSET
        self._spin_us = (
            self._backend.DEFAULT_SPIN_US if spin_us is None else int(spin_us)
        )
        if self._spin_us < 0:
            raise ValueError("spin_us must be >= 0")
        self._backend.load(buf, self._offset)  # validates offset and buffer now
        self._backend.load(buf, self._sleepers)

    @property
    def offset(self) -> int:
        """Byte offset of the counter word inside the buffer."""
        return self._offset

    @property
    def backend(self) -> Any:
        """The backend module this doorbell uses."""
        return self._backend

    def value(self) -> int:
        """Return the current counter value."""
        return self._backend.load(self._buf, self._offset)

    def ring(self) -> int:
        """Increment the counter, wake every waiter and return the new value."""
        return self._backend.ring(self._buf, self._offset, self._sleepers)

    def wait(self, seen: int, timeout: float | None = None, spin_us: int | None = None) -> int:
        """Wait until the counter differs from ``seen`` and return its new value.

        Args:
            seen: the last counter value the caller observed.
            timeout: seconds to wait (monotonic clock); ``None`` waits forever,
                ``0`` only checks.
            spin_us: this wait's spin before sleeping (None: the doorbell's).

        Raises:
            FastEnvTimeout: the counter still equals ``seen`` after ``timeout``.
            KeyboardInterrupt: Ctrl-C while waiting (any signal handler that
                raises propagates the same way).
        """
        backend = self._backend
        current = backend.load(self._buf, self._offset)
        if current != seen:
            return current
        spin = self._spin_us if spin_us is None else spin_us
        if not backend.wait(self._buf, self._offset, seen, timeout, spin, self._sleepers):
            raise FastEnvTimeout(
                f"doorbell at offset {self._offset}: not rung within {timeout} s "
                f"(counter still {seen})"
            )
        return backend.load(self._buf, self._offset)

    def __repr__(self) -> str:
        name = "native" if self._backend is futex.native_backend else "python"
        if self._backend not in (futex.native_backend, futex.python_backend):
            name = getattr(self._backend, "__name__", repr(self._backend))
        return f"<Doorbell offset={self._offset} backend={name}>"
