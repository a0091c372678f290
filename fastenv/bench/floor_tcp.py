"""The network floor, ``tcp-raw``: raw action and observation bytes over a 127.0.0.1 TCP socket.

See :mod:`fastenv.bench.floors` for what it includes and leaves out.
"""

from __future__ import annotations

import select
import socket
import struct
from typing import Any

import numpy as np

from fastenv.bench.floor_layout import CLOSE, RESET, STEP, FloorClient, FloorLayout, serve_command
from fastenv.bench.serverproc import PARENT_CHECK_S, accept_one_client, parent_gone
from fastenv.bench.workloads import get_workload

__all__ = ["TcpRaw", "serve_tcp"]

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


def _observation_span(layout: FloorLayout) -> tuple[int, int]:
    """``(start, end)`` of the observation arrays in a layout's buffer."""
    start = layout.observation[0][1]
    _, offset, shape, dtype = layout.observation[-1]
    return start, offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def serve_tcp(payload: str) -> None:
    """Serve one client over raw TCP (see :mod:`fastenv.bench.floors`); return on its EOF, ``close`` or the parent's EOF."""
    layout = FloorLayout.of(payload)
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
        conn = accept_one_client()
        if conn is None:
            return
        with conn:
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                if not select.select([conn], [], [], PARENT_CHECK_S)[0]:
                    if parent_gone():
                        break
                    continue
                try:
                    if not _recv_exactly(conn, header_view):
                        break
                    length, command, seed = _TCP_REQUEST.unpack(header)
                    if command == CLOSE:
                        break
                    if length and not _recv_exactly(conn, action_bytes[:length]):
                        break
                except OSError:
                    break
                serve_command(env, command, seed, action, views)
                conn.sendall(reply)
    finally:
        reply.release()
        action_bytes.release()
        env.close()


class TcpRaw(FloorClient):
    """The network floor: raw action / observation bytes over a 127.0.0.1 TCP socket (see :mod:`fastenv.bench.floors`)."""

    name = "tcp-raw"
    server_module = "fastenv.bench.floors"

    def _connect(self, token: str) -> None:
        self._layout = layout = FloorLayout.of(self.payload)
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
        body = len(self._request_buf) - _TCP_REQUEST.size if command == STEP else 0
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
        return self._call(RESET, 0 if seed is None else seed), {}

    def _disconnect(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()  # EOF tells the server to exit
