"""Bad input gets a typed error or is dropped; nothing executes; the server keeps serving."""

from __future__ import annotations

import os
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import zmq

import fastenv
from fastenv import codec, protocol
from fastenv.errors import ConnectionLost, FastEnvTimeout, FrameTooLarge
from fastenv.protocol import Kind


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _header(kind: int, request_id: int = 1, version: int = protocol.PROTOCOL_VERSION) -> bytes:
    return protocol.HEADER.pack(protocol.MAGIC, version, kind, request_id)


@pytest.fixture
def server(serve):
    return serve("fastenv.examples:VectorEnv", "--max-message-bytes", str(1 << 20))


@pytest.fixture
def dealer(server):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(server.address)
    yield sock
    sock.close()


def _still_serves(server) -> None:
    assert server.process.poll() is None, server.output()
    with fastenv.FastRemoteEnv(server.address, timeout=10) as env:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,)


def _reply(sock: zmq.Socket) -> protocol.Message:
    return protocol.unpack(sock.recv_multipart())


def _hello(sock: zmq.Socket) -> None:
    sock.send_multipart(protocol.pack(Kind.HELLO, 1, {"fastenv": "test"}))
    assert _reply(sock).kind is Kind.WELCOME


@pytest.mark.parametrize(
    "frames",
    [
        [b""],
        [b"\x00"],
        [b"FE"],  # truncated header
        [b"XX" + b"\x00" * 10],  # bad magic
        [_header(200)],  # unknown kind
        [_header(Kind.WELCOME)],  # a server-only kind
        [_header(Kind.HELLO) + b"\x80\x05garbage"],
        [_header(Kind.HELLO) + pickle.dumps([1, 2])],  # HELLO body not a dict
        [_header(Kind.CALL) + pickle.dumps(("step", (), {}))],  # CALL before HELLO
        [os.urandom(64), os.urandom(1000)],
    ],
    ids=lambda f: repr(f[0][:12]),
)
def test_malformed_frames_get_error_replies(server, dealer, frames) -> None:
    dealer.send_multipart(frames)
    reply = _reply(dealer)
    assert reply.kind is Kind.ERROR
    body = reply.body()
    assert body["kind"] in ("protocol", "no_session")
    _still_serves(server)


def test_other_protocol_version_is_told_in_words(server, dealer) -> None:
    dealer.send_multipart([_header(Kind.HELLO, version=7) + b"anything a future version sends"])
    reply = _reply(dealer)
    assert reply.kind is Kind.VERSION_MISMATCH
    assert "protocol v1" in protocol.text_of(reply)


def test_malicious_pickles_never_execute(server, dealer, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        _header(Kind.HELLO) + pickle.dumps(_Touch(marker)),
        _header(Kind.HELLO) + pickle.dumps({"fastenv": _Touch(marker)}),
    ]
    for payload in payloads:
        dealer.send_multipart([payload])
        reply = _reply(dealer)
        assert reply.kind is Kind.ERROR and "refused" in reply.body()["message"]
    _hello(dealer)
    for call in (
        pickle.dumps(_Touch(marker)),
        pickle.dumps(("step", (_Touch(marker),), {})),
        pickle.dumps((codec.TUPLE, ["step", (codec.TUPLE, [_Touch(marker)]), (codec.DICT, [])])),
    ):
        dealer.send_multipart([_header(Kind.CALL, 2) + call])
        reply = _reply(dealer)
        assert reply.kind is Kind.ERROR and "refused" in reply.body()["message"]
    assert not marker.exists()
    _still_serves(server)


def test_arrays_declaring_more_than_they_carry(server, dealer) -> None:
    _hello(dealer)
    skeleton = pickle.dumps(
        (codec.TUPLE, ["step", (codec.TUPLE, [(codec.ARRAY, 0, "<f8", (1 << 40,), "C")]), (codec.DICT, [])])
    )
    dealer.send_multipart([_header(Kind.CALL, 3) + skeleton, b"\x00" * 16])
    reply = _reply(dealer)
    assert reply.kind is Kind.ERROR and reply.body()["kind"] == "protocol"
    _still_serves(server)


def test_oversize_message_over_tcp_drops_only_that_client(server) -> None:
    with fastenv.FastRemoteEnv(server.address, timeout=5, transport="tcp") as bully:
        with pytest.raises((ConnectionLost, FastEnvTimeout)):
            bully.step(np.zeros(1 << 20, dtype=np.float64))  # 8 MB > the 1 MB limit
    _still_serves(server)


def test_oversize_message_over_shm_is_refused_with_a_typed_error(server) -> None:
    with fastenv.FastRemoteEnv(server.address, timeout=5, transport="shm") as bully:
        with pytest.raises(FrameTooLarge, match="limit"):
            bully.step(np.zeros(1 << 20, dtype=np.float64))  # 8 MB > the 1 MB limit
        bully.reset(seed=0)  # the session itself is fine
    _still_serves(server)


def test_random_bytes_on_the_raw_port(server) -> None:
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    for blob in (os.urandom(4096), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" * 100_000):
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            try:
                raw.sendall(blob)
                raw.settimeout(5)
                raw.recv(1024)  # the server answers with its greeting or hangs up; either is fine
            except OSError:
                pass
    _still_serves(server)


def _zmtp_ready_dealer() -> bytes:
    greeting = b"\xff" + b"\x00" * 7 + b"\x01\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
    prop = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    body = b"\x05READY" + prop
    return greeting + b"\x04" + bytes([len(body)]) + body


def test_zmtp_frame_declaring_a_huge_size(server) -> None:
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.settimeout(5)
        raw.sendall(_zmtp_ready_dealer())
        raw.sendall(b"\x02" + struct.pack(">Q", 1 << 62) + b"\x00" * 1024)  # a long frame of 4 EiB
        try:
            while raw.recv(65536):  # the server must hang up on us (EOF), not allocate or wait
                pass
        except ConnectionResetError:
            pass
    _still_serves(server)


def test_unknown_compression_is_refused_at_hello(server, dealer) -> None:
    dealer.send_multipart(protocol.pack(Kind.HELLO, 1, {"fastenv": "test", "compression": "rot13"}))
    reply = _reply(dealer)
    assert reply.kind is Kind.ERROR and "unknown compression" in reply.body()["message"]
    _still_serves(server)
