"""Fuzzing: the decoder, and a live `fastenv serve` process through every socket it opens.

Each case is bounded: every wait has a timeout, and an alarm fails a case
that runs longer than :data:`CASE_TIMEOUT_S` as a hang. After each live case
the server must still answer a normal client, be alive, and have logged no
internal error.

CI runs a short, deterministic pass (``FASTENV_FUZZ_EXAMPLES``, default 60
examples per test, derandomized, no example database). A long run (hours;
``--timeout 0`` lifts the suite's per-test limit, the per-case alarm stays)::

    FASTENV_FUZZ_EXAMPLES=20000 ./dev test tests/test_fuzz.py --timeout 0

Add ``FASTENV_FUZZ_SEED=<n>`` to explore other cases than CI's derandomized ones.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastenv
from fastenv import codec, protocol
from fastenv.control.auth import AuthConfig, keygen
from fastenv.errors import FastEnvError
from fastenv.protocol import Kind
from fastenv.server_process import ServerProcess
from fastenv.tcp import compression as tcp_compression
from fastenv.tcp import format as tcp_format
from fastenv.tcp.handshake import HELLO as DATA_HELLO
from fastenv.tcp.handshake import connect_data_stream
from tests.hostile import (
    hello,
    raw_connection,
    raw_dealer,
    reply_to,
    split_address,
    zmtp_ready_dealer,
)

EXAMPLES = int(os.environ.get("FASTENV_FUZZ_EXAMPLES", "60"))
CASE_TIMEOUT_S = 20.0  # a case (send, then prove the server still answers) that takes longer is a hang
REPLY_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 1 << 20

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="FASTENV_FUZZ_SEED" not in os.environ,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
fuzz_seed = seed(int(os.environ["FASTENV_FUZZ_SEED"])) if "FASTENV_FUZZ_SEED" in os.environ else (lambda test: test)


class CaseTimeout(AssertionError):
    """A fuzz case ran past :data:`CASE_TIMEOUT_S`: something hangs."""


@contextlib.contextmanager
def bounded_case() -> Iterator[None]:
    """Fail a case that runs longer than :data:`CASE_TIMEOUT_S` (an alarm interrupts it).

    The suite's own per-test alarm (pytest-timeout), if set, is put back with the time it had left.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"a fuzz case ran past {CASE_TIMEOUT_S:g}s: the server (or the decoder) hangs")

    start = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, interrupt)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:
            left = max(0.001, previous_delay - (time.monotonic() - start))
            signal.setitimer(signal.ITIMER_REAL, left, previous_interval)


# ---------------------------------------------------------------- strategies

atoms = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16)
    | st.binary(max_size=32)
)
plain_dtypes = st.sampled_from(["<f8", "<f4", "|u1", "<i8", "|b1", "<c16", "<M8[ns]", "|S3", "<U2"]).map(np.dtype)
arrays = hnp.arrays(plain_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
values = st.recursive(
    atoms | arrays,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=4)
    ),
    max_leaves=16,
)

dtype_specs = (
    st.sampled_from(
        ["<f8", "|u1", "<i4", "|b1", "V0", "S0", "|V8", "O", "|O", "f8,f8", "<U3", "<M8", "(2,)f8", "<m8[s]"]
    )
    | st.text(max_size=8)
    | st.lists(st.tuples(st.text(max_size=3), st.sampled_from(["<f8", "|u1", "O", "V0", ""])), max_size=3)
    | st.integers()
    | st.binary(max_size=8)
)
shapes = (
    st.lists(st.integers(min_value=-2, max_value=2**40), max_size=5).map(tuple)
    | st.lists(st.integers(min_value=0, max_value=3), max_size=70).map(tuple)
    | atoms
)
tags = st.integers(min_value=-1, max_value=11)


