"""Atomic 32-bit words and futex wait/wake, native or pure Python.

The backend is the one :mod:`fastenv.native` selects for every compiled part
(``FASTENV_NATIVE``; :func:`fastenv.native.select_backend` switches it): the C
extension :mod:`fastenv._native`, or the pure-Python fallback below. This
module keeps the fallback and rebinds its module-level functions to whichever
backend is selected.

Both backends export the names in :data:`PUBLIC_API` with the same semantics.
Every function takes a writable buffer (``mmap``, ``SharedMemory.buf``,
``bytearray``, ...) and a byte ``offset`` of a 32-bit word inside it; the
offset must be a multiple of 4 and the word inside the buffer (``ValueError``
otherwise).

``load(buf, offset) -> int``
    atomic acquire load of the uint32 word.
``store(buf, offset, value) -> None``
    atomic release store; ``value`` in ``[0, 2**32)``.
``add(buf, offset, delta) -> int``
    atomic fetch-add modulo 2**32 (negative deltas wrap); returns the previous value.
``compare_exchange(buf, offset, expected, desired) -> bool``
    replace the word with ``desired`` if it equals ``expected``.
``wait(buf, offset, expected, timeout=None, spin_us=DEFAULT_SPIN_US, sleepers=-1) -> bool``
    block while the word equals ``expected``: ``True`` once it differs (at once
    if it already does), ``False`` on timeout.  ``timeout=None`` waits forever,
    ``0`` (or negative) only checks, ``> 0`` is seconds on the monotonic clock.
``wake(buf, offset, count=1) -> int``
    wake up to ``count`` waiters blocked on the word; returns how many were woken.
``ring(buf, offset, sleepers) -> int``
    add 1 to the counter word and wake its waiters, but only when the word at
    ``sleepers`` (which ``wait(..., sleepers=...)`` keeps as a count of
    threads asleep in the kernel) is non-zero: a peer that is spinning costs
    no system call. Returns the new value.

The pure-Python fallback
------------------------
Loads and stores go through a 4-byte ``memoryview`` cast to ``"I"``, which
CPython performs as one aligned 4-byte ``memcpy`` -- a single load or store
instruction.  Aligned 4-byte reads and writes are single-copy atomic on x86-64
and aarch64, so a reader never sees a torn word.  There are no memory fences
beyond what the interpreter happens to execute: on x86-64 (TSO) stores become
visible in program order, so "write payload, then bump the word" is safe; on
aarch64 the many barriers inside the interpreter's own refcounting and locking
make it work in practice but not by contract.  ``add`` and
``compare_exchange`` are read-modify-write sequences guarded by a
process-local lock: atomic between threads of one process, **not** between
processes.  The fallback is therefore correct for the protocols fastenv uses,
where each word has a single writer (a doorbell counter is rung by one side
only).  ``wait`` polls the word: a short spin, then sleeps that grow from
5 us to 80 us, against a monotonic deadline.  Nobody sleeps in the kernel on
the word, so ``wake`` is a no-op returning 0.
"""

from __future__ import annotations

import ctypes
import math
import operator
import struct
import threading
import time
import types
from typing import Any

from fastenv import native
from fastenv.shm.arena import ENVELOPE, FAST, FAST_DATA

__all__ = [
    "BACKEND",
    "DEFAULT_SPIN_US",
    "MAX_SPIN_US",
    "PUBLIC_API",
    "add",
    "backend_info",
    "compare_exchange",
    "get_backend",
    "load",
    "ring",
    "store",
    "wait",
    "wake",
]

#: The functions every backend must export.
PUBLIC_API: tuple[str, ...] = (
    "load",
    "store",
    "add",
    "compare_exchange",
    "wait",
    "wake",
    "ring",
)

_U32_MASK = 0xFFFFFFFF

#: Spin budgets of ``wait`` are capped at this many microseconds (both backends).
MAX_SPIN_US = 1_000_000

# --------------------------------------------------------------------------
# pure-Python fallback

#: Spin budget of the fallback's ``wait`` before it starts sleeping.
_PY_DEFAULT_SPIN_US = 20
_PY_SLEEP_MIN_S = 5e-6
_PY_SLEEP_MAX_S = 80e-6

_rmw_lock = threading.Lock()


def _check_offset(offset: int) -> int:
    offset = operator.index(offset)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if offset % 4:
        raise ValueError(f"offset must be a multiple of 4, got {offset}")
    return offset


def _check_u32(value: int, what: str) -> int:
    value = operator.index(value)
    if not 0 <= value <= _U32_MASK:
        raise ValueError(f"{what} must be in [0, 2**32)")
    return value


