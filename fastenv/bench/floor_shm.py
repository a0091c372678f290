"""The shared-memory ping-pong floors: ``shm-pingpong-spin`` and ``shm-pingpong-futex``.

A client and a server process share one ``memfd`` segment laid out by
:class:`~fastenv.bench.floor_layout.FloorLayout`; each side waits on the
other's counter word, by busy-waiting (``-spin``) or with
:class:`fastenv.shm.Doorbell` (``-futex``). See :mod:`fastenv.bench.floors`
for what they include and leave out.
"""

from __future__ import annotations

import mmap
import os
import time
from typing import Any, ClassVar

import numpy as np

from fastenv.bench.floor_layout import CLOSE, COMMAND, REPLY, REQUEST, RESET, FloorClient, FloorLayout, serve_command
from fastenv.bench.serverproc import PARENT_CHECK_S, announce, parent_gone
from fastenv.bench.workloads import get_workload
from fastenv.errors import FastEnvTimeout

__all__ = ["ShmPingPongFutex", "ShmPingPongSpin", "serve_shm"]

_MASK = 0xFFFFFFFF


class _SpinBell:
    """A counter word polled in a Python busy loop (same ``ring``/``wait`` as a Doorbell)."""

    def __init__(self, buf: Any, offset: int) -> None:
        self._word = memoryview(buf)[offset : offset + 4].cast("I")

    def ring(self) -> None:
        word = self._word
        word[0] = (word[0] + 1) & _MASK  # one ringing side per word: no atomic add needed

    def value(self) -> int:
        return self._word[0]

    def wait(self, seen: int, timeout: float | None = None) -> int:
        word = self._word
        value = word[0]
        if value != seen:
            return value
        deadline = None if timeout is None else time.monotonic() + timeout
        spins = 0
        while True:
            value = word[0]
            if value != seen:
                return value
            spins += 1
            if deadline is not None and not spins & 0x3FF and time.monotonic() > deadline:
                raise FastEnvTimeout(f"busy-wait: counter not bumped within {timeout} s")

    def release(self) -> None:
        self._word.release()


def _bell(mode: str, buf: Any, offset: int) -> Any:
    if mode == "spin":
        return _SpinBell(buf, offset)
    from fastenv.shm.doorbell import Doorbell

    return Doorbell(buf, offset, backend="native")  # ImportError when the extension is missing


def _release(bell: Any) -> None:
    if isinstance(bell, _SpinBell):
        bell.release()


def serve_shm(mode: str, payload: str, fd: int) -> None:
    """The server loop: wait for a request, reset or step, copy the observation in, reply."""
    layout = FloorLayout.of(payload)
    env = get_workload(payload).make_env()
    mm = mmap.mmap(fd, layout.size)
    os.close(fd)
    request = reply = words = action = views = None
    try:
        request, reply = _bell(mode, mm, REQUEST), _bell(mode, mm, REPLY)
        words = np.ndarray(2, np.int64, buffer=mm, offset=COMMAND)  # command, seed
        action = layout.action_view(mm)
        views = layout.observation_views(mm, readonly=False)
        announce(mode)
        seen = 0
        while True:
            try:
                seen = request.wait(seen, PARENT_CHECK_S)
            except FastEnvTimeout:
                if parent_gone():
                    break
                continue
            command = int(words[0])
            if command == CLOSE:
                break
            serve_command(env, command, int(words[1]), action, views)
            reply.ring()
    finally:
        words = action = views = None  # drop the buffer exports before unmapping
        _release(request)
        _release(reply)
        mm.close()
        env.close()


class _ShmPingPong(FloorClient):
    """Client side of the shared-memory ping-pong floors (see :mod:`fastenv.bench.floors`)."""

    server_module = "fastenv.bench.floors"
    mode: ClassVar[str] = ""

    def _prepare(self) -> tuple[list[str], tuple[int, ...]]:
        self._layout = FloorLayout.of(self.payload)
        self._fd = os.memfd_create(f"fastenv-bench-{self.name}", 0)
        os.ftruncate(self._fd, self._layout.size)
        self._mm = mmap.mmap(self._fd, self._layout.size)
        self._request_bell = _bell(self.mode, self._mm, REQUEST)
        self._reply_bell = _bell(self.mode, self._mm, REPLY)
        return [str(self._fd)], (self._fd,)

    def _connect(self, token: str) -> None:
        os.close(self._fd)  # the server holds its own copy (and its mapping) now
        self._fd = -1
        self._words = np.ndarray(2, np.int64, buffer=self._mm, offset=COMMAND)
        self._action = self._layout.action_view(self._mm)
        views = self._layout.observation_views(self._mm, readonly=True)
        self._observation = views[0][1] if views[0][0] is None else dict(views)
        self._seen = self._reply_bell.value()

    def _call(self, command: int) -> Any:
        self._words[0] = command
        self._request_bell.ring()
        self._seen = self._reply_bell.wait(self._seen, self.timeout)
        return self._observation

    def reset(self, seed: int | None = None) -> Any:
        """Reset the server's env; ``(observation views, {})`` (info is not transported)."""
        self._words[1] = 0 if seed is None else seed
        return self._call(RESET), {}

    def _disconnect(self) -> None:
        words = getattr(self, "_words", None)
        if words is not None and self._process is not None and self._process.poll() is None:
            words[0] = CLOSE
            self._request_bell.ring()
        for attr in ("_words", "_action", "_observation"):
            if hasattr(self, attr):
                delattr(self, attr)
        for attr in ("_request_bell", "_reply_bell"):
            _release(getattr(self, attr, None))
        mm = getattr(self, "_mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # the caller still holds views: the mapping goes with the last of them
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1


class ShmPingPongSpin(_ShmPingPong):
    """Shared-memory ping-pong, both sides busy-waiting on the counter words."""

    name = "shm-pingpong-spin"
    mode = "spin"


class ShmPingPongFutex(_ShmPingPong):
    """Shared-memory ping-pong with :class:`fastenv.shm.Doorbell` (native: spin, then futex)."""

    name = "shm-pingpong-futex"
    mode = "futex"
