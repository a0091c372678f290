"""The TCP data plane on real sockets (127.0.0.1): framing, failures, listener, memory.

Every blocking call here is bounded (socket timeouts, join timeouts, call
timeouts) and pytest-timeout turns any hang into a failure; nothing waits by
sleeping.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
import pytest
from assertions import assert_same

from fastenv import codec
from fastenv.errors import (
    ConnectionLost,
    FastEnvTimeout,
    FrameTooLarge,
    ProtocolError,
    TransportError,
)
from fastenv.tcp import (
    DEFAULT_CHUNK_SIZE,
    MessageRejected,
    MessageStream,
    MissingDependency,
    TcpClientPlane,
    TcpDataListener,
    TcpServerWorker,
    connect_data_stream,
)
from fastenv.tcp import compression as tcp_compression
from fastenv.tcp import format as tcp_format
from fastenv.tcp.format import CALL, ENTRY, ERROR, FLAG_LAYOUT, FLAG_LAYOUT_DEF, HEADER, MAGIC, RESULT
from fastenv.tcp.handshake import HELLO
from fastenv.tcp.layouts import StreamDecoder, StreamEncoder

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
TOKEN = b"session-token-01"
T = 10.0  # bound on any wait that should succeed quickly


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


HAVE_LZ4 = _have("lz4.block")
HAVE_ZSTD = _have("zstandard")


# --------------------------------------------------------------------------- executor and fixtures


class Executor:
    """What the tests' workers run: echo, build values, fail in each way, block."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.stored = np.arange(1000, dtype=np.float64)

    def __call__(self, name: str, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        if name == "echo":
            return True, args[0]
        if name == "zeros":
            return True, np.zeros(args[0], np.uint8)
        if name == "stored":
            return True, self.stored
        if name == "step":
            obs = {"left": np.full((48, 64, 3), 7, np.uint8), "proprio": np.arange(20, dtype=np.float32)}
            return True, (obs, 1.5, False, False, {"frame": 3})
        if name == "fail":
            return False, {"kind": "remote", "type": "ValueError", "message": "boom", "traceback": "tb"}
        if name == "raise":
            raise KeyError("executor bug")
        if name == "unencodable":
            return True, object()
        if name == "block":
            self.entered.set()
            self.release.wait(T)
            return True, "released"
        return False, {"kind": "unknown_method", "type": "AttributeError", "message": name, "traceback": ""}


class Served:
    """A listener whose adopter starts a worker per connection (all remembered for teardown)."""

    def __init__(self, execute: Callable, **worker_kwargs: Any) -> None:
        self.execute = execute
        self.worker_kwargs = {"limits": codec.DEFAULT_LIMITS, "max_message_bytes": 1 << 31, **worker_kwargs}
        self.workers: list[TcpServerWorker] = []
        self.listener = TcpDataListener(HOST, on_connection=self._adopt)

    def _adopt(self, token: bytes, sock: socket.socket) -> bool:
        if token != TOKEN:
            return False
        worker = TcpServerWorker(sock, self.execute, **self.worker_kwargs)
        self.workers.append(worker)
        worker.start()
        return True

    def close(self) -> None:
        self.listener.close()
        for worker in self.workers:
            worker.stop(T)


@pytest.fixture
def executor() -> Iterator[Executor]:
    ex = Executor()
    yield ex
    ex.release.set()


@pytest.fixture
def tcp(executor: Executor) -> Iterator[Any]:
    """Factory: ``tcp.serve(**worker_kwargs)``, ``tcp.client(served, **plane_kwargs)``; all closed at teardown."""
    made: list[Any] = []

    class Factory:
        def serve(self, execute: Callable | None = None, **worker_kwargs: Any) -> Served:
            served = Served(execute or executor, **worker_kwargs)
            made.append(served)
            return served

        def client(self, served: Served, alive: Callable[[], None] = lambda: None, **kwargs: Any) -> TcpClientPlane:
            sock = connect_data_stream(HOST, served.listener.port, TOKEN, T)
            plane = TcpClientPlane(sock, alive, **kwargs)
            made.append(plane)
            return plane

        def adopt(self, thing: Any) -> Any:
            made.append(thing)
            return thing

    yield Factory()
    executor.release.set()
    for thing in reversed(made):
        thing.close()


@pytest.fixture
def fake_server() -> Iterator[Callable[[Callable[[socket.socket], None]], tuple[str, int]]]:
    """``fake_server(script)``: a raw listening socket whose one connection runs ``script(conn)`` in a thread."""
    made: list[tuple[socket.socket, threading.Thread]] = []
    errors: list[BaseException] = []

    def start(script: Callable[[socket.socket], None]) -> tuple[str, int]:
        listener = socket.create_server((HOST, 0))
        listener.settimeout(T)

        def run() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(T)
                try:
                    script(conn)
                except OSError:
                    pass  # the client hung up first: fine for these scripts
                except BaseException as exc:  # noqa: BLE001 - reported by the fixture
                    errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        made.append((listener, thread))
        return listener.getsockname()[:2]

    yield start
    for listener, thread in made:
        thread.join(T)
        listener.close()
        assert not thread.is_alive()
    if errors:
        raise errors[0]


def _plane_to(address: tuple[str, int], **kwargs: Any) -> TcpClientPlane:
    return TcpClientPlane(socket.create_connection(address, timeout=T), lambda: None, **kwargs)


def _read_call(conn: socket.socket) -> tcp_format.Message:
    """Read one message the way a server does (on a dup, so ``conn`` stays ours)."""
    dup = conn.dup()
    try:
        return MessageStream(dup).recv(deadline=time.monotonic() + T)
    finally:
        dup.close()  # close, not MessageStream.close(): a shutdown would cut ``conn`` too


def _frame(kind: int, seq: int, skeleton: bytes, entries: list[tuple[int, int, int]], flags: int = 0) -> bytes:
    head = HEADER.pack(MAGIC, kind, flags, 0, seq, len(skeleton), len(entries))
    return head + b"".join(ENTRY.pack(*e) for e in entries) + skeleton


def _recv_eof(sock: socket.socket) -> bool:
    """True when the peer closed ``sock`` (reads and discards until EOF, bounded by its timeout)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


# --------------------------------------------------------------------------- round trips


AWKWARD = {
    "fortran": np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)),
    "non_contiguous": np.arange(40, dtype=np.float64).reshape(5, 8)[::2, 1::3],
    "zero_strides": np.broadcast_to(np.arange(3, dtype=np.int32), (4, 3)),
    "transposed": np.arange(24, dtype=np.float32).reshape(2, 3, 4).transpose(2, 0, 1),
    "structured": np.array([(1.5, [1, 2]), (2.5, [3, 4])], dtype=[("x", "<f4"), ("y", "<i8", (2,))]),
    "zero_size": np.empty((0, 5), dtype=np.uint8),
    "zero_dim": np.array(3.5),
    "datetime": np.array(["2026-01-01", "2026-06-01"], dtype="datetime64[D]"),
    "big_endian": np.arange(4, dtype=">i4"),
    "complex": np.array([1 + 2j, -3j], dtype=np.complex64),
    "unicode": np.array(["a", "fastenv"]),
    "nan": np.array([np.nan, 1.0]),
    "16MB": np.random.default_rng(0).integers(0, 256, 16 * 1024 * 1024, dtype=np.uint8),
    "16MB_float_fortran": np.asfortranarray(np.random.default_rng(1).standard_normal((2048, 1024))),
    "step": (
        {"image": np.random.default_rng(2).integers(0, 255, (96, 128, 3), dtype=np.uint8), "v": np.float32(1.5)},
        -0.25,
        False,
        True,
        {"frame": 3, "nested": [np.int64(4), None, "text", b"\x00\xff", complex(1, -2)]},
    ),
    "containers": OrderedDict(a=(1, [2.5, {"k": frozenset({1, 2})}]), b={3, 4}, c=np.zeros(0)),
    "many_arrays": [np.full(i % 7, i, dtype=np.int32) for i in range(700)],  # > IOV batch of sendmsg
    "scalar": np.uint64(2**63),
    "none": None,
}


@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_awkward_values_round_trip(tcp: Any, name: str) -> None:
    plane = tcp.client(tcp.serve())
    ok, value = plane.call(("echo", (AWKWARD[name],), {}), T, "echo")
    assert ok
    assert_same(value, AWKWARD[name])


@pytest.mark.parametrize("chunk_size", [4096, 64 * 1024, DEFAULT_CHUNK_SIZE, 4 * 1024 * 1024])
def test_chunk_sizes_carry_the_same_bytes(tcp: Any, chunk_size: int) -> None:
    served = tcp.serve(chunk_size=chunk_size)
    plane = tcp.client(served, chunk_size=chunk_size)
    value = (AWKWARD["16MB"][: 3 * 1024 * 1024 + 17], np.arange(10))
    ok, out = plane.call(("echo", (value,), {}), T, "echo")
    assert ok
    assert_same(out, value)


def test_returned_arrays_are_writable_and_owned(tcp: Any, executor: Executor) -> None:
    plane = tcp.client(tcp.serve())
    first = plane.call(("stored", (), {}), T, "stored")[1]
    second = plane.call(("stored", (), {}), T, "stored")[1]
    assert first.flags.writeable and second.flags.writeable
    assert not np.shares_memory(first, second)
    assert not np.shares_memory(first, executor.stored)
    first[:] = -1  # ours to modify: nothing else changes
    assert np.array_equal(second, executor.stored)
    assert np.array_equal(plane.call(("stored", (), {}), T, "stored")[1], executor.stored)
    obs = plane.call(("step", (), {}), T, "step")[1][0]
    assert obs["left"].flags.writeable and obs["proprio"].flags.writeable


def test_recycled_receive_buffers_never_overwrite_arrays_still_held(tcp: Any) -> None:
    plane = tcp.client(tcp.serve())
    held = []
    for i in range(12):  # large enough to be pooled; distinct contents per call
        ok, value = plane.call(("echo", (np.full(200_000, i, np.uint8),), {}), T, "echo")
        assert ok
        if i % 3 == 0:
            held.append((i, value[10:]))  # a view keeps its buffer referenced too
    for i, view in held:
        assert (view == i).all(), f"the array of call {i} was overwritten"
    pool = plane._stream._pool
    assert 0 < pool.held_bytes <= pool.max_bytes <= 2 * (200_000 + 4096)


def test_steps_travel_through_layouts_after_the_first(tcp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sent_flags: list[int] = []
    original = MessageStream.send

    def recording(self: MessageStream, kind: int, *args: Any, **kwargs: Any) -> None:
        sent_flags.append(kwargs.get("flags", 0))
        original(self, kind, *args, **kwargs)

    monkeypatch.setattr(MessageStream, "send", recording)
    plane = tcp.client(tcp.serve())
    results = [plane.call(("step", (np.ones(20, np.float32),), {}), T, "step") for _ in range(4)]
    for ok, (obs, reward, terminated, truncated, info) in results:
        assert ok and obs["left"].shape == (48, 64, 3) and (obs["left"] == 7).all()
        assert (reward, terminated, truncated, info) == (1.5, False, False, {"frame": 3})
    assert sent_flags[:2] == [tcp_format.FLAG_LAYOUT_DEF, tcp_format.FLAG_LAYOUT_DEF]  # request, reply
    assert set(sent_flags[2:]) == {tcp_format.FLAG_LAYOUT}


def test_malformed_layout_messages_get_protocol_errors_in_sync(tcp: Any) -> None:
    served = tcp.serve()
    with connect_data_stream(HOST, served.listener.port, TOKEN, T) as sock:
        stream = MessageStream(sock)
        cases = [
            (b"\0" * 8, [], 3),  # layout 3 was never announced
            (codec.encode((1, ("bogus",), ("echo", (), {})))[0], [], 0),  # invalid spec in a definition
        ]
        for seq, (skeleton, bufs, layout_id) in enumerate(cases, start=1):
            flags = tcp_format.FLAG_LAYOUT if layout_id else tcp_format.FLAG_LAYOUT_DEF
            stream.send(CALL, seq, skeleton, bufs, deadline=time.monotonic() + T, flags=flags, layout_id=layout_id)
            reply = stream.recv(deadline=time.monotonic() + T)
            assert (reply.kind, reply.seq) == (ERROR, seq)
            assert codec.decode(reply.skeleton, reply.buffers)["kind"] == "protocol"
        good, buffers = codec.encode(("echo", ("ok",), {}))
        stream.send(CALL, 9, good, buffers, deadline=time.monotonic() + T)
        reply = stream.recv(deadline=time.monotonic() + T)
        assert reply.kind == RESULT
        stream.close()


def test_many_calls_keep_sequence(tcp: Any) -> None:
    plane = tcp.client(tcp.serve())
    for i in range(200):
        ok, value = plane.call(("echo", (i,), {}), T, "echo")
        assert ok and value == i


def test_two_sessions_are_independent(tcp: Any) -> None:
    served = tcp.serve()
    a, b = tcp.client(served), tcp.client(served)
    for i in range(20):
        assert a.call(("echo", (("a", i),), {}), T, "echo") == (True, ("a", i))
        assert b.call(("echo", (("b", i),), {}), T, "echo") == (True, ("b", i))
    assert len(served.workers) == 2


# --------------------------------------------------------------------------- error replies


def test_error_replies_and_the_stream_stays_usable(tcp: Any) -> None:
    plane = tcp.client(tcp.serve())
    assert plane.call(("fail", (), {}), T, "fail") == (
        False,
        {"kind": "remote", "type": "ValueError", "message": "boom", "traceback": "tb"},
    )
    ok, body = plane.call(("raise", (), {}), T, "raise")
    assert not ok and body["kind"] == "internal" and body["type"] == "KeyError" and "executor bug" in body["traceback"]
    ok, body = plane.call(("unencodable", (), {}), T, "unencodable")
    assert not ok and body["kind"] == "encode" and body["type"] == "fastenv.errors.EncodeError"  # qualified on every route
    assert plane.call(("echo", ("still fine",), {}), T, "echo") == (True, "still fine")
    assert plane.broken is None


def test_malformed_requests_in_sync_get_protocol_errors(tcp: Any) -> None:
    served = tcp.serve()
    with connect_data_stream(HOST, served.listener.port, TOKEN, T) as sock:
        stream = MessageStream(sock)
        good, buffers = codec.encode(("echo", ("ok",), {}))
        cases = [
            (CALL, codec.encode("not a call")[0], []),
            (CALL, b"\x80\x05garbage that is not a pickle", []),
            (CALL, codec.encode(("echo", (np.zeros(3),), {}))[0], []),  # array without its buffer
            (RESULT, good, buffers),  # a server-bound message of the wrong kind
        ]
        for seq, (kind, skeleton, bufs) in enumerate(cases, start=1):
            stream.send(kind, seq, skeleton, bufs, deadline=time.monotonic() + T)
            reply = stream.recv(deadline=time.monotonic() + T)
            assert (reply.kind, reply.seq) == (ERROR, seq)
            body = codec.decode(reply.skeleton, reply.buffers)
            assert body["kind"] == "protocol" and body["message"] and body["traceback"] == ""
        stream.send(CALL, 99, good, buffers, deadline=time.monotonic() + T)
        reply = stream.recv(deadline=time.monotonic() + T)
        assert (reply.kind, reply.seq) == (RESULT, 99)
        decoder = StreamDecoder(codec.DEFAULT_LIMITS)  # the reply may announce a layout
        assert decoder.decode(reply.skeleton, reply.buffers, reply.flags, reply.layout_id) == "ok"
        stream.close()


def test_garbage_closes_only_that_connection(tcp: Any) -> None:
    served = tcp.serve()
    sock = tcp.adopt(connect_data_stream(HOST, served.listener.port, TOKEN, T))
    sock.settimeout(T)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(100))
    assert _recv_eof(sock)
    assert served.workers[0].join(T)
    assert isinstance(served.workers[0].exit_reason, ProtocolError)
    plane = tcp.client(served)  # the server goes on serving others
    assert plane.call(("echo", (1,), {}), T, "echo") == (True, 1)


def test_request_over_the_server_limit_closes_the_connection(tcp: Any) -> None:
    served = tcp.serve(max_message_bytes=1 << 20)
    plane = tcp.client(served)
    with pytest.raises(ConnectionLost):
        plane.call(("echo", (np.zeros(4 << 20, np.uint8),), {}), T, "echo")
    assert served.workers[0].join(T)
    assert isinstance(served.workers[0].exit_reason, FrameTooLarge)
    with pytest.raises(ConnectionLost):
        plane.call(("echo", (1,), {}), None, "echo")


def test_a_call_refused_while_one_is_pending_announces_nothing(tcp: Any) -> None:
    """A refused send must not leave its layout recorded as announced: the next call would use an id
    the server never received."""
    plane = tcp.client(tcp.serve())
    deadline = time.monotonic() + T
    ticket = plane.send(("echo", (1,), {}), deadline, "echo")
    array_call = ("echo", (np.arange(3.0),), {})  # another structure: would define a new layout
    with pytest.raises(ProtocolError, match="still waiting"):
        plane.send(array_call, deadline, "echo")
    assert plane.receive(ticket, deadline, "echo") == (True, 1)
    for _ in range(3):  # the definition, then layout messages the server can read
        ok, value = plane.call(array_call, T, "echo")
        assert ok, value
        np.testing.assert_array_equal(value, np.arange(3.0))


def test_stream_encoder_forgets_a_definition_that_was_not_sent() -> None:
    encoder = StreamEncoder()
    body = ("step", (np.zeros(4, np.float32),), {})
    _, _, flags, _ = encoder.encode("step", body)
    assert flags == FLAG_LAYOUT_DEF
    encoder.refused("step", flags)
    _, _, flags, _ = encoder.encode("step", body)
    assert flags == FLAG_LAYOUT_DEF  # announced again, not referenced by an id the peer lacks
    encoder.refused("step", FLAG_LAYOUT)  # a refused layout message leaves the layout in place
    assert encoder.encode("step", body)[2] == FLAG_LAYOUT


def test_request_over_the_client_limit_is_refused_before_sending(tcp: Any) -> None:
    plane = tcp.client(tcp.serve(), max_message_bytes=1 << 20)
    with pytest.raises(FrameTooLarge):
        plane.call(("echo", (np.zeros(2 << 20, np.uint8),), {}), T, "echo")
    assert plane.broken is None
    assert plane.call(("echo", (2,), {}), T, "echo") == (True, 2)


def test_reply_over_the_server_limit_becomes_an_error_reply(tcp: Any) -> None:
    plane = tcp.client(tcp.serve(max_message_bytes=1 << 20))
    ok, body = plane.call(("zeros", (2 << 20,), {}), T, "zeros")
    assert not ok and body["kind"] == "encode" and body["type"].endswith("FrameTooLarge")
    assert plane.call(("echo", (3,), {}), T, "echo") == (True, 3)


# --------------------------------------------------------------------------- broken streams


def _reply_header_then(conn: socket.socket, array_bytes: int, sent: int) -> None:
    """Answer the call with a valid header announcing ``array_bytes``, then send ``sent`` of them."""
    msg = _read_call(conn)
    skeleton, _ = codec.encode(np.zeros(array_bytes, np.uint8))
    conn.sendall(_frame(RESULT, msg.seq, skeleton, [(0, array_bytes, array_bytes)]) + bytes(sent))


def test_truncated_reply_raises_connection_lost_and_returns_nothing(fake_server: Any) -> None:
    address = fake_server(lambda conn: _reply_header_then(conn, 1 << 20, 1000))
    with _plane_to(address) as plane:
        with pytest.raises(ConnectionLost, match="middle of a message"):
            plane.call(("echo", (1,), {}), T, "echo")
        assert isinstance(plane.broken, ConnectionLost)
        with pytest.raises(ConnectionLost, match="earlier failure"):
            plane.call(("echo", (1,), {}), None, "echo")


def test_reset_mid_array_raises_connection_lost(fake_server: Any) -> None:
    def script(conn: socket.socket) -> None:
        _reply_header_then(conn, 8 << 20, 256 * 1024)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close -> RST

    address = fake_server(script)
    with _plane_to(address) as plane:
        with pytest.raises(ConnectionLost):
            plane.call(("echo", (1,), {}), T, "echo")
        with pytest.raises(ConnectionLost):
            plane.call(("echo", (1,), {}), None, "echo")


@pytest.mark.parametrize(
    "entries, skeleton_len, count",
    [
        ([(0, 1 << 40, 1 << 40)], 10, None),  # a 1 TiB array
        ([(0, 600_000, 600_000), (0, 600_000, 600_000)], 10, None),  # together over the limit
        ([], 1 << 31, None),  # a 2 GiB skeleton
        ([], 10, 1 << 30),  # a billion buffers
    ],
)
def test_oversized_declaration_raises_before_allocating(
    fake_server: Any, entries: list, skeleton_len: int, count: int | None
) -> None:
    def script(conn: socket.socket) -> None:
        msg = _read_call(conn)
        head = HEADER.pack(MAGIC, RESULT, 0, 0, msg.seq, skeleton_len, len(entries) if count is None else count)
        conn.sendall(head + b"".join(ENTRY.pack(*e) for e in entries))
        _recv_eof(conn)

    address = fake_server(script)
    with _plane_to(address, max_message_bytes=1 << 20) as plane:
        tracemalloc.start()
        try:
            with pytest.raises(FrameTooLarge):
                plane.call(("echo", (1,), {}), T, "echo")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 512 * 1024  # nothing of the declared size was allocated
        with pytest.raises(ConnectionLost):
            plane.call(("echo", (1,), {}), None, "echo")


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
        HEADER.pack(b"XXXX", RESULT, 0, 0, 1, 0, 0),
        HEADER.pack(MAGIC, 77, 0, 0, 1, 0, 0),  # unknown kind
        HEADER.pack(MAGIC, RESULT, 0x80, 0, 1, 0, 0),  # unknown flag
        HEADER.pack(MAGIC, CALL, 0, 0, 1, 0, 0),  # a CALL sent to the client
        HEADER.pack(MAGIC, RESULT, 0, 0, 12345, 0, 0),  # the wrong sequence number
        _frame(RESULT, 1, b"", [(9, 10, 10)]),  # unknown codec
        _frame(RESULT, 1, b"", [(0, 10, 11)]),  # raw buffer with a different wire length
        _frame(RESULT, 1, b"", [(1, 10, 10)]),  # "compressed" to no smaller size
        _frame(RESULT, 1, b"", [(1, 10, 5)]),  # compressed buffer without the header flag
    ],
)
def test_garbage_replies_raise_protocol_error(fake_server: Any, reply: bytes) -> None:
    def script(conn: socket.socket) -> None:
        _read_call(conn)
        conn.sendall(reply + bytes(64))
        _recv_eof(conn)

    address = fake_server(script)
    with _plane_to(address) as plane:
        with pytest.raises(ProtocolError):
            plane.call(("echo", (1,), {}), T, "echo")
        with pytest.raises(ConnectionLost):
            plane.call(("echo", (1,), {}), None, "echo")


def test_peer_closing_between_calls_raises_connection_lost(tcp: Any) -> None:
    served = tcp.serve()
    plane = tcp.client(served)
    assert plane.call(("echo", (1,), {}), T, "echo") == (True, 1)
    served.workers[0].stop(T)
    with pytest.raises(ConnectionLost):
        plane.call(("echo", (1,), {}), T, "echo")


SERVER_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from fastenv import codec
    from fastenv.tcp import TcpDataListener, TcpServerWorker

    def execute(name, args, kwargs):
        if name == "hang":
            print("executing", flush=True)
            threading.Event().wait()
        return True, args[0]

    def adopt(token, sock):
        TcpServerWorker(sock, execute, limits=codec.DEFAULT_LIMITS, max_message_bytes=1 << 31).start()
        return True

    with TcpDataListener("127.0.0.1", on_connection=adopt) as listener:
        print(listener.port, flush=True)
        sys.stdin.read()
    """
)


