"""Raw clients for the hostile-input tests and the fuzz suite: they speak (or mangle) the wire format by hand."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import zmq

import fastenv
from fastenv import protocol
from fastenv.control.auth import AuthConfig
from fastenv.protocol import Kind


class Touch:
    """Unpickling it runs ``touch PATH``: the side effect every "nothing executes" test checks for."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def header(kind: int, request_id: int = 1, version: int = protocol.PROTOCOL_VERSION) -> bytes:
    """A fastenv message header (frame 0 before the skeleton)."""
    return protocol.HEADER.pack(protocol.MAGIC, version, kind, request_id)


def split_address(address: str) -> tuple[str, int]:
    """``tcp://host:port`` -> ``(host, port)``."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def raw_dealer(address: str, auth: AuthConfig | None = None, timeout: float = 5.0) -> Iterator[zmq.Socket]:
    """A bare DEALER connected to ``address`` (with CURVE keys when ``auth``); receives time out."""
    with zmq.Context.instance().socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        if auth is not None:
            auth.configure_client(sock)
        sock.connect(address)
        yield sock


def reply(sock: zmq.Socket) -> protocol.Message:
    """The next reply, skipping the server's liveness probes (PONG with request id 0)."""
    while True:
        message = protocol.unpack(sock.recv_multipart())
        if not (message.kind is Kind.PONG and message.request_id == 0):
            return message


def reply_to(sock: zmq.Socket, request_id: int, timeout: float) -> protocol.Message:
    """The reply carrying ``request_id``, dropping others; ``zmq.Again`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not sock.poll(int(remaining * 1000)):
            raise zmq.Again()
        frames = sock.recv_multipart()
        try:
            message = protocol.unpack(frames)
        except fastenv.ProtocolError:
            continue
        if message.request_id == request_id:
            return message


def hello(sock: zmq.Socket, **fields: object) -> dict:
    """HELLO on ``sock``; returns the WELCOME body."""
    sock.send_multipart(protocol.pack(Kind.HELLO, 1, {"fastenv": "test", **fields}))
    message = reply(sock)
    assert message.kind is Kind.WELCOME, message.body()
    return message.body()


def zmtp_ready_dealer() -> bytes:
    """The bytes of a ZMTP 3.0 greeting (NULL mechanism) and READY command of a DEALER."""
    greeting = b"\xff" + b"\x00" * 7 + b"\x01\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    prop = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    body = b"\x05READY" + prop
    return greeting + b"\x04" + bytes([len(body)]) + body


def raw_connection(host: str, port: int, payload: bytes = b"", timeout: float = 5.0) -> socket.socket:
    """A plain TCP connection that sends ``payload`` and then says nothing (the caller closes it)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    if payload:
        sock.sendall(payload)
    return sock


__all__ = [
    "Touch",
    "header",
    "hello",
    "raw_connection",
    "raw_dealer",
    "reply",
    "reply_to",
    "split_address",
    "zmtp_ready_dealer",
]
