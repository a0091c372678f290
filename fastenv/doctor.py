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
    try:
        from fastenv.shm import futex
    except ImportError as exc:
        return f"unavailable ({exc})"
    info = futex.backend_info()
    detail = f" ({info['reason']})" if info.get("reason") else ""
    return f"{info['name']}{detail}"


def _layout_packer() -> str:
    from fastenv import layout

    if layout._native_layout is not None:
        return "native (fastenv._layout; shm steps: one C call each way)"
    return "python (fastenv._layout is not built, or the native part is off: see the doorbell)"


def _tcp_spin() -> str:
    from fastenv.tcp import framing

    if framing._spin_readable is None:
        return "off (needs the native part)"
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
        "futex doorbell": _native_backend(),
        "layout packer": _layout_packer(),
        "tcp receive spin": _tcp_spin(),
        "/dev/shm": "writable" if os.access("/dev/shm", os.W_OK) else "not available",
    }
