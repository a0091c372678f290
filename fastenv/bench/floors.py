"""Physical floors: the least any same-host env transport can cost (for comparison only).

- ``shm-pingpong-spin`` (:class:`ShmPingPongSpin`) and ``shm-pingpong-futex``
  (:class:`ShmPingPongFutex`): a client and a server process share one memory
  segment (a ``memfd`` the server inherits, so no name and no cleanup). A step
  is: the client copies the action into the segment and bumps a request
  counter; the server, waiting on that counter, steps the env, ``np.copyto``\\ s
  each observation array into a fixed place in the segment and bumps a reply
  counter; the client, waiting on that, returns read-only views of the
  observation arrays (no copy, no decoding). ``-spin`` waits in a Python
  busy loop on the counter word (never sleeps: one CPU burnt per waiting
  side); ``-futex`` waits with :class:`fastenv.shm.Doorbell` on the native
  backend (a short spin, then a futex sleep, woken by ``ring``). The env
  step and the payload copy are included, as in every other row; what is
  left out is everything a real transport adds: no encoding, no layout
  negotiation, no errors, no reward / flags / info (only the action goes in
  and only the observation comes back: :meth:`~_ShmPingPong.step` returns
  ``(observation, None, None, None, None)`` and the checks compare the
  observation), one fixed observation structure (an array or a flat dict of
  arrays, learnt from a local ``reset``).
- ``tcp-raw`` (:class:`TcpRaw`): the network floor. A server process
  listens on 127.0.0.1; TCP_NODELAY on both sides. A request is a fixed
  13-byte header (body length, command, seed) then the action's raw bytes;
  the server steps the env, ``np.copyto``\\ s the observation arrays into a
  preallocated buffer and sends a fixed 8-byte length header and those bytes
  in one ``sendall``; the client ``recv_into``\\ s them, in chunks of at most
  1 MiB, into a preallocated numpy buffer and returns read-only views of it.
  Raw bytes only: no structure, no codec, no reward / flags / info (like the
  shared-memory floors, :meth:`~TcpRaw.step` returns ``(observation, None,
  None, None, None)`` and only the observation is compared), one fixed
  observation layout learnt from a local ``reset`` on both sides.
- ``memcpy`` (:func:`memcpy_reference`): one in-process ``np.copyto`` of the
  observation's arrays into a preallocated destination: *cached* re-copies the
  same source (source and destination hot in cache), *fresh-source* copies a
  newly allocated and written source each time (as an env renders a new frame
  every step). A reference time, not a transport.

Server: ``python -m fastenv.bench.floors NAME PAYLOAD [FD]`` (``FD``: the shared-memory floors).
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fastenv.bench.baselines import Baseline, _accept_one_client, _announce, _parent_gone
from fastenv.bench.stats import Summary, summarize
from fastenv.bench.workloads import get_workload, observation_arrays
from fastenv.errors import FastEnvTimeout

__all__ = ["FLOORS", "MemcpyReference", "ShmPingPongFutex", "ShmPingPongSpin", "TcpRaw", "memcpy_reference"]

_REQUEST, _REPLY, _COMMAND, _SEED = 0, 64, 128, 136  # separate cache lines for the two counters
_DATA = 192
_ALIGN = 64
_STEP, _RESET, _CLOSE = 0, 1, 2
_MASK = 0xFFFFFFFF
_PARENT_CHECK_S = 0.5


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


@dataclass(frozen=True)
class _Layout:
    """Where the action and each observation array live in the segment."""

    action: tuple[int, tuple[int, ...], np.dtype]
    observation: tuple[tuple[str | None, int, tuple[int, ...], np.dtype], ...]
    size: int

    @classmethod
    def of(cls, payload: str) -> _Layout:
        """The layout for ``payload``, from a local env's reset observation (both sides agree)."""
        workload = get_workload(payload)
        env = workload.make_env()
        try:
            observation = env.reset(seed=workload.seed)[0]
        finally:
            env.close()
        action = workload.make_action()
        offset = _DATA
        action_entry = (offset, action.shape, action.dtype)
        offset = _aligned(offset + action.nbytes)
        entries = []
        for key, array in observation_arrays(observation):
            entries.append((key, offset, array.shape, array.dtype))
            offset = _aligned(offset + array.nbytes)
        return cls(action_entry, tuple(entries), max(offset, mmap.PAGESIZE))

    def action_view(self, buf: Any) -> np.ndarray:
        offset, shape, dtype = self.action
        return np.ndarray(shape, dtype, buffer=buf, offset=offset)

    def observation_views(self, buf: Any, *, readonly: bool) -> list[tuple[str | None, np.ndarray]]:
        views = []
        for key, offset, shape, dtype in self.observation:
            view = np.ndarray(shape, dtype, buffer=buf, offset=offset)
            if readonly:
                view.flags.writeable = False
            views.append((key, view))
        return views


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