def _tagged(children: st.SearchStrategy) -> st.SearchStrategy:
    return (
        st.tuples(tags, st.lists(children, max_size=4))
        | st.tuples(tags, children)
        | st.tuples(tags)
        | st.tuples(
            st.just(codec.ARRAY),
            st.integers(min_value=-1, max_value=3) | atoms,
            dtype_specs,
            shapes,
            st.sampled_from(["C", "F", "A", 0]),
        )
        | st.tuples(st.just(codec.SCALAR), dtype_specs, st.binary(max_size=16) | atoms)
        | st.tuples(st.just(codec.COMPLEX), children, children)
        | st.tuples(st.just(codec.EXT), st.sampled_from([*codec.registered_types(), "nope"]) | atoms, children)
    )


hostile_trees = st.recursive(atoms, lambda children: st.lists(children, max_size=4) | _tagged(children), max_leaves=24)
limits = st.builds(
    codec.Limits,
    max_depth=st.integers(min_value=1, max_value=64),
    max_skeleton_bytes=st.integers(min_value=16, max_value=1 << 20),
    max_array_bytes=st.integers(min_value=0, max_value=1 << 20),
    max_array_elements=st.integers(min_value=0, max_value=1 << 20),
)
buffers = st.lists(st.binary(max_size=64), max_size=3)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few random byte flips, insertions, deletions or a truncation."""
    out = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(min_value=0, max_value=max(0, len(out))))
        if op == "flip" and out:
            at = min(at, len(out) - 1)
            out[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[at : at + draw(st.integers(min_value=1, max_value=8))]
        else:
            del out[at:]
    return bytes(out)


def _decode_only_typed_errors(skeleton: bytes, bufs: list[bytes], lim: codec.Limits = codec.DEFAULT_LIMITS) -> None:
    with bounded_case():
        try:
            codec.decode(skeleton, bufs, limits=lim)
        except FastEnvError:
            pass  # the only way the decoder may fail


# ---------------------------------------------------------------- the decoder


@FUZZ
@fuzz_seed
@given(skeleton=st.binary(max_size=512) | st.binary(max_size=512).map(lambda b: b"\x80\x05" + b), bufs=buffers)
def test_decoder_random_bytes(skeleton: bytes, bufs: list[bytes]) -> None:
    _decode_only_typed_errors(skeleton, bufs)


@FUZZ
@fuzz_seed
@given(data=st.data(), value=values)
def test_decoder_mutated_valid_payloads(data: st.DataObject, value: Any) -> None:
    skeleton, raw = codec.encode(value)
    bufs = [bytes(memoryview(b).cast("B")) for b in raw]
    _decode_only_typed_errors(data.draw(mutated(skeleton)), bufs)
    if bufs:
        index = data.draw(st.integers(min_value=0, max_value=len(bufs) - 1))
        bufs[index] = data.draw(mutated(bufs[index]))
        _decode_only_typed_errors(skeleton, bufs)


@FUZZ
@fuzz_seed
@given(tree=hostile_trees, bufs=buffers, lim=limits)
def test_decoder_hostile_trees(tree: Any, bufs: list[bytes], lim: codec.Limits) -> None:
    _decode_only_typed_errors(pickle.dumps(tree, protocol=5), bufs, lim)


@FUZZ
@fuzz_seed
@given(value=values)
def test_decoder_round_trips_what_the_encoder_makes(value: Any) -> None:
    skeleton, raw = codec.encode(value)
    back = codec.decode(skeleton, [bytes(memoryview(b).cast("B")) for b in raw])
    assert codec.encode(back)[0] == skeleton


def test_decoder_refuses_an_amplification_bomb_at_once() -> None:
    bomb: list = [0]
    for _ in range(60):  # 2**60 leaves in a 1 KiB pickle: each level holds the one below twice
        bomb = [bomb, bomb]
    with bounded_case(), pytest.raises(fastenv.DecodeError, match="expands"):
        codec.decode(pickle.dumps(bomb, protocol=5))


# ---------------------------------------------------------------- a live server


LIVE_ARGS = [
        "--mode", "per-client",
        "--max-message-bytes", str(MAX_MESSAGE_BYTES),
        "--heartbeat-interval", "0.5",
        "--attach-grace", "2",
        "--max-pending", "16",
]  # fmt: skip


@pytest.fixture(scope="module")
def live() -> Iterator[ServerProcess]:
    """One per-client server for the whole module (each fuzz session gets its own env)."""
    with ServerProcess("fastenv.examples:VectorEnv", LIVE_ARGS) as server:
        yield server
        assert server.process is not None and server.process.poll() is None, server.output()


@pytest.fixture(scope="module")
def live_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, AuthConfig]]:
    """The same server with authentication, and a client's keys."""
    keys = tmp_path_factory.mktemp("keys")
    keygen(keys)
    with ServerProcess("fastenv.examples:VectorEnv", [*LIVE_ARGS, "--auth", str(keys)]) as server:
        yield server, AuthConfig.for_client(keys)
        assert server.process is not None and server.process.poll() is None, server.output()