def _word_view(buf: Any, offset: int) -> memoryview:
    """A one-item ``"I"`` view on the word; the caller must release it."""
    offset = _check_offset(offset)
    mv = memoryview(buf)
    try:
        if mv.readonly:
            raise BufferError("Object is not writable.")
        if not mv.c_contiguous:
            raise BufferError("buffer is not C-contiguous")
        nbytes = mv.nbytes
        if offset > nbytes - 4:
            raise ValueError(
                f"offset {offset} out of bounds for a 4-byte word in a buffer of {nbytes} bytes"
            )
        with mv.cast("B") as raw, raw[offset : offset + 4] as word_bytes:
            if ctypes.addressof(ctypes.c_char.from_buffer(word_bytes)) % 4:
                raise ValueError("word address is not 4-byte aligned")
            return word_bytes.cast("I")
    finally:
        mv.release()


def _py_load(buf: Any, offset: int) -> int:
    """Load the uint32 word at ``offset`` (see module docstring)."""
    with _word_view(buf, offset) as word:
        return word[0]


def _py_store(buf: Any, offset: int, value: int) -> None:
    """Store ``value`` in the uint32 word at ``offset``."""
    value = _check_u32(value, "value")
    with _word_view(buf, offset) as word:
        word[0] = value


def _py_add(buf: Any, offset: int, delta: int) -> int:
    """Add ``delta`` modulo 2**32; return the previous value (thread-atomic only)."""
    delta = operator.index(delta) & _U32_MASK
    with _word_view(buf, offset) as word, _rmw_lock:
        previous = word[0]
        word[0] = (previous + delta) & _U32_MASK
    return previous


def _py_compare_exchange(buf: Any, offset: int, expected: int, desired: int) -> bool:
    """Replace the word with ``desired`` if it equals ``expected`` (thread-atomic only)."""
    expected = _check_u32(expected, "expected")
    desired = _check_u32(desired, "desired")
    with _word_view(buf, offset) as word, _rmw_lock:
        if word[0] != expected:
            return False
        word[0] = desired
    return True


def _py_wait(
    buf: Any,
    offset: int,
    expected: int,
    timeout: float | None = None,
    spin_us: int = _PY_DEFAULT_SPIN_US,
    sleepers: int = -1,
) -> bool:
    """Poll until the word differs from ``expected`` (True) or ``timeout`` passes (False).

    ``sleepers`` is accepted for the native signature; polling waiters never sleep on the word.
    """
    expected = _check_u32(expected, "expected")
    spin_us = operator.index(spin_us)
    if spin_us < 0:
        raise ValueError("spin_us must be >= 0")
    if timeout is not None:
        if not hasattr(type(timeout), "__float__") and not hasattr(
            type(timeout), "__index__"
        ):
            raise TypeError(
                f"timeout must be a number or None, not {type(timeout).__name__}"
            )
        timeout = float(timeout)
        if math.isnan(timeout):
            raise ValueError("timeout must not be NaN")
    with _word_view(buf, offset) as word:
        if word[0] != expected:
            return True
        if timeout is not None and timeout <= 0:
            return False
        now = time.monotonic()
        deadline = math.inf if timeout is None else now + timeout
        spin_end = min(now + min(spin_us, MAX_SPIN_US) * 1e-6, deadline)
        while now < spin_end:
            if word[0] != expected:
                return True
            now = time.monotonic()
        delay = _PY_SLEEP_MIN_S
        while True:
            if word[0] != expected:
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, _PY_SLEEP_MAX_S)


def _py_wake(buf: Any, offset: int, count: int = 1) -> int:
    """No-op (fallback waiters poll); validates its arguments and returns 0."""
    count = operator.index(count)
    if count < 0:
        raise ValueError("count must be >= 0")
    with _word_view(buf, offset):
        pass
    return 0


def _py_ring(buf: Any, offset: int, sleepers: int) -> int:
    """Increment the counter word and return its new value (fallback waiters poll: nothing to wake)."""
    with _word_view(buf, sleepers):  # validates the sleepers word like the native backend
        pass
    return (_py_add(buf, offset, 1) + 1) & _U32_MASK


#: The pure-Python backend, as a module-like namespace.
python_backend = types.SimpleNamespace(
    __name__="fastenv.shm.futex.python_backend",
    __file__=__file__,
    DEFAULT_SPIN_US=_PY_DEFAULT_SPIN_US,
    load=_py_load,
    store=_py_store,
    add=_py_add,
    compare_exchange=_py_compare_exchange,
    wait=_py_wait,
    wake=_py_wake,
    ring=_py_ring,
)

# --------------------------------------------------------------------------
# the selected backend