def _serve(mode: str, payload: str, fd: int) -> None:
    """The server loop: wait for a request, reset or step, copy the observation in, reply."""
    layout = _Layout.of(payload)
    env = get_workload(payload).make_env()
    mm = mmap.mmap(fd, layout.size)
    os.close(fd)
    request = reply = words = action = views = None
    try:
        request, reply = _bell(mode, mm, _REQUEST), _bell(mode, mm, _REPLY)
        words = np.ndarray(2, np.int64, buffer=mm, offset=_COMMAND)  # command, seed
        action = layout.action_view(mm)
        views = layout.observation_views(mm, readonly=False)
        _announce(mode)
        seen = 0
        while True:
            try:
                seen = request.wait(seen, _PARENT_CHECK_S)
            except FastEnvTimeout:
                if _parent_gone():
                    break
                continue
            command = int(words[0])
            if command == _CLOSE:
                break
            if command == _RESET:
                observation = env.reset(seed=int(words[1]))[0]
            else:
                observation = env.step(action.copy())[0]
            if views[0][0] is None:
                np.copyto(views[0][1], observation)
            else:
                for key, view in views:
                    np.copyto(view, observation[key])
            reply.ring()
    finally:
        words = action = views = None  # drop the buffer exports before unmapping
        _release(request)
        _release(reply)
        mm.close()
        env.close()


class _ShmPingPong(Baseline):
    """Client side of the shared-memory ping-pong floors (see the module docstring)."""

    server_module = "fastenv.bench.floors"
    mode: ClassVar[str] = ""

    def _prepare(self) -> tuple[list[str], tuple[int, ...]]:
        self._layout = _Layout.of(self.payload)
        self._fd = os.memfd_create(f"fastenv-bench-{self.name}", 0)
        os.ftruncate(self._fd, self._layout.size)
        self._mm = mmap.mmap(self._fd, self._layout.size)
        self._request_bell = _bell(self.mode, self._mm, _REQUEST)
        self._reply_bell = _bell(self.mode, self._mm, _REPLY)
        return [str(self._fd)], (self._fd,)

    def _connect(self, token: str) -> None:
        os.close(self._fd)  # the server holds its own copy (and its mapping) now
        self._fd = -1
        self._words = np.ndarray(2, np.int64, buffer=self._mm, offset=_COMMAND)
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
        return self._call(_RESET), {}

    def step(self, action: Any) -> Any:
        """Step the server's env; ``(observation views, None, None, None, None)``."""
        np.copyto(self._action, action)
        return self._call(_STEP), None, None, None, None

    @staticmethod
    def comparable(result: Any, expected: Any) -> tuple[Any, Any]:
        """Only the observation is transported: compare that."""
        return result[0], expected[0]

    def _disconnect(self) -> None:
        words = getattr(self, "_words", None)
        if words is not None and self._process is not None and self._process.poll() is None:
            words[0] = _CLOSE
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


