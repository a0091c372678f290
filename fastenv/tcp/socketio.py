"""One bounded system call at a time on a stream socket: deadlines, stall limits, liveness checks.

Every blocking operation is cut into slices of :data:`WAIT_SLICE_S`; between
slices the owner's ``alive()`` check runs (a dead peer, a stop request), and
an operation ends with :class:`~fastenv.errors.FastEnvTimeout` at its
deadline or after ``stall`` seconds without progress. On Linux the socket
blocks with kernel send/receive timeouts (one system call per operation);
elsewhere, or with ``FASTENV_TCP_POLL=1``, Python socket timeouts.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

from fastenv.errors import ConnectionLost, FastEnvTimeout

WAIT_SLICE_S = 0.05  # blocking waits are cut into slices to notice a dead peer or a stop
# Kernel socket buffers (SO_SNDBUF / SO_RCVBUF, each side). Measured over loopback on the
# 2-core VM, a 1.8 MB reply to an 8-byte request, p50 of 1,000 (benchmarks/bench_tcp_stream.py
# --buffer-sweep): kernel autotuning from its defaults 1,254 us; 256 KiB 830 us; 512 KiB 442 us;
# 1 MiB 368 us; 2 MiB 331 us. With a buffer smaller than a message the sender stalls until the
# receiver drains it, one window at a time; 2 MiB holds a camera step. The kernel caps the
# request at net.core.[rw]mem_max (4 MiB by default) and doubles it for its bookkeeping.
DEFAULT_SOCKET_BUFFER = int(os.environ.get("FASTENV_TCP_SOCKET_BUFFER", str(2 << 20)))
# Kernel send/receive timeouts (Linux): elsewhere, Python socket timeouts (poll + call).
OS_TIMEOUTS = sys.platform.startswith("linux") and os.environ.get("FASTENV_TCP_POLL", "") != "1"


class BoundedSocket:
    """A connected stream socket whose operations are bounded (see the module docstring).

    Args:
        sock: the socket; owned from now on.
        socket_buffer: SO_SNDBUF and SO_RCVBUF to ask the kernel for (see
            :data:`DEFAULT_SOCKET_BUFFER`); None or 0 leaves the kernel's
            autotuning in charge.
    """

    def __init__(self, sock: socket.socket, socket_buffer: int | None = DEFAULT_SOCKET_BUFFER) -> None:
        self.sock = sock
        self.broken: BaseException | None = None
        self._timeout: float | None = -1.0
        self._label = "data stream"
        self._deadline: float | None = None
        self._stall: float | None = None
        self._progress = 0.0
        self._started = False
        self._alive: Callable[[], None] | None = None
        if OS_TIMEOUTS:
            sock.settimeout(None)  # blocking; waits are bounded by SO_RCVTIMEO / SO_SNDTIMEO
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a socketpair in a test): nothing to tune
        if socket_buffer:
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, int(socket_buffer))
                except OSError:
                    pass  # refused: the kernel's autotuning stays in charge

    # ------------------------------------------------------------------ state

    def _check(self) -> None:
        if self.broken is not None:
            raise ConnectionLost(f"the TCP data stream is unusable after an earlier failure: {self.broken}")

    def _abort(self, exc: BaseException) -> None:
        """Mark the stream broken and cut the connection (the peer sees EOF)."""
        if self.broken is None:
            self.broken = exc
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Close the socket; later calls raise :class:`ConnectionLost`. Safe to call twice."""
        if self.broken is None:
            self.broken = ConnectionLost("the data stream was closed")
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # ------------------------------------------------------------------ one bounded system call

    def _set_wait(self, wait: float) -> None:
        if OS_TIMEOUTS:
            # Blocking socket + kernel timeouts: one system call per operation, and a
            # large send or MSG_WAITALL receive completes inside the kernel.
            micros = max(1000, int(wait * 1e6))  # a zero timeval would mean "forever"
            timeval = struct.pack("ll", micros // 1_000_000, micros % 1_000_000)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        else:
            self.sock.settimeout(wait)
        self._timeout = wait

    def _io(self, op: Callable[..., int], *args: Any) -> int:
        """Run one socket operation, waiting in slices until the deadline; returns its count."""
        while True:
            wait = WAIT_SLICE_S
            deadline = self._deadline
            if self._stall is not None and self._started:
                stall_deadline = self._progress + self._stall
                if deadline is None or stall_deadline < deadline:
                    deadline = stall_deadline
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self._started and deadline != self._deadline:
                        raise FastEnvTimeout(f"{self._label}: the peer stopped exchanging data for {self._stall:g} s")
                    raise FastEnvTimeout(f"{self._label} did not complete within the timeout (tcp)")
                wait = min(wait, remaining)
            if wait != self._timeout:
                self._set_wait(wait)
            try:
                count = op(*args)
            except (TimeoutError, BlockingIOError):  # one slice passed with no progress
                if self._alive is not None:
                    self._alive()
                continue
            except OSError as exc:
                raise ConnectionLost(f"{self._label}: connection lost ({exc.strerror or exc})") from exc
            if self._stall is not None:
                self._progress = time.monotonic()
            return count