def test_server_process_killed_during_a_call(tcp: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        port = int(proc.stdout.readline())
        plane = tcp.adopt(TcpClientPlane(connect_data_stream(HOST, port, TOKEN, T), lambda: None))
        big = np.arange(1 << 20, dtype=np.float64)
        assert_same(plane.call(("echo", (big,), {}), T, "echo")[1], big)

        def kill_when_executing() -> None:
            proc.stdout.readline()
            proc.kill()

        killer = threading.Thread(target=kill_when_executing, daemon=True)
        killer.start()
        with pytest.raises(ConnectionLost):
            plane.call(("hang", (0,), {}), None, "hang")
        killer.join(T)
    finally:
        proc.kill()
        proc.wait(T)
        proc.stdin.close()
        proc.stdout.close()


# --------------------------------------------------------------------------- timeouts and liveness


def test_timeout_raises_and_later_calls_fail_fast(tcp: Any, executor: Executor) -> None:
    plane = tcp.client(tcp.serve())
    started = time.monotonic()
    with pytest.raises(FastEnvTimeout, match="block"):
        plane.call(("block", (), {}), 0.2, "block")
    assert time.monotonic() - started < T
    assert isinstance(plane.broken, FastEnvTimeout)
    with pytest.raises(ConnectionLost):  # no wait at all, even without a timeout
        plane.call(("echo", (1,), {}), None, "echo")


def test_alive_check_ends_a_wait_for_a_dead_server(tcp: Any, executor: Executor) -> None:
    calls = []

    def alive() -> None:
        calls.append(1)
        if executor.entered.is_set():
            raise ConnectionLost("control channel: the server is gone")

    plane = tcp.client(tcp.serve(), alive=alive)
    with pytest.raises(ConnectionLost, match="server is gone"):
        plane.call(("block", (), {}), None, "block")
    assert calls
    with pytest.raises(ConnectionLost):
        plane.call(("echo", (1,), {}), None, "echo")


def test_send_to_a_peer_that_does_not_read_times_out(fake_server: Any) -> None:
    done = threading.Event()
    address = fake_server(lambda conn: done.wait(T))  # accepts, never reads
    with _plane_to(address) as plane:
        try:
            with pytest.raises(FastEnvTimeout):
                plane.call(("echo", (np.zeros(256 << 20, np.uint8),), {}), 0.3, "echo")
            with pytest.raises(ConnectionLost):
                plane.call(("echo", (1,), {}), None, "echo")
        finally:
            done.set()


def test_worker_aborts_a_client_that_stops_reading(tcp: Any) -> None:
    served = tcp.serve(io_timeout=0.3)
    sock = tcp.adopt(connect_data_stream(HOST, served.listener.port, TOKEN, T))
    stream = MessageStream(sock)
    skeleton, buffers = codec.encode(("zeros", (256 << 20,), {}))
    stream.send(CALL, 1, skeleton, buffers, deadline=time.monotonic() + T)
    # ...and never read the 256 MB reply: the worker must give up, not buffer it.
    assert served.workers[0].join(T)
    assert isinstance(served.workers[0].exit_reason, FastEnvTimeout)


def test_worker_stops_promptly_while_idle_and_client_vanishing_is_quiet(
    tcp: Any, caplog: pytest.LogCaptureFixture
) -> None:
    served = tcp.serve()
    plane = tcp.client(served)
    assert plane.call(("echo", (1,), {}), T, "echo") == (True, 1)
    with caplog.at_level(logging.WARNING, logger="fastenv.tcp"):
        plane.close()
        assert served.workers[0].join(T)
    assert not caplog.records
    other = tcp.client(served)
    served.workers[1].stop(T)
    assert not served.workers[1].is_alive()
    with pytest.raises(ConnectionLost):
        other.call(("echo", (1,), {}), T, "echo")


def test_stop_before_start_closes_the_socket() -> None:
    a, b = socket.socketpair()
    with b:
        worker = TcpServerWorker(a, lambda *x: (True, None), limits=codec.DEFAULT_LIMITS, max_message_bytes=1 << 20)
        worker.stop(T)
        assert a.fileno() == -1


# --------------------------------------------------------------------------- listener


def _hello(token: bytes = TOKEN) -> bytes:
    return HELLO + token


def test_listener_survives_garbage_slow_and_abandoned_connections(tcp: Any) -> None:
    served = tcp.serve()
    served.listener.close()
    served.listener = TcpDataListener(HOST, on_connection=served._adopt, accept_timeout=0.5)
    port = served.listener.port
    slow = tcp.adopt(socket.create_connection((HOST, port), timeout=T))
    slow.sendall(HELLO[:3])  # ...and stalls
    silent = tcp.adopt(socket.create_connection((HOST, port), timeout=T))
    garbage = tcp.adopt(socket.create_connection((HOST, port), timeout=T))
    garbage.sendall(b"\x16\x03\x01" + os.urandom(200))  # a TLS hello, say
    socket.create_connection((HOST, port), timeout=T).close()  # abandoned
    # A real client gets through while the slow one is still pending.
    plane = tcp.client(served)
    assert plane.call(("echo", ("through",), {}), T, "echo") == (True, "through")
    assert _recv_eof(garbage)
    assert _recv_eof(slow)  # dropped after accept_timeout
    assert _recv_eof(silent)
    plane2 = tcp.client(served)
    assert plane2.call(("echo", (2,), {}), T, "echo") == (True, 2)
    assert served.listener.accepted == 2


def test_wrong_token_refused_and_failing_adopter_survived(tcp: Any) -> None:
    served = tcp.serve()
    with pytest.raises(ConnectionLost, match="refused"):
        connect_data_stream(HOST, served.listener.port, b"x" * 16, T)

    def boom(token: bytes, sock: socket.socket) -> bool:
        raise ValueError("adopter bug")

    with TcpDataListener(HOST, on_connection=boom) as listener:
        with pytest.raises(ConnectionLost):
            connect_data_stream(HOST, listener.port, TOKEN, T)
        with pytest.raises(ConnectionLost):
            connect_data_stream(HOST, listener.port, TOKEN, T)
    plane = tcp.client(served)
    assert plane.call(("echo", (1,), {}), T, "echo") == (True, 1)


def test_listener_drops_the_oldest_pending_beyond_its_limit(tcp: Any) -> None:
    adopted = []
    listener = tcp.adopt(TcpDataListener(HOST, on_connection=lambda t, s: adopted.append(s) or True, max_pending=4))
    idle = [tcp.adopt(socket.create_connection((HOST, listener.port), timeout=T)) for _ in range(6)]
    assert _recv_eof(idle[0])  # the oldest went first
    sock = connect_data_stream(HOST, listener.port, TOKEN, T)
    sock.close()
    for s in adopted:
        s.close()


def test_connect_to_nothing_raises_transport_error() -> None:
    with socket.create_server((HOST, 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(TransportError):
        connect_data_stream(HOST, port, TOKEN, T)


def test_listener_close_is_idempotent_and_port_is_reported() -> None:
    listener = TcpDataListener(HOST, on_connection=lambda t, s: False)
    assert listener.address == (HOST, listener.port) and listener.port > 0
    listener.close()
    listener.close()
    with pytest.raises(OSError):
        socket.create_connection((HOST, listener.port), timeout=T).close()


# --------------------------------------------------------------------------- compression


CODECS = [
    pytest.param("lz4", marks=pytest.mark.skipif(not HAVE_LZ4, reason='lz4 not installed (pip install "fastenv[compress]")')),
    pytest.param("zstd", marks=pytest.mark.skipif(not HAVE_ZSTD, reason="zstandard not installed (pip install zstandard)")),
]


def _wire_entries(value: Any, compression: str) -> list[tuple[int, int, int]]:
    """The buffer table a stream with ``compression`` writes for ``value`` (the rest is drained)."""
    a, b = socket.socketpair()
    with a, b:
        stream = MessageStream(a, compression=compression)
        skeleton, buffers = codec.encode(value)
        writer = threading.Thread(target=stream.send, args=(RESULT, 1, skeleton, buffers), daemon=True)
        writer.start()
        b.settimeout(T)
        head = b.recv(HEADER.size, socket.MSG_WAITALL)
        skeleton_len, count = HEADER.unpack(head)[5:]
        table = b.recv(count * ENTRY.size, socket.MSG_WAITALL)
        entries = [ENTRY.unpack_from(table, i * ENTRY.size) for i in range(count)]
        left = skeleton_len + sum(wire for _, _, wire in entries)
        while left:
            left -= len(b.recv(min(left, 1 << 20)))
        writer.join(T)
        assert not writer.is_alive()
    return entries


@pytest.mark.parametrize("compression", CODECS)
def test_compression_round_trip_both_ways(tcp: Any, compression: str) -> None:
    served = tcp.serve(compression=compression)
    plane = tcp.client(served, compression=compression)
    rng = np.random.default_rng(3)
    value = {
        "zeros": np.zeros((480, 640, 3), np.uint8),
        "noise": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
        "small": np.zeros(10, np.float32),
        "ramp": np.tile(np.arange(256, dtype=np.uint8), 4096),
    }
    for _ in range(3):
        ok, out = plane.call(("echo", (value,), {}), T, "echo")
        assert ok
        assert_same(out, value)
        assert out["zeros"].flags.writeable
    entries = _wire_entries(value, compression)
    codec_id = tcp_compression.CODEC_IDS[compression]
    assert entries[0][0] == codec_id and entries[0][2] < entries[0][1] // 50  # zeros shrink
    assert entries[1][0] == tcp_compression.RAW  # incompressible: sent raw
    assert entries[2][0] == tcp_compression.RAW  # below the threshold
    assert entries[3][0] == codec_id


@pytest.mark.parametrize("compression", CODECS)
def test_corrupt_compressed_buffer_is_rejected_in_sync(compression: str) -> None:
    codec_id = tcp_compression.CODEC_IDS[compression]
    a, b = socket.socketpair()
    with a, b:
        reader = MessageStream(b)
        skeleton, _ = codec.encode(np.zeros(100_000, np.uint8))
        bad = _frame(RESULT, 5, skeleton, [(codec_id, 100_000, 64)], flags=tcp_format.FLAG_COMPRESSED) + os.urandom(64)
        a.sendall(bad)
        with pytest.raises(MessageRejected) as info:
            reader.recv(deadline=time.monotonic() + T)
        assert info.value.seq == 5
        assert reader.broken is None  # in sync: the next message reads fine
        a.sendall(_frame(RESULT, 6, codec.encode("next")[0], []))
        assert codec.decode(reader.recv(deadline=time.monotonic() + T).skeleton) == "next"
        reader.close()


def test_missing_codec_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lz4", None)
    monkeypatch.setitem(sys.modules, "lz4.block", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    for name in ("lz4", "zstd", True):
        with pytest.raises(MissingDependency, match=r"fastenv\[compress\]"):
            tcp_compression.resolve_compression(name)
    with pytest.raises(ValueError):
        tcp_compression.resolve_compression("gzip")
    assert tcp_compression.resolve_compression(None) is None


# --------------------------------------------------------------------------- framing details


def test_small_message_is_one_send_and_large_one_is_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    with b:
        stream = MessageStream(a, chunk_size=64 * 1024)
        sends: list[int] = []
        real_send, real_sendmsg = a.send, a.sendmsg

        class Spy:
            def __getattr__(self, name: str) -> Any:
                return getattr(a, name)

            def send(self, data: Any) -> int:
                sends.append(memoryview(data).nbytes)
                return real_send(data)

            def sendmsg(self, buffers: list) -> int:
                total = sum(memoryview(x).nbytes for x in buffers)
                assert total <= 64 * 1024
                sends.append(total)
                return real_sendmsg(buffers)

        stream.sock = Spy()  # type: ignore[assignment]
        skeleton, buffers = codec.encode((np.arange(4, dtype=np.float32), 1.0, False, False, {}))
        stream.send(RESULT, 1, skeleton, buffers)
        assert len(sends) == 1
        b.settimeout(T)
        reader = MessageStream(b)
        assert codec.decode((m := reader.recv(deadline=time.monotonic() + T)).skeleton, m.buffers)[1] == 1.0
        sends.clear()
        big = np.arange(1 << 20, dtype=np.uint8)
        skeleton, buffers = codec.encode(big)
        writer = threading.Thread(target=stream.send, args=(RESULT, 2, skeleton, buffers), daemon=True)
        writer.start()
        m = reader.recv(deadline=time.monotonic() + T)
        writer.join(T)
        assert np.array_equal(codec.decode(m.skeleton, m.buffers), big)
        assert len(sends) >= (1 << 20) // (64 * 1024)
        stream.sock = a
        stream.close()
        reader.close()


def test_chunk_size_below_minimum_is_refused() -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError):
        MessageStream(a, chunk_size=100)


# --------------------------------------------------------------------------- memory


def test_memory_stays_bounded_over_many_large_round_trips(tcp: Any) -> None:
    size = 8 * 1024 * 1024
    plane = tcp.client(tcp.serve())
    observation = np.random.default_rng(4).integers(0, 256, size, dtype=np.uint8)
    process = psutil.Process()
    for _ in range(5):  # warm up allocator arenas
        ok, out = plane.call(("echo", (observation,), {}), T, "echo")
    del out
    gc.collect()
    baseline = process.memory_info().rss
    peak = baseline
    for i in range(300):
        ok, out = plane.call(("echo", (observation,), {}), T, "echo")
        assert ok and out.nbytes == size
        if i % 10 == 0:
            assert out[i] == observation[i]
        peak = max(peak, process.memory_info().rss)
    growth = peak - baseline
    assert growth < 3 * size + 50 * 1024 * 1024, f"RSS grew by {growth / 1e6:.0f} MB"
