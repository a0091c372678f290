"""Give memory back after a storm of connections has passed (glibc only).

Hundreds of connections that come and go (clients abandoning sessions, port
scanners, a fuzzer) leave the server's heap full of freed blocks: libzmq's
receive buffers, data-stream staging buffers, worker-thread arenas. glibc
keeps them for reuse, so the resident size would stay at the storm's peak.
Python adds its own delay: what a closed session leaves in reference cycles
(worker threads and their callbacks, exceptions and their tracebacks) waits
for a full garbage collection, which may not come for thousands of sessions.
The :class:`MemoryReclaimer` is told, from the server's liveness check, how
many connections have closed so far; once at least ``drop`` have closed since
its last run and none closed since the previous check (the storm is over), it
runs a full collection and then ``malloc_trim(0)``, which hands the free pages
of every arena back to the kernel. A steady state never triggers it, so the
hot path is untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger("fastenv.server")

DROP_TO_TRIM = 32  # connections closed since the last trim that make a storm worth trimming after


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return trim


class MemoryReclaimer:
    """Collects garbage and trims the heap after ``drop`` or more connections closed and the closing stopped.

    Attributes:
        trims: how many times it ran.
    """

    def __init__(self, drop: int = DROP_TO_TRIM) -> None:
        self.drop = drop
        self.trims = 0
        self._trim = _load_malloc_trim()
        self._seen = 0
        self._trimmed_at = 0

    def check(self, closed: int) -> bool:
        """``closed``: connections closed so far (a running count). True if it ran now."""
        if closed != self._seen:  # still closing: wait for a quiet check
            self._seen = closed
            return False
        if closed - self._trimmed_at < self.drop:
            return False
        self._trimmed_at = closed
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        self.trims += 1
        log.debug("returned free heap memory to the kernel after %d closed connections", closed)
        return True


__all__ = ["MemoryReclaimer"]