# --------------------------------------------------------------------------
# tcp-raw: the network floor
# --------------------------------------------------------------------------

_TCP_REQUEST = struct.Struct("<IBq")  # body length, command, seed
_TCP_REPLY = struct.Struct("<Q")  # body length
_CHUNK = 1 << 20


def _recv_exactly(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` with ``recv_into`` (at most 1 MiB a call); False on EOF before any byte."""
    got, size = 0, len(view)
    while got < size:
        n = sock.recv_into(view[got:], min(_CHUNK, size - got))
        if n == 0:
            if got == 0:
                return False
            raise ConnectionResetError("peer closed the connection mid-message")
        got += n
    return True


def _observation_span(layout: _Layout) -> tuple[int, int]:
    """``(start, end)`` of the observation arrays in a layout's buffer."""
    start = layout.observation[0][1]
    _, offset, shape, dtype = layout.observation[-1]
    return start, offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _serve_tcp(payload: str) -> None:
    """Serve one client over raw TCP (see the module docstring); return on its EOF, ``close`` or the parent's EOF."""
    layout = _Layout.of(payload)
    env = get_workload(payload).make_env()
    buf = np.zeros(layout.size, dtype=np.uint8)  # reply header just before the observation arrays
    action = np.zeros(layout.action[1], layout.action[2])  # its own buffer: the header may overlap the action's slot
    views = layout.observation_views(buf, readonly=False)
    start, end = _observation_span(layout)
    _TCP_REPLY.pack_into(buf, start - _TCP_REPLY.size, end - start)  # the reply: header + observation bytes
    reply = memoryview(buf)[start - _TCP_REPLY.size : end]
    header = bytearray(_TCP_REQUEST.size)
    header_view = memoryview(header)
    action_bytes = memoryview(action).cast("B")
    try:
        conn = _accept_one_client()
        if conn is None:
            return
        with conn:
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                if not select.select([conn], [], [], _PARENT_CHECK_S)[0]:
                    if _parent_gone():
                        break
                    continue
                try:
                    if not _recv_exactly(conn, header_view):
                        break
                    length, command, seed = _TCP_REQUEST.unpack(header)
                    if command == _CLOSE:
                        break
                    if length and not _recv_exactly(conn, action_bytes[:length]):
                        break
                except OSError:
                    break
                if command == _RESET:
                    observation = env.reset(seed=seed)[0]
                else:
                    observation = env.step(action.copy())[0]
                if views[0][0] is None:
                    np.copyto(views[0][1], observation)
                else:
                    for key, view in views:
                        np.copyto(view, observation[key])
                conn.sendall(reply)
    finally:
        reply.release()
        action_bytes.release()
        env.close()


class TcpRaw(Baseline):
    """The network floor: raw action / observation bytes over a 127.0.0.1 TCP socket (see the module docstring)."""

    name = "tcp-raw"
    server_module = "fastenv.bench.floors"

    def _connect(self, token: str) -> None:
        self._layout = layout = _Layout.of(self.payload)
        self._sock = socket.create_connection(("127.0.0.1", int(token)), timeout=self.timeout)
        self._sock.settimeout(self.timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nbytes = int(np.prod(layout.action[1], dtype=np.int64)) * np.dtype(layout.action[2]).itemsize
        self._request_buf = np.zeros(_TCP_REQUEST.size + nbytes, dtype=np.uint8)
        self._action = np.ndarray(layout.action[1], layout.action[2], buffer=self._request_buf,
                                  offset=_TCP_REQUEST.size)  # fmt: skip
        self._buf = np.zeros(layout.size, dtype=np.uint8)
        self._start, self._end = _observation_span(layout)
        self._header = np.zeros(_TCP_REPLY.size, dtype=np.uint8)
        views = layout.observation_views(self._buf, readonly=True)
        self._observation = views[0][1] if views[0][0] is None else dict(views)

    def _call(self, command: int, seed: int = 0) -> Any:
        body = len(self._request_buf) - _TCP_REQUEST.size if command == _STEP else 0
        _TCP_REQUEST.pack_into(self._request_buf, 0, body, command, seed)
        self._sock.sendall(memoryview(self._request_buf)[: _TCP_REQUEST.size + body])
        if not _recv_exactly(self._sock, memoryview(self._header)):
            raise ConnectionResetError(f"{self.name}: the server closed the connection")
        (length,) = _TCP_REPLY.unpack(self._header)
        if length != self._end - self._start:
            raise ConnectionError(f"{self.name}: reply of {length} B, expected {self._end - self._start} B")
        _recv_exactly(self._sock, memoryview(self._buf)[self._start : self._end])
        return self._observation

    def reset(self, seed: int | None = None) -> Any:
        """Reset the server's env; ``(observation views, {})`` (info is not transported)."""
        return self._call(_RESET, 0 if seed is None else seed), {}

    def step(self, action: Any) -> Any:
        """Step the server's env; ``(observation views, None, None, None, None)``."""
        np.copyto(self._action, action)
        return self._call(_STEP), None, None, None, None

    @staticmethod
    def comparable(result: Any, expected: Any) -> tuple[Any, Any]:
        """Only the observation is transported: compare that."""
        return result[0], expected[0]

    def _disconnect(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()  # EOF tells the server to exit


FLOORS: dict[str, type[Baseline]] = {cls.name: cls for cls in (ShmPingPongSpin, ShmPingPongFutex, TcpRaw)}


# --------------------------------------------------------------------------
# memcpy reference
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MemcpyReference:
    """In-process ``np.copyto`` of one observation's arrays: cached and fresh-source."""

    payload: str
    nbytes: int
    cached: Summary
    fresh: Summary

    def as_dict(self) -> dict[str, Any]:
        return {
            "payload": self.payload,
            "nbytes": self.nbytes,
            "cached": self.cached.as_dict(),
            "fresh_source": self.fresh.as_dict(),
        }


def memcpy_reference(payload: str, copies: int = 200, warmup: int = 10) -> MemcpyReference:
    """Time ``copies`` copies of the payload's observation arrays, each way (see the module docstring)."""
    if copies < 1:
        raise ValueError(f"need copies >= 1, got {copies}")
    workload = get_workload(payload)
    env = workload.make_env()
    try:
        arrays = [array for _, array in observation_arrays(env.reset(seed=workload.seed)[0])]
    finally:
        env.close()
    targets = [np.empty_like(array) for array in arrays]
    clock = time.perf_counter_ns

    def copy_all(sources: list[np.ndarray]) -> int:
        t0 = clock()
        for target, source in zip(targets, sources):
            np.copyto(target, source)
        return clock() - t0

    cached = np.zeros(copies, dtype=np.int64)
    fresh = np.zeros(copies, dtype=np.int64)
    for i in range(-warmup, copies):
        elapsed = copy_all(arrays)
        if i >= 0:
            cached[i] = elapsed
    for i in range(-warmup, copies):
        sources = [np.empty_like(array) for array in arrays]
        for source in sources:
            source.fill(i & 0x7F)  # written just before the copy, as a renderer would
        elapsed = copy_all(sources)
        if i >= 0:
            fresh[i] = elapsed
    return MemcpyReference(payload, sum(a.nbytes for a in arrays), summarize(cached), summarize(fresh))


def main(argv: list[str] | None = None) -> int:
    """Server entry point: ``python -m fastenv.bench.floors NAME PAYLOAD [FD]``."""
    name, payload, *rest = sys.argv[1:] if argv is None else argv
    if name == TcpRaw.name:
        _serve_tcp(payload)
    elif name in (ShmPingPongSpin.name, ShmPingPongFutex.name):
        _serve(FLOORS[name].mode, payload, int(rest[0]))  # type: ignore[attr-defined]
    else:
        raise SystemExit(f"unknown floor {name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
