"""One allocator setting for every process of a benchmark run (glibc ``malloc``).

Why: the camera env allocates two fresh 0.9 MB frames per step. Under glibc's
default, dynamic thresholds, whether such blocks are recycled from the heap or
handed back to the kernel (``munmap`` / heap trim) and faulted in again on the
next step depends on what else the process happens to have allocated, so the
*same* ``env.step`` costs about 0.1 ms in one server process and 1.2 ms in
another: a difference between rows that has nothing to do with the transport.

``steady`` (the ``fastenv-bench`` default) fixes the thresholds in every server
process (environment variables read by glibc at start-up), in Gymnasium's
worker (:func:`apply`, ``mallopt`` through ctypes, before the env is built) and
in the measuring process itself: blocks up to 64 MiB come from the heap and
the heap is trimmed only above 256 MiB of free space at its top, so a
steady-state step allocates without page faults in every row. ``default``
leaves glibc alone (what an untuned deployment gets). Only glibc is affected;
elsewhere both modes are the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Mapping

__all__ = ["MODES", "STEADY", "apply", "environment"]

#: glibc's environment variables for ``steady`` (each disables that threshold's dynamic adjustment).
STEADY: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
}
MODES: tuple[str, ...] = ("steady", "default")

_MALLOPT = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD


def environment(mode: str) -> dict[str, str]:
    """Environment variables that give a new process the allocator setting ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown malloc mode {mode!r}; choose one of {', '.join(MODES)}")
    return dict(STEADY) if mode == "steady" else {}


def apply(env: Mapping[str, str]) -> bool:
    """Apply the ``MALLOC_*_`` entries of ``env`` to this process with ``mallopt``.

    Returns:
        True when every entry was applied (trivially for none), False where
        there is no glibc ``mallopt`` or it refused a value.
    """
    wanted = {name: int(value) for name, value in env.items() if name in _MALLOPT}
    if not wanted:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(_MALLOPT[name], value) == 1 for name, value in wanted.items())
