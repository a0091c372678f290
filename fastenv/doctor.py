"""``fastenv doctor``: versions and which optional parts are in use."""

from __future__ import annotations

import os
import platform
import sys

import numpy
import zmq

from fastenv._version import __version__
from fastenv.protocol import PROTOCOL_VERSION


def _native_backend() -> str:
    """The one backend line: which backend :mod:`fastenv.native` selected, and why."""
    from fastenv import native

    info = native.backend_info()
    return f"{info['name']} ({info['reason']})"


def _part(module_name: str, native_use: str) -> str:
    """One compiled part: in use, built but not selected, or unavailable (with the reason)."""
    from fastenv import native

    state = native.part(module_name)
    if not state.available:
        return f"python ({state.error})"
    if native.BACKEND.name != "native":
        return f"python ({module_name} is built; the backend is python)"
    return f"native ({native_use})"


def _fast_path() -> str:
    """The shared-memory fast path: on with the native backend, else off and why."""
    from fastenv import native

    state = native.part(native.LAYOUT_MODULE)
    if not state.available:
        return f"off ({state.error})"
    if native.BACKEND.name != "native":
        return "off (the backend is python)"
    return "on (fastenv._layout put/take: one C call each way)"


def _tcp_spin() -> str:
    """The TCP stream's receive spin (needs the native backend)."""
    from fastenv import native
    from fastenv.tcp import framing

    if native.BACKEND.native is None:
        return "off (needs the native backend)"
    if framing.DEFAULT_SPIN_US <= 0:
        return "off (FASTENV_TCP_SPIN_US=0)"
    return f"{framing.DEFAULT_SPIN_US} µs before blocking"


def _gymnasium() -> str:
    try:
        import gymnasium
    except ImportError:
        return 'not installed (pip install "fastenv[gym]")'
    return gymnasium.__version__


def report() -> dict[str, str]:
    """What ``fastenv doctor`` prints."""
    return {
        "fastenv": f"{__version__} (protocol v{PROTOCOL_VERSION})",
        "python": f"{sys.version.split()[0]} ({platform.machine()})",
        "numpy": numpy.__version__,
        "pyzmq": f"{zmq.__version__} (libzmq {zmq.zmq_version()})",
        "gymnasium": _gymnasium(),
        "native backend": _native_backend(),
        "futex doorbell": _part("fastenv._native", "fastenv._native: atomic words, futex wait and wake"),
        "layout packer": _part("fastenv._layout", "fastenv._layout: pack and unpack in C"),
        "shm fast path": _fast_path(),
        "tcp receive spin": _tcp_spin(),
        "/dev/shm": "writable" if os.access("/dev/shm", os.W_OK) else "not available",
    }