def _serves(server: ServerProcess, auth: AuthConfig | None = None) -> None:
    """The server is alive, answers a normal client, and has logged no internal error."""
    assert server.process is not None and server.process.poll() is None, f"the server died:\n{server.output()}"
    assert "Traceback" not in server.output(), f"the server hit an internal error:\n{server.output()}"
    with fastenv.FastRemoteEnv(
        server.address, timeout=REPLY_TIMEOUT_S, connect_timeout=REPLY_TIMEOUT_S, auth=auth
    ) as env:
        env.ping(timeout=REPLY_TIMEOUT_S)


def _barrier(sock: zmq.Socket) -> None:
    """Every message sent on ``sock`` before this has been handled (the server answers in order per client)."""
    request_id = 0xFEED_FACE
    sock.send_multipart(protocol.pack(Kind.PING, request_id))
    reply_to(sock, request_id, REPLY_TIMEOUT_S)  # PONG, or TooManyPending if the case filled the queue


def _send_all(
    server: ServerProcess, messages: list[list[bytes]], session: bool, auth: AuthConfig | None = None
) -> None:
    with bounded_case():
        with raw_dealer(server.address, auth, timeout=REPLY_TIMEOUT_S) as sock:
            if session:
                hello(sock, transport="tcp")
            for frames in messages:
                sock.send_multipart(frames)
            _barrier(sock)
        _serves(server, auth)


kinds = st.sampled_from([Kind.HELLO, Kind.CALL, Kind.ATTACH, Kind.RESUME, Kind.PING, Kind.BYE])
method_names = st.sampled_from(
    ["reset", "step", "get_state", "set_state", "render", "close", "__getattr__", "__lease__", "__batch_step__",
     "observation_space", "_rng", "nope", ""]
) | st.text(max_size=8)  # fmt: skip
call_bodies = st.tuples(
    method_names, st.lists(values, max_size=3).map(tuple), st.dictionaries(st.text(max_size=6), values, max_size=3)
)
session_bodies = st.fixed_dictionaries(
    {},
    optional={
        "transport": st.sampled_from(["auto", "tcp", "shm", "carrier pigeon"]) | atoms,
        "role": st.sampled_from(["shared", "controller", "observer", "king"]) | atoms,
        "compression": st.sampled_from([None, "lz4", "zstd", "rot13"]) | atoms,
        "host": st.dictionaries(st.text(max_size=8), atoms, max_size=3) | atoms,
        "vector": atoms,
        "factory": st.binary(max_size=64) | atoms,
        "session": st.text(max_size=16) | atoms,
        "token": st.binary(max_size=16) | atoms,
        "nonce": st.binary(max_size=16) | atoms,
    },
)
bodies = call_bodies | session_bodies | values


def _message(kind: int, request_id: int, body: Any) -> list[bytes]:
    return [bytes(memoryview(frame).cast("B")) for frame in protocol.pack(kind, request_id, body)]


valid_messages = st.builds(_message, kinds, st.integers(min_value=1, max_value=2**64 - 1), bodies)


