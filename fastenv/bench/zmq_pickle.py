"""The pyzmq baseline: REQ/REP over ``tcp://127.0.0.1`` with whole-message pickle (``zmq-pickle``)."""

from __future__ import annotations

import pickle
from typing import Any

import zmq

from fastenv.bench.serverproc import PARENT_CHECK_S, Baseline, announce, dispatch, parent_gone, unwrap
from fastenv.bench.workloads import get_workload
from fastenv.errors import FastEnvTimeout

__all__ = ["ZmqPickle", "serve_zmq"]


def serve_zmq(payload: str) -> None:
    """A pyzmq REP server with whole-message pickle; returns on ``close`` or the parent's EOF."""
    env = get_workload(payload).make_env()
    context = zmq.Context()
    try:
        with context.socket(zmq.REP) as server:
            server.linger = 0
            server.rcvtimeo = int(PARENT_CHECK_S * 1000)
            announce(server.bind_to_random_port("tcp://127.0.0.1"))
            while True:
                try:
                    request = pickle.loads(server.recv())
                except zmq.Again:
                    if parent_gone():
                        break
                    continue
                if request.get("type") == "close":
                    server.send(pickle.dumps({"type": "response", "data": None}))
                    break
                server.send(pickle.dumps(dispatch(env, request)))
    finally:
        context.term()
    env.close()


class ZmqPickle(Baseline):
    """pyzmq REQ/REP over ``tcp://127.0.0.1``, each message pickled whole and sent in-band.

    Transports the same request/response dicts as :class:`SeedPickle`, one
    ZeroMQ frame per message (arrays are inside the pickle, copied into the
    frame). Does not transport spaces, ``spec``, ``metadata``, ``render`` or
    other methods; no heartbeats or retries (a timed-out REQ socket is unusable).
    """

    name = "zmq-pickle"

    def _connect(self, token: str) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REQ)
        self._socket.linger = 0
        self._socket.rcvtimeo = self._socket.sndtimeo = int(self.timeout * 1000)
        self._socket.connect(f"tcp://127.0.0.1:{int(token)}")

    def _request(self, message: dict[str, Any]) -> Any:
        try:
            self._socket.send(pickle.dumps(message))
            return unwrap(pickle.loads(self._socket.recv()))
        except zmq.Again:
            raise FastEnvTimeout(f"{self.name}: no reply within {self.timeout:.0f}s") from None

    def _disconnect(self) -> None:
        sock = getattr(self, "_socket", None)
        if sock is None:
            return
        try:
            if self._process is not None and self._process.poll() is None:
                try:
                    self._request({"type": "close"})
                except (FastEnvTimeout, zmq.ZMQError):
                    pass  # the server is stopped by _stop_server anyway
        finally:
            sock.close()
            self._context.term()
