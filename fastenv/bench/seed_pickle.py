"""The seed wrapper's protocol as a baseline: pickle over TCP, framed by a 4-byte length.

``seed-pickle`` (:class:`SeedPickle`) reproduces the seed exactly, Nagle on;
``seed-pickle-nodelay`` (:class:`SeedPickleNoDelay`) is the same with Nagle off
and one write per message. The server side (:func:`serve_seed`) runs in the
child process started by :class:`~fastenv.bench.serverproc.Baseline`.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any, ClassVar

from fastenv.bench.serverproc import Baseline, accept_one_client, dispatch, unwrap
from fastenv.bench.workloads import get_workload

__all__ = ["SeedPickle", "SeedPickleNoDelay", "serve_seed"]

_HEADER = struct.Struct(">I")
_SEED_PIECE = 4096


# --------------------------------------------------------------------------
# The seed protocol: 4-byte big-endian length, then pickle bytes.
# --------------------------------------------------------------------------


def _seed_send(sock: socket.socket, message: Any, *, one_write: bool) -> None:
    """Send one framed message: two ``sendall`` calls (seed) or one (``one_write``)."""
    body = pickle.dumps(message)
    header = _HEADER.pack(len(body))
    if one_write:
        sock.sendall(header + body)
    else:
        sock.sendall(header)
        sock.sendall(body)


def _seed_recv_exact(sock: socket.socket, size: int) -> bytes:
    """The seed's receive loop: append pieces of at most 4 KiB to a growing bytes object."""
    data = b""
    while len(data) < size:
        piece = sock.recv(min(_SEED_PIECE, size - len(data)))
        if not piece:
            raise ConnectionResetError("peer closed the connection mid-message" if data else "peer closed")
        data += piece
    return data


def _seed_recv(sock: socket.socket) -> Any:
    """Receive one framed message."""
    (size,) = _HEADER.unpack(_seed_recv_exact(sock, _HEADER.size))
    return pickle.loads(_seed_recv_exact(sock, size))


def serve_seed(payload: str, nodelay: bool) -> None:
    """Serve one client over the seed protocol; return on its EOF or the parent's."""
    env = get_workload(payload).make_env()
    conn = accept_one_client()
    if conn is not None:
        with conn:
            conn.settimeout(None)
            if nodelay:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                try:
                    request = _seed_recv(conn)
                except (ConnectionError, OSError):
                    break
                _seed_send(conn, dispatch(env, request), one_write=nodelay)
    env.close()


class SeedPickle(Baseline):
    """The seed wrapper's protocol, reproduced exactly (on 127.0.0.1).

    Transports: one pickled dict per message (``{"type": "step", "action": a}``,
    ``{"type": "reset"}`` plus a ``"seed"`` key added here so runs are
    reproducible; responses ``{"type": "response", "data": result}``), framed
    by a 4-byte big-endian length sent by a *separate* ``sendall`` before the
    body, TCP_NODELAY left off (Nagle + delayed ACK apply), and received by a
    loop that appends pieces of at most 4 KiB to a growing ``bytes``.

    Does not transport: spaces, ``spec``, ``metadata``, ``render``, other
    methods or typed errors (an env error comes back as type name, message and
    traceback text). One client per server.
    """

    name = "seed-pickle"
    nodelay: ClassVar[bool] = False

    def _connect(self, token: str) -> None:
        self._sock = socket.create_connection(("127.0.0.1", int(token)), timeout=self.timeout)
        self._sock.settimeout(self.timeout)
        if self.nodelay:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _request(self, message: dict[str, Any]) -> Any:
        _seed_send(self._sock, message, one_write=self.nodelay)
        return unwrap(_seed_recv(self._sock))

    def _disconnect(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()


class SeedPickleNoDelay(SeedPickle):
    """:class:`SeedPickle` with TCP_NODELAY on both ends and one ``sendall`` of header + body.

    Same messages, same pickle, same 4 KiB append receive loop: isolates what
    Nagle and delayed ACK cost the seed. Transports the same things.
    """

    name = "seed-pickle-nodelay"
    nodelay = True
