"""The ``multiprocessing.Pipe`` baseline (``mp-pipe``): pickled dicts over one Unix socketpair."""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import Any

from fastenv.bench.serverproc import PARENT_CHECK_S, Baseline, announce, dispatch, parent_gone, unwrap
from fastenv.bench.workloads import get_workload
from fastenv.errors import FastEnvTimeout

__all__ = ["MpPipe", "serve_pipe"]


def serve_pipe(payload: str, fd: int) -> None:
    """Serve over the inherited ``multiprocessing.Pipe`` end ``fd``; return on its EOF or the parent's."""
    env = get_workload(payload).make_env()
    with Connection(fd) as conn:
        announce("pipe")
        while True:
            if not conn.poll(PARENT_CHECK_S):
                if parent_gone():
                    break
                continue
            try:
                request = conn.recv()
            except (EOFError, OSError):
                break
            conn.send(dispatch(env, request))
    env.close()


class MpPipe(Baseline):
    """A ``multiprocessing.Pipe`` to a server process that steps the env.

    Transports the same request/response dicts as :class:`SeedPickle` with
    ``Connection.send`` / ``recv`` (pickle, a 4-byte length header, one
    Unix socketpair). The server is a plain subprocess that inherits its end
    of the pipe by file descriptor, so callers need no ``__main__`` guard. The
    client polls with the timeout before every ``recv``. Does not transport
    spaces, ``spec``, ``metadata``, ``render`` or other methods.
    """

    name = "mp-pipe"

    def _prepare(self) -> tuple[list[str], tuple[int, ...]]:
        import multiprocessing

        self._conn, self._child_conn = multiprocessing.Pipe(duplex=True)
        fd = self._child_conn.fileno()
        return [str(fd)], (fd,)

    def _connect(self, token: str) -> None:
        self._child_conn.close()  # the server holds its own copy now

    def _request(self, message: dict[str, Any]) -> Any:
        self._conn.send(message)
        if not self._conn.poll(self.timeout):
            raise FastEnvTimeout(f"{self.name}: no reply within {self.timeout:.0f}s")
        return unwrap(self._conn.recv())

    def _disconnect(self) -> None:
        for attr in ("_conn", "_child_conn"):
            conn = getattr(self, attr, None)
            if conn is not None:
                conn.close()  # EOF tells the server to exit