@FUZZ
@fuzz_seed
@given(messages=st.lists(st.lists(st.binary(max_size=256), min_size=1, max_size=4), min_size=1, max_size=6))
def test_live_random_frames(live: ServerProcess, messages: list[list[bytes]]) -> None:
    _send_all(live, messages, session=False)


@st.composite
def corrupted_headers(draw: st.DrawFn) -> list[bytes]:
    frames = draw(valid_messages)
    head = bytearray(frames[0])
    field = draw(st.sampled_from(["magic", "version", "kind", "request id", "truncate", "skeleton", "frames"]))
    if field == "magic":
        head[0:2] = draw(st.binary(min_size=2, max_size=2))
    elif field == "version":
        head[2] = draw(st.integers(min_value=0, max_value=255))
    elif field == "kind":
        head[3] = draw(st.integers(min_value=0, max_value=255))
    elif field == "request id":
        head[4:12] = struct.pack("<Q", draw(st.integers(min_value=0, max_value=2**64 - 1)))
    elif field == "truncate":
        del head[draw(st.integers(min_value=0, max_value=protocol.HEADER_SIZE)) :]
    elif field == "skeleton":
        head = bytearray(head[: protocol.HEADER_SIZE] + draw(mutated(bytes(head[protocol.HEADER_SIZE :]))))
    else:  # buffers dropped, added, or cut short (a truncated multipart message)
        extra = draw(st.lists(st.binary(max_size=64), max_size=2))
        keep = draw(st.integers(min_value=0, max_value=len(frames) - 1))
        return [bytes(head), *frames[1 : 1 + keep], *extra]
    return [bytes(head), *frames[1:]]


@FUZZ
@fuzz_seed
@given(messages=st.lists(corrupted_headers(), min_size=1, max_size=6), session=st.booleans())
def test_live_valid_frames_with_corrupted_fields(
    live: ServerProcess, messages: list[list[bytes]], session: bool
) -> None:
    _send_all(live, messages, session)


@FUZZ
@fuzz_seed
@given(messages=st.lists(valid_messages, min_size=1, max_size=6), session=st.booleans())
def test_live_valid_frames_with_hostile_bodies(live: ServerProcess, messages: list[list[bytes]], session: bool) -> None:
    _send_all(live, messages, session)


@FUZZ
@fuzz_seed
@given(messages=st.lists(valid_messages | corrupted_headers(), min_size=1, max_size=6), session=st.booleans())
def test_live_authenticated_client_sending_garbage(
    live_auth: tuple[ServerProcess, AuthConfig], messages: list[list[bytes]], session: bool
) -> None:
    """An authorized key is no licence to crash the server (or to ship code: no --allow-trusted here)."""
    server, auth = live_auth
    _send_all(server, messages, session, auth)


_SCRIPT = [
    (Kind.CALL, ("reset", (), {"seed": 1})),
    (Kind.CALL, ("step", (np.zeros(4, np.float32),), {})),
    (Kind.CALL, ("get_state", (), {})),
    (Kind.ATTACH, {"transport": "tcp"}),
    (Kind.RESUME, {"session": "0" * 16, "token": b"\x00" * 16}),
    (Kind.CALL, ("__lease__", ("acquire",), {})),
    (Kind.HELLO, {"fastenv": "test", "transport": "tcp"}),
    (Kind.BYE, None),
]


@FUZZ
@fuzz_seed
@given(
    order=st.permutations(range(len(_SCRIPT))),
    replays=st.lists(st.integers(min_value=0, max_value=len(_SCRIPT) - 1), max_size=6),
    ids=st.lists(st.integers(min_value=1, max_value=12), min_size=len(_SCRIPT), max_size=len(_SCRIPT)),
)
def test_live_replayed_and_reordered_frames(
    live: ServerProcess, order: list[int], replays: list[int], ids: list[int]
) -> None:
    """A session's own messages out of order, with repeated and stale request ids."""
    messages = [_message(_SCRIPT[i][0], ids[i], _SCRIPT[i][1]) for i in order]
    messages += [messages[i] for i in replays]  # replays: byte-for-byte copies of earlier messages
    _send_all(live, messages, session=True)


