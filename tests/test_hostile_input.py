"""Bad input gets a typed error or is dropped; nothing executes; the server keeps serving.

Also: each configured limit gives the offending client a typed error and
nobody else, and connections opened and abandoned by the thousand leave the
server's file descriptors, memory and shared-memory segments where they were.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import zmq

import fastenv
from fastenv import codec, protocol
from fastenv.control.auth import AuthConfig, keygen
from fastenv.control.inbox import Inbox
from fastenv.errors import FrameTooLarge, NestingTooDeep, ServerBusy, TooManyPending
from fastenv.protocol import Kind
from fastenv.wire import error_from_body
from fastenv.shm.arena import list_segments, segment_owner
from fastenv.tcp.format import CALL
from fastenv.tcp.framing import MessageStream
from fastenv.tcp.handshake import HELLO as DATA_HELLO
from fastenv.tcp.handshake import connect_data_stream
from tests.hostile import Touch as _Touch
from tests.hostile import header as _header
from tests.hostile import hello as _hello_fields
from tests.hostile import raw_connection, raw_dealer, split_address, zmtp_ready_dealer
from tests.hostile import reply as _reply

TARGET = "fastenv.examples:VectorEnv"
COUNTER = f"{Path(__file__).parent / 'envs' / 'session_envs.py'}:Counter"
T = 20.0  # bound on every blocking call


@pytest.fixture
def server(serve):
    return serve(TARGET, "--max-message-bytes", str(1 << 20))


@pytest.fixture
def dealer(server):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(server.address)
    yield sock
    sock.close()


def _still_serves(server, auth: AuthConfig | Path | None = None) -> None:
    assert server.process.poll() is None, server.output()
    with fastenv.FastRemoteEnv(server.address, timeout=10, auth=auth) as env:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,)


def _hello(sock: zmq.Socket) -> None:
    _hello_fields(sock)


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


def _evil_skeletons(evil: _Touch) -> dict[str, bytes]:
    """Skeletons with a code-running pickle in each place a field can be."""
    T_, D_, A_, S_, E_ = codec.TUPLE, codec.DICT, codec.ARRAY, codec.SCALAR, codec.EXT
    return {
        "whole body": pickle.dumps(evil),
        "plain-pickle field": pickle.dumps(("step", (evil,), {})),
        "method name": pickle.dumps((T_, [evil, (T_, []), (D_, [])])),
        "argument": pickle.dumps((T_, ["step", (T_, [evil]), (D_, [])])),
        "keyword name": pickle.dumps((T_, ["reset", (T_, []), (D_, [evil, 1])])),
        "keyword value": pickle.dumps((T_, ["reset", (T_, []), (D_, ["options", evil])])),
        "array dtype": pickle.dumps((T_, ["step", (T_, [(A_, 0, [("f", evil)], (1,), "C")]), (D_, [])])),
        "scalar dtype": pickle.dumps((T_, ["step", (T_, [(S_, evil, b"\x00" * 8)]), (D_, [])])),
        "registered type": pickle.dumps((T_, ["step", (T_, [(E_, "gymnasium.spaces.Box", evil)]), (D_, [])])),
    }


@pytest.mark.parametrize("authenticated", [False, True], ids=["no-auth", "auth"])
def test_malicious_pickle_in_any_field_never_executes(serve, tmp_path: Path, authenticated: bool) -> None:
    marker = tmp_path / "pwned"
    evil = _Touch(marker)
    auth = None
    args: list[str] = []
    if authenticated:
        keygen(tmp_path / "keys")
        auth = AuthConfig.for_client(tmp_path / "keys")
        args = ["--auth", str(tmp_path / "keys")]
    server = serve(TARGET, *args)
    skeletons = _evil_skeletons(evil)
    with raw_dealer(server.address, auth) as sock:
        for field in ("whole body", "plain-pickle field"):  # a HELLO that carries it
            sock.send_multipart([_header(Kind.HELLO) + skeletons[field]])
            reply = _reply(sock)
            assert reply.kind is Kind.ERROR and "refused" in reply.body()["message"], field
        # the trusted-mode field: the server (no --allow-trusted) never loads it
        sock.send_multipart(protocol.pack(Kind.HELLO, 1, {"fastenv": "test", "factory": pickle.dumps(evil)}))
        reply = _reply(sock)
        assert reply.kind is Kind.ERROR and reply.body()["kind"] == "trusted"
        welcome = _hello_fields(sock, transport="tcp")
        for request_id, (field, skeleton) in enumerate(skeletons.items(), start=2):
            for kind in (Kind.CALL, Kind.ATTACH, Kind.RESUME):
                sock.send_multipart([_header(kind, request_id) + skeleton])
                reply = _reply(sock)
                assert reply.kind is Kind.ERROR, (field, kind)
                assert "refused" in reply.body()["message"], (field, kind, reply.body())
        # raw array buffers are never unpickled: a pickle there is just bytes
        blob = pickle.dumps(evil)
        call = (codec.TUPLE, ["get_state", (codec.TUPLE, [(codec.ARRAY, 0, "|u1", (len(blob),), "C")]), (codec.DICT, [])])
        sock.send_multipart([_header(Kind.CALL, 99) + pickle.dumps(call), blob])
        assert _reply(sock).kind is Kind.ERROR  # get_state takes no argument: the env says so
        if not authenticated:  # the raw TCP data stream (a server with auth has none)
            host, _ = split_address(server.address)
            stream = MessageStream(connect_data_stream(host, welcome["tcp"]["port"], welcome["tcp"]["token"], T))
            try:
                for seq, skeleton in enumerate(skeletons.values(), start=1):
                    stream.send(CALL, seq, skeleton, [], deadline=time.monotonic() + T)
                    answer = stream.recv(deadline=time.monotonic() + T)
                    body = codec.decode(answer.skeleton, answer.buffers)
                    assert "refused" in body["message"], body
            finally:
                stream.close()
    assert not marker.exists()
    _still_serves(server, auth)


def test_arrays_declaring_more_than_they_carry(server, dealer) -> None:
    _hello(dealer)
    skeleton = pickle.dumps(
        (codec.TUPLE, ["step", (codec.TUPLE, [(codec.ARRAY, 0, "<f8", (1 << 40,), "C")]), (codec.DICT, [])])
    )
    dealer.send_multipart([_header(Kind.CALL, 3) + skeleton, b"\x00" * 16])
    reply = _reply(dealer)
    assert reply.kind is Kind.ERROR
    body = reply.body()
    assert body["kind"] == "limit" and body["type"].endswith("FrameTooLarge")
    _still_serves(server)


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_oversize_message_is_refused_before_sending(server, transport: str) -> None:
    """The client learns the server's frame limit in the handshake and refuses to send more."""
    with fastenv.FastRemoteEnv(server.address, timeout=5, transport=transport) as bully:
        with pytest.raises(FrameTooLarge, match="limit"):
            bully.step(np.zeros(1 << 20, dtype=np.float64))  # 8 MB > the 1 MB limit
        bully.reset(seed=0)  # the session itself is fine
    _still_serves(server)


