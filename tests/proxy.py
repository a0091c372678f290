"""The tests' TCP proxy (:class:`fastenv.proxy.FaultProxy`: cuts, delays, a bandwidth cap) and free ports."""

from __future__ import annotations

import random
import socket

from fastenv.proxy import FaultProxy, LinkProfile

TcpProxy = FaultProxy  # the name the tests use: a proxy that forwards, cuts and shapes

__all__ = ["FaultProxy", "LinkProfile", "TcpProxy", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below Linux's ephemeral range, so no outgoing connection takes it while a server restarts."""
    for port in random.Random().sample(range(20000, 32000), 200):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")