def _envelope_fields() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Offsets and widths of the fields of :data:`fastenv.shm.arena.ENVELOPE` (packed)."""
    order, codes = ENVELOPE.format[0], ENVELOPE.format[1:]
    offsets = tuple(struct.calcsize(order + codes[:i]) for i in range(len(codes)))
    sizes = tuple(struct.calcsize(order + code) for code in codes)
    return offsets, sizes


def _shared_constants() -> tuple[dict[str, tuple[str, Any]], dict[str, tuple[str, Any]]]:
    """The values the C code hardcodes that this module and :mod:`fastenv.shm.arena` own:
    (what both extensions mirror, what only the shared-memory fast path mirrors)."""
    offsets, sizes = _envelope_fields()
    both = {"MAX_SPIN_US": ("fastenv.shm.futex.MAX_SPIN_US", MAX_SPIN_US)}
    fast_path = {
        "FAST_KIND": ("fastenv.shm.arena.FAST", FAST),
        "FAST_DATA": ("fastenv.shm.arena.FAST_DATA", FAST_DATA),
        "ENVELOPE_SIZE": ("fastenv.shm.arena.ENVELOPE.size", ENVELOPE.size),
        "ENVELOPE_OFFSETS": (f"the field offsets of fastenv.shm.arena.ENVELOPE {ENVELOPE.format!r}", offsets),
        "ENVELOPE_FIELD_SIZES": (f"the field sizes of fastenv.shm.arena.ENVELOPE {ENVELOPE.format!r}", sizes),
    }
    return both, fast_path


_both, _fast_path = _shared_constants()
native.verify_constants(_both)
native.verify_constants(_fast_path, (native.LAYOUT_MODULE,))
del _both, _fast_path

#: :mod:`fastenv._native` when it can be used (whichever backend is selected), else None.
native_backend: types.ModuleType | None = None
#: Why :data:`native_backend` is None (an ``ImportError``), else None.
_native_error: BaseException | None = None
_backend: Any = python_backend
#: ``"native"`` or ``"python"``: the selected backend (see :mod:`fastenv.native`).
BACKEND: str = "python"
_fallback_reason: str | None = None
#: Default spin budget of :func:`wait` in microseconds for the active backend.
DEFAULT_SPIN_US: int = _PY_DEFAULT_SPIN_US

load = _py_load
store = _py_store
add = _py_add
compare_exchange = _py_compare_exchange
wait = _py_wait
wake = _py_wake
ring = _py_ring


def _apply(selected: native.Backend) -> None:
    """Rebind this module's backend and functions to ``selected`` (a :func:`fastenv.native.bind` listener)."""
    global native_backend, _native_error, _backend, BACKEND, _fallback_reason, DEFAULT_SPIN_US
    global load, store, add, compare_exchange, wait, wake, ring
    state = native.part(native.NATIVE_MODULE)
    native_backend = state.module
    _native_error = None if state.available else ImportError(state.error)
    _backend = selected.native if selected.native is not None else python_backend
    BACKEND = selected.name
    _fallback_reason = None if selected.native is not None else selected.reason
    DEFAULT_SPIN_US = _backend.DEFAULT_SPIN_US
    load = _backend.load
    store = _backend.store
    add = _backend.add
    compare_exchange = _backend.compare_exchange
    wait = _backend.wait
    wake = _backend.wake
    ring = _backend.ring


native.bind(_apply)


def get_backend(backend: Any = None) -> Any:
    """Resolve ``backend`` to a backend module.

    ``None`` is the active backend (:data:`BACKEND`); ``"native"`` or
    ``"python"`` name one explicitly (:class:`fastenv.native.NativeBackendError`,
    an ``ImportError``, if the extension cannot be used); any other object is
    returned as is after checking it exports :data:`PUBLIC_API`.
    """
    if backend is None:
        return _backend
    if isinstance(backend, str):
        if backend == "python":
            return python_backend
        if backend == "native":
            if native_backend is None:
                raise native.NativeBackendError(f"fastenv._native is not available: {_native_error}")
            return native_backend
        raise ValueError(
            f"unknown futex backend {backend!r}; expected 'native' or 'python'"
        )
    missing = [
        name for name in PUBLIC_API if not callable(getattr(backend, name, None))
    ]
    if missing:
        raise TypeError(
            f"{backend!r} is not a futex backend: missing {', '.join(missing)}"
        )
    return backend


def backend_info() -> dict[str, Any]:
    """Describe the active backend, for ``fastenv doctor``.

    Keys: ``name`` (``"native"`` or ``"python"``), ``module`` (file the code
    comes from), ``native_available`` (bool), ``reason`` (why the fallback is
    used, ``None`` for native) and ``default_spin_us``.
    """
    return {
        "name": BACKEND,
        "module": getattr(_backend, "__file__", None),
        "native_available": native_backend is not None,
        "reason": _fallback_reason,
        "default_spin_us": DEFAULT_SPIN_US,
    }