def test_oversize_frame_from_a_raw_peer_drops_only_that_peer(server, dealer) -> None:
    dealer.setsockopt(zmq.RCVTIMEO, 1000)
    dealer.send_multipart([_header(Kind.PING), b"\x00" * (2 << 20)])  # 2 MB > the 1 MB limit: ZeroMQ hangs up
    with pytest.raises(zmq.Again):
        _reply(dealer)
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


def _hung_up_within(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes ``sock`` (EOF or reset) within ``timeout`` seconds, reading what it sends."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:  # reset
            return True


JUNK_THAT_STAYS_OPEN = {
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "text": b"hello\n",
    "binary": bytes(range(1, 200)),
    "short": b"\x01\x00",
}


@pytest.mark.parametrize("port_kind", ["control", "observer"])
def test_junk_that_stays_open_is_hung_up_on_at_once(serve, port_kind: str) -> None:
    # Not a ZMTP 3 greeting: libzmq would take each for a ZMTP 1.0 peer and keep it for good.
    server = serve(COUNTER)
    host, port = split_address(server.address)
    if port_kind == "observer":
        with raw_dealer(server.address) as sock:
            port = _hello_fields(sock)["observe"]["port"]
    with contextlib.ExitStack() as held:
        junk = {name: held.enter_context(raw_connection(host, port, payload)) for name, payload in JUNK_THAT_STAYS_OPEN.items()}
        # well inside the handshake timeout (10 s), which only drops silent connections
        kept = [name for name, sock in junk.items() if not _hung_up_within(sock, 3.0)]
        assert not kept, f"the server kept junk connections open: {kept}"
    _still_serves(server)


def test_zmtp_frame_declaring_a_huge_size(server) -> None:
    host, port = server.address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.settimeout(5)
        raw.sendall(zmtp_ready_dealer())
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


# ---------------------------------------------------------------- limits


def test_inbox_serves_clients_in_turn_and_bounds_each() -> None:
    inbox = Inbox(max_pending=3)
    assert all(inbox.put(b"flood", n) for n in range(3))
    assert not inbox.put(b"flood", 3)  # the fourth waiting request of one client is refused
    assert inbox.put(b"quiet", "q")
    assert [inbox.pop() for _ in range(4)] == [0, "q", 1, 2]  # the quiet client is not stuck behind the flood
    assert inbox.pop() is None and not inbox


def test_max_sessions_refuses_with_server_busy_and_others_go_on(serve) -> None:
    server = serve(TARGET, "--max-sessions", "2")
    with fastenv.FastRemoteEnv(server.address, timeout=T) as first, fastenv.FastRemoteEnv(server.address, timeout=T) as second:
        with pytest.raises(ServerBusy, match="max_sessions"):
            fastenv.FastRemoteEnv(server.address, timeout=T)
        first.reset(seed=0)
        second.reset(seed=0)
    with fastenv.FastRemoteEnv(server.address, timeout=T) as third:  # the closed sessions freed their places
        third.reset(seed=0)


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_decoder_limits_are_typed_errors_to_that_client(serve, transport: str) -> None:
    server = serve(TARGET, "--max-depth", "8", "--max-array-elements", "1000")
    nested: object = 0.0
    for _ in range(20):
        nested = [nested]
    with (
        fastenv.FastRemoteEnv(server.address, transport=transport, timeout=T) as offender,
        fastenv.FastRemoteEnv(server.address, transport=transport, timeout=T) as bystander,
    ):
        with pytest.raises(NestingTooDeep, match="limit of 8"):
            offender.step(nested)
        with pytest.raises(FrameTooLarge, match="1000"):
            offender.step(np.zeros(2000, np.float32))
        offender.reset(seed=0)  # the offender's session goes on
        offender.step(np.zeros(4, np.float32))
        bystander.reset(seed=0)
        bystander.step(np.zeros(4, np.float32))


def test_max_pending_refuses_a_flooding_client_only(serve) -> None:
    max_pending, flood = 4, 50
    server = serve(COUNTER, "--mode", "per-client", "--max-pending", str(max_pending))
    with (
        fastenv.FastRemoteEnv(server.address, transport="shm", timeout=T) as bystander,
        raw_dealer(server.address, timeout=T) as sock,
    ):
        _hello_fields(sock, transport="tcp")
        sock.send_multipart(protocol.pack(Kind.CALL, 2, ("step", ("slow:0.5",), {})))
        for request_id in range(3, 3 + flood):
            sock.send_multipart(protocol.pack(Kind.CALL, request_id, ("step", (0,), {})))
        # while the control loop runs the slow call, a client on its own data plane is served
        assert bystander.step(1)[0][0] == 1.0
        replies = [_reply(sock) for _ in range(flood + 1)]
        assert sorted(r.request_id for r in replies) == list(range(2, 3 + flood))  # every request answered once
        refused = [r for r in replies if r.kind is Kind.ERROR]
        done = [r for r in replies if r.kind is Kind.RESULT]
        assert refused and len(done) <= max_pending + 1
        for message in refused:
            assert isinstance(error_from_body(message.body()), TooManyPending)
        sock.send_multipart(protocol.pack(Kind.PING, 1000))  # the flooder itself is served again
        assert _reply(sock).kind is Kind.PONG
        assert bystander.step(1)[0][0] == 2.0


# ---------------------------------------------------------------- abandoned connections


def _usage(pid: int) -> tuple[int, int, int]:
    """Open file descriptors, resident memory and shared-memory segments of process ``pid``."""
    process = psutil.Process(pid)
    segments = sum(1 for path in list_segments() if segment_owner(path.name) == pid)
    return process.num_fds(), process.memory_info().rss, segments


def _abandon(address: str, data_port: int, count: int) -> None:
    """Open ``count`` connections of eight abandoning kinds at once, then drop them all without a goodbye."""
    host, port = split_address(address)
    partial_greeting = zmtp_ready_dealer()[:11]
    greeting_and_half_a_frame = zmtp_ready_dealer() + b"\x02" + struct.pack(">Q", 1 << 20) + b"\x00" * 100
    with contextlib.ExitStack() as held:
        for index in range(count):
            kind = index % 8
            if kind == 0:  # a control connection that never says a word
                held.enter_context(raw_connection(host, port))
            elif kind == 1:  # half a ZMTP greeting
                held.enter_context(raw_connection(host, port, partial_greeting))
            elif kind == 2:  # a greeting, then half of a 1 MiB frame
                held.enter_context(raw_connection(host, port, greeting_and_half_a_frame))
            elif kind in (3, 4, 7):  # a client that opens a session (kind 7: and its data stream), then vanishes
                sock = held.enter_context(raw_dealer(address, timeout=T))
                fields = {"transport": "tcp"} if kind == 7 else {}
                if kind == 4:  # HELLO, and gone before the answer
                    sock.send_multipart(protocol.pack(Kind.HELLO, 1, {"fastenv": "test"}))
                    continue
                welcome = _hello_fields(sock, **fields)
                if kind == 7:
                    offer = welcome["tcp"]
                    held.enter_context(connect_data_stream(host, offer["port"], offer["token"], T))
            elif kind == 5:  # a data connection that never sends its preamble
                held.enter_context(raw_connection(host, data_port))
            else:  # half a data-stream preamble
                held.enter_context(raw_connection(host, data_port, DATA_HELLO + b"\x00" * 5))


def _settles(measure: Callable[[], tuple[int, int, int]], limit: tuple[int, int, int], timeout: float) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        now = measure()
        if all(value <= bound for value, bound in zip(now, limit)) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


@pytest.mark.slow
def test_a_thousand_abandoned_connections_leave_no_trace(serve) -> None:
    server = serve(TARGET, "--heartbeat-interval", "0.25", "--attach-grace", "1", "--max-sessions", "1024")
    with raw_dealer(server.address, timeout=T) as sock:
        data_port = _hello_fields(sock, transport="tcp")["tcp"]["port"]
    _abandon(server.address, data_port, 200)  # warm up: allocator pools, ZeroMQ's I/O thread, caches
    fds, rss, segments = _settles(lambda: _usage(server.pid), (10**9, 10**12, 0), timeout=30)
    for _ in range(5):  # 1,000 connections, 200 open at a time
        _abandon(server.address, data_port, 200)
    slack_fds, slack_rss = 4, 8 << 20  # a small constant: nothing may grow with the number of connections
    after = _settles(lambda: _usage(server.pid), (fds + slack_fds, rss + slack_rss, segments), timeout=30)
    assert after[0] <= fds + slack_fds, f"file descriptors: {fds} before, {after[0]} after"
    assert after[1] <= rss + slack_rss, f"resident memory: {rss >> 20} MiB before, {after[1] >> 20} MiB after"
    assert after[2] <= segments, f"shared-memory segments: {segments} before, {after[2]} after"
    _still_serves(server)