def _data_message(kind: int, seq: int, value: Any) -> bytes:
    skeleton, raw = codec.encode(value)
    parts = [bytes(memoryview(b).cast("B")) for b in raw]
    table = b"".join(tcp_format.ENTRY.pack(tcp_compression.RAW, len(p), len(p)) for p in parts)
    return (
        tcp_format.HEADER.pack(tcp_format.MAGIC, kind, 0, 0, seq, len(skeleton), len(parts))
        + table
        + skeleton
        + b"".join(parts)
    )


@st.composite
def data_stream_bytes(draw: st.DrawFn) -> bytes:
    """Bytes for a session's adopted data stream: valid calls, corrupted headers or bodies, or noise."""
    kind = draw(st.sampled_from([tcp_format.CALL, tcp_format.RESULT, tcp_format.ERROR, 0, 9]))
    message = _data_message(kind, draw(st.integers(min_value=0, max_value=2**64 - 1)), draw(call_bodies | values))
    how = draw(st.sampled_from(["valid", "mutated", "header", "noise", "cut"]))
    if how == "mutated":
        return draw(mutated(message))
    if how == "header":
        head = bytearray(message[: tcp_format.HEADER.size])
        at = draw(st.integers(min_value=0, max_value=tcp_format.HEADER.size - 1))
        head[at] ^= draw(st.integers(min_value=1, max_value=255))
        return bytes(head) + message[tcp_format.HEADER.size :]
    if how == "noise":
        return draw(st.binary(max_size=256))
    if how == "cut":
        return message[: draw(st.integers(min_value=0, max_value=len(message)))]
    return message


@FUZZ
@fuzz_seed
@given(chunks=st.lists(data_stream_bytes(), min_size=1, max_size=4))
def test_live_data_stream_with_corrupted_messages(live: ServerProcess, chunks: list[bytes]) -> None:
    host, _ = split_address(live.address)
    with bounded_case():
        with raw_dealer(live.address, timeout=REPLY_TIMEOUT_S) as sock:
            offer = hello(sock, transport="tcp")["tcp"]
            with connect_data_stream(host, offer["port"], offer["token"], REPLY_TIMEOUT_S) as stream:
                stream.settimeout(0.05)
                for chunk in chunks:
                    try:
                        stream.sendall(chunk)
                        stream.recv(65536)  # a reply, an abort, or nothing yet: all fine
                    except TimeoutError:
                        continue
                    except OSError:  # the server aborted the stream
                        break
            _barrier(sock)
        _serves(live)


_GREETING = zmtp_ready_dealer()


@FUZZ
@fuzz_seed
@given(
    opened=st.lists(
        st.tuples(
            st.sampled_from(["control", "data"]),
            st.integers(min_value=0, max_value=len(_GREETING)),
            st.integers(min_value=0, max_value=len(DATA_HELLO) + 16),
            st.binary(max_size=16),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_live_half_open_connections(live: ServerProcess, opened: list[tuple[str, int, int, bytes]]) -> None:
    """Connections that stop halfway through a handshake stay open while a normal client is served."""
    host, port = split_address(live.address)
    with raw_dealer(live.address, timeout=REPLY_TIMEOUT_S) as sock:
        data_port = hello(sock, transport="tcp")["tcp"]["port"]
    with bounded_case(), contextlib.ExitStack() as held:
        for which, greeting_part, preamble_part, tail in opened:
            if which == "control":
                payload = _GREETING[:greeting_part] + (tail if greeting_part == len(_GREETING) else b"")
                held.enter_context(raw_connection(host, port, payload))
            else:
                payload = (DATA_HELLO + tail)[:preamble_part]
                held.enter_context(raw_connection(host, data_port, payload))
        _serves(live)  # while they hang there
    _serves(live)
