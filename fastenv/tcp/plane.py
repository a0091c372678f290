"""The TCP data plane: calls and replies on a raw TCP stream beside the control channel.

The client opens one extra TCP connection per session with
:func:`connect_data_stream`, which sends a preamble (:data:`HELLO` + the
session token) and waits for the server's one-byte acknowledgement. The
server's :class:`TcpDataListener` reads preambles without blocking on any one
connection and hands each socket to ``on_connection(token, sock)``, which binds
it to its session (a :class:`TcpServerWorker`).

Then, one call at a time: the client sends a CALL (the codec's skeleton and
raw array buffers, see :mod:`fastenv.tcp.framing`), the worker executes it and
answers RESULT or ERROR with the same sequence number; arrays land in buffers
nobody else references through ``recv_into`` (fresh, or recycled once every
array built on them is gone, see :mod:`fastenv.tcp.pool`), so the client owns
them: writable, and never overwritten while it holds them. From the second
call of a kind on, calls and replies travel as compiled layouts
(:mod:`fastenv.tcp.layouts`).

Bounded memory and backpressure: neither side queues anything. The worker
reads the next request only after the previous reply went out, and sends
with blocking writes: when the client stops reading, the kernel's socket
buffers fill and the worker blocks, up to ``io_timeout`` of no progress, then
aborts the connection. So each side holds at most the message it is sending
plus the one it is receiving (their arrays, and compressed copies when
compression is on) and a 64 KiB staging buffer, however many steps run.

Security: the session token is the stream's only credential and the stream
is not encrypted, so a server started with authentication (CURVE keys) does
not open this listener at all: its clients' calls travel on the encrypted
control connection instead (see :mod:`fastenv.server`).

Failures: every wait is sliced (:data:`~fastenv.tcp.framing.WAIT_SLICE_S`) so
the client's ``alive()`` check and the worker's stop flag are seen within
~50 ms; a call that times out, or any error in the middle of a message,
aborts the stream (never retried), and later calls raise
:class:`~fastenv.errors.ConnectionLost` at once.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

from fastenv import codec
from fastenv.replay import ReplyRecord, StaleRequest
from fastenv.errors import (
    ConnectionLost,
    EncodeError,
    FastEnvTimeout,
    ProtocolError,
    TransportError,
)
from fastenv.tcp.framing import (
    CALL,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_MESSAGE_BYTES,
    ERROR,
    KIND_NAMES,
    RESULT,
    MessageRejected,
    MessageStream,
)
from fastenv.tcp.layouts import StreamDecoder, StreamEncoder
from fastenv.wire import ErrorKind, error_body, parse_call

log = logging.getLogger("fastenv.tcp")

HELLO = b"FEdata01"  # preamble of a data connection, followed by the session token
ACK = b"\x06"  # the listener's answer once a session adopted the connection
NAK = b"\x15"  # its answer to a token no session holds (then it hangs up)
DEFAULT_TOKEN_SIZE = 16
DEFAULT_ACCEPT_TIMEOUT_S = 5.0
DEFAULT_IO_TIMEOUT_S = 30.0
MAX_PENDING = 128

# Executes one call; returns (True, value) or (False, error body).
Executor = Callable[[str, tuple, dict], tuple[bool, Any]]


class StreamRefused(ConnectionLost):
    """The server answered a data stream's preamble with :data:`NAK`: no session holds that token."""


class _Stopped(Exception):
    """Raised inside the worker's waits when stop() was called."""


def _open_stream(
    sock: socket.socket, chunk_size: int, compression: str | bool | None, max_message_bytes: int
) -> MessageStream:
    """Wrap ``sock`` in a :class:`MessageStream`, closing the socket if that fails (the caller owns it)."""
    try:
        return MessageStream(sock, chunk_size=chunk_size, compression=compression, max_message_bytes=max_message_bytes)
    except BaseException:
        sock.close()
        raise


class TcpClientPlane:
    """The client's end of a session's TCP data stream.

    Args:
        sock: the connected socket from :func:`connect_data_stream` (owned from now on).
        alive: called when a wait slice passes without data; raises if the
            control channel knows the server is gone.
        chunk_size: most bytes per ``sendmsg`` / ``recv_into``.
        compression: None (default), True (lz4), "lz4" or "zstd" for requests.
        max_message_bytes: largest reply accepted and request sent.
        limits: decoder limits applied to replies.
        first_seq: the sequence number of the last call made on this session's
            earlier streams: numbers keep counting across reconnections, so the
            server recognises a call re-sent after a drop (see :mod:`fastenv.replay`).
    """

    def __init__(
        self,
        sock: socket.socket,
        alive: Callable[[], None],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compression: str | bool | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        limits: codec.Limits = codec.DEFAULT_LIMITS,
        first_seq: int = 0,
    ) -> None:
        self._stream = _open_stream(sock, chunk_size, compression, max_message_bytes)
        self._alive = alive
        self._limits = limits
        self._encoder = StreamEncoder()
        self._decoder = StreamDecoder(limits)
        self._seq = first_seq
        self.pending_seq: int | None = None  # the call sent and not yet answered, if any
        self._lock = threading.Lock()
        self._closed = False

    def call(self, body: Any, timeout: float | None, what: str) -> tuple[bool, Any]:
        """Send a CALL body; returns ``(True, result)`` or ``(False, error body)``.

        Raises :class:`FastEnvTimeout` when no reply came within ``timeout``
        seconds and :class:`ConnectionLost` when the stream broke (now or in
        an earlier call); after either, the stream is unusable.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        return self.exchange(body, deadline, what)

    def exchange(self, body: Any, deadline: float | None, what: str) -> tuple[bool, Any]:
        """:meth:`send` then :meth:`receive` (``deadline`` on the monotonic clock)."""
        return self.receive(self.send(body, deadline, what), deadline, what)

    def send(self, body: Any, deadline: float | None, what: str) -> int:
        """Send a CALL body without waiting for its reply; returns its sequence number."""
        with self._lock:
            if self.pending_seq is not None and self._stream.broken is None:
                raise ProtocolError(f"{what}: call {self.pending_seq} is still waiting for its reply")
            skeleton, buffers, flags, layout_id = self._encoder.encode(body[0], body)
            self._seq = (self._seq + 1) & 0xFFFFFFFFFFFFFFFF
            seq = self.pending_seq = self._seq
            try:
                self._stream.send(
                    CALL, seq, skeleton, buffers, deadline=deadline, alive=self._alive, label=what,
                    flags=flags, layout_id=layout_id,
                )
            except ProtocolError:
                if self._stream.broken is None:  # refused before anything was sent (too large)
                    self.pending_seq = None
                    self._seq = (seq - 1) & 0xFFFFFFFFFFFFFFFF
                    self._encoder.refused(body[0], flags)
                raise
        return seq

    def receive(self, seq: int, deadline: float | None, what: str) -> tuple[bool, Any]:
        """Wait for the reply to call ``seq``; ``(True, result)`` or ``(False, error body)``."""
        stream = self._stream
        with self._lock:
            try:
                reply = stream.recv(deadline=deadline, alive=self._alive, label=what)
            except MessageRejected as exc:
                if exc.seq != seq:
                    stream._abort(exc)
                else:
                    self.pending_seq = None
                raise
            if reply.seq != seq:
                exc = ProtocolError(f"{what}: reply to call {reply.seq} received while waiting for call {seq}")
                stream._abort(exc)
                raise exc
            if reply.kind not in (RESULT, ERROR):
                exc = ProtocolError(f"{what}: unexpected {KIND_NAMES[reply.kind]} message from the server")
                stream._abort(exc)
                raise exc
            self.pending_seq = None
            value = self._decoder.decode(reply.skeleton, reply.buffers, reply.flags, reply.layout_id)
        return reply.kind == RESULT, value

    @property
    def broken(self) -> BaseException | None:
        """Why the stream is unusable, or None while it works."""
        return self._stream.broken

    @property
    def resume_seq(self) -> int:
        """``first_seq`` for the stream that replaces this one: an unanswered call is sent again under its number."""
        return self._seq - 1 if self.pending_seq is not None else self._seq

    def close(self) -> None:
        """Close the stream (arrays already returned stay valid). Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._stream.close()

    def __enter__(self) -> TcpClientPlane:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
            self.close()


class TcpServerWorker:
    """Serves one session's TCP data stream in a thread.

    Args:
        sock: the session's data connection (owned from now on; closed when the worker ends).
        execute: runs one call, ``(name, args, kwargs) -> (ok, value)``; an
            exception from it becomes an ERROR reply of kind ``"internal"``.
        limits: decoder limits applied to requests.
        max_message_bytes: largest request accepted and reply sent.
        chunk_size: most bytes per ``sendmsg`` / ``recv_into``.
        compression: None (default), True (lz4), "lz4" or "zstd" for replies.
        io_timeout: once a message has begun, the longest stretch without
            progress (a stalled or non-reading client) before the
            connection is aborted.
        on_exit: called from the worker thread when it ends, with the error
            that ended it (None after :meth:`stop` or a clean close).
        record: the session's :class:`~fastenv.replay.ReplyRecord`, shared by
            its successive streams: a call re-sent after a reconnection is
            answered from it instead of running twice.
    """

    def __init__(
        self,
        sock: socket.socket,
        execute: Executor,
        *,
        limits: codec.Limits,
        max_message_bytes: int,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compression: str | bool | None = None,
        io_timeout: float = DEFAULT_IO_TIMEOUT_S,
        on_exit: Callable[[BaseException | None], None] | None = None,
        record: ReplyRecord | None = None,
    ) -> None:
        self._record = record
        self._stream = _open_stream(sock, chunk_size, compression, max_message_bytes)
        self._sock = sock
        self._execute = execute
        self._limits = limits
        self._encoder = StreamEncoder()
        self._decoder = StreamDecoder(limits)
        self._io_timeout = io_timeout
        self._on_exit = on_exit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastenv-tcp-worker", daemon=True)
        self.calls = 0
        self.exit_reason: BaseException | None = None

    def start(self) -> None:
        """Start serving."""
        self._thread.start()

    def is_alive(self) -> bool:
        """Whether the worker thread still runs."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the connection; waits up to ``timeout`` for a running call."""
        self._stop.set()
        if not self._thread.is_alive():
            if self._thread.ident is None:  # never started: close here
                self._stream.close()
            return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read or write; the thread closes
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped()

    def _run(self) -> None:
        stream = self._stream
        reason: BaseException | None = None
        try:
            while not self._stop.is_set():
                try:
                    request = stream.recv(alive=self._check_stop, stall=self._io_timeout, label="data stream request")
                except MessageRejected as exc:
                    self._send(ERROR, exc.seq, error_body(ErrorKind.PROTOCOL, exc))
                    continue
                self.calls += 1
                seq = request.seq
                kind, value, name = self._run_once(request)
                del request
                self._send(kind, seq, value, name)
                del value
        except _Stopped:
            pass
        except ConnectionLost as exc:
            if not self._stop.is_set():
                log.debug("TCP data stream ended: %s", exc)
                reason = exc
        except Exception as exc:  # noqa: BLE001 - a broken stream or a bug must never reach the server
            if not self._stop.is_set():
                log.warning("TCP data stream closed: %s: %s", type(exc).__name__, exc)
                reason = exc
        finally:
            stream.close()
            self.exit_reason = reason
            if self._on_exit is not None:
                try:
                    self._on_exit(reason)
                except Exception:
                    log.exception("on_exit callback of a TCP worker failed")

    def _run_once(self, request: Any) -> tuple[int, Any, str]:
        """``(kind, value, call name)``: the reply to ``request`` (recorded, so a re-sent call is not run twice).

        The request is decoded even when the record answers it: a call re-sent
        on a new stream announces its layouts there, and later calls use them.
        """
        seq = request.seq
        if request.kind != CALL:
            error = ProtocolError(f"expected a CALL, got {KIND_NAMES[request.kind]}")
            return ERROR, error_body(ErrorKind.PROTOCOL, error), ""
        try:
            body = self._decoder.decode(request.skeleton, request.buffers, request.flags, request.layout_id)
            name, args, kwargs = parse_call(body)
        except (ProtocolError, ValueError, TypeError) as exc:
            return ERROR, error_body(ErrorKind.PROTOCOL, exc), ""
        del body, request

        def handle() -> tuple[int, Any, str]:
            return self._handle(name, args, kwargs)

        if self._record is None:
            return handle()
        try:
            return self._record.run(seq, handle, self._check_stop)
        except StaleRequest as exc:
            return ERROR, error_body(ErrorKind.PROTOCOL, exc), ""

    def _handle(self, name: str, args: tuple, kwargs: dict) -> tuple[int, Any, str]:
        try:
            ok, value = self._execute(name, args, kwargs)
        except Exception as exc:  # the executor should not raise; if it does, say so
            log.exception("TCP data plane executor failed")
            return ERROR, error_body(ErrorKind.INTERNAL, exc, traceback.format_exc()), name
        return (RESULT if ok else ERROR), value, name

    def _send(self, kind: int, seq: int, value: Any, name: str = "") -> None:
        """Send the reply to call ``seq`` (a result through the layout of call ``name`` when it fits)."""
        try:
            skeleton, buffers, flags, layout_id = self._encoder.encode(name, value, use_layouts=kind == RESULT)
        except EncodeError as exc:
            kind, flags, layout_id = ERROR, 0, 0
            skeleton, buffers = codec.encode(error_body(ErrorKind.ENCODE, exc))
        try:
            self._stream.send(
                kind, seq, skeleton, buffers, alive=self._check_stop, stall=self._io_timeout,
                label="data stream reply", flags=flags, layout_id=layout_id,
            )
        except ProtocolError as exc:  # FrameTooLarge: nothing was sent, the stream is intact
            if self._stream.broken is not None:
                raise
            self._encoder.refused(name, flags)
            skeleton, _ = codec.encode(error_body(ErrorKind.ENCODE, exc))
            self._stream.send(ERROR, seq, skeleton, [], alive=self._check_stop, stall=self._io_timeout)


class TcpDataListener:
    """Accepts data connections and hands each to its session.

    A connection must send :data:`HELLO` followed by a ``token_size``-byte
    session token within ``accept_timeout`` seconds; tokens are read without
    blocking, by one thread, so a slow, silent or garbage-sending connection
    delays nobody and is dropped. ``on_connection(token, sock)`` (called from
    the listener's thread; it must not block) returns True if it adopted the
    socket, which is then answered :data:`ACK` and belongs to the adopter;
    otherwise (or if it raises) the listener closes it.

    Args:
        host: address to bind.
        port: port to bind (0: any free port, see :attr:`port`).
        on_connection: the adopter.
        token_size: length of the session token.
        accept_timeout: how long a new connection may take to send its preamble.
        max_pending: connections still owing their preamble; the oldest is
            dropped beyond this.
    """

    def __init__(
        self,
        host: str,
        port: int = 0,
        *,
        on_connection: Callable[[bytes, socket.socket], bool],
        token_size: int = DEFAULT_TOKEN_SIZE,
        accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT_S,
        max_pending: int = MAX_PENDING,
        backlog: int = 128,
    ) -> None:
        self._on_connection = on_connection
        self._preamble = len(HELLO) + token_size
        self._accept_timeout = accept_timeout
        self._max_pending = max_pending
        self._closed = True  # until everything below exists
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock = socket.create_server((host, port), family=family, backlog=backlog)  # SO_REUSEADDR on POSIX
        except OSError as exc:
            raise TransportError(f"cannot listen for data streams on {host}:{port}: {exc.strerror or exc}") from exc
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: dict[socket.socket, tuple[float, bytearray]] = {}
        self.accepted = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="fastenv-tcp-listener", daemon=True)
        self._closed = False
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        host, port = self._sock.getsockname()[:2]
        return host, port

    @property
    def port(self) -> int:
        """The bound port."""
        return self.address[1]

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and close the listening and pending sockets. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> TcpDataListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
            self.close()

    def _run(self) -> None:
        try:
            while not self._closed:
                timeout = None
                if self._pending:
                    timeout = max(0.0, min(d for d, _ in self._pending.values()) - time.monotonic())
                try:
                    events = self._selector.select(timeout)
                except OSError:  # interrupted: loop again
                    continue
                for key, _ in events:
                    if key.fileobj is self._sock:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._read_preamble(key.fileobj)  # type: ignore[arg-type]
                self._expire()
        except Exception:  # a bug here must not take the server down
            log.exception("TCP data listener failed")
        finally:
            for sock in list(self._pending):
                self._drop(sock)
            self._selector.close()
            self._sock.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(64)
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ECONNABORTED...: keep serving the others
                log.warning("data stream accept failed: %s", exc)
                return
            sock.setblocking(False)
            if len(self._pending) >= self._max_pending:
                oldest = min(self._pending, key=lambda s: self._pending[s][0])
                self._drop(oldest)
            self._pending[sock] = (time.monotonic() + self._accept_timeout, bytearray())
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _read_preamble(self, sock: socket.socket) -> None:
        entry = self._pending.get(sock)
        if entry is None:
            return
        received = entry[1]
        try:
            data = sock.recv(self._preamble - len(received))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        received += data
        if not HELLO.startswith(bytes(received[: len(HELLO)])):
            log.debug("dropped a connection that is not a fastenv data stream")
            self._drop(sock)
            return
        if len(received) < self._preamble:
            return
        self._selector.unregister(sock)
        del self._pending[sock]
        token = bytes(received[len(HELLO) :])
        sock.setblocking(True)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            adopted = bool(self._on_connection(token, sock))
        except Exception:
            log.exception("on_connection failed for a data stream")
            adopted = False
        if not adopted:
            self.dropped += 1
            try:
                sock.send(NAK)  # so the client can tell a refusal from a connection cut on the way
            except OSError:
                pass
            sock.close()
            return
        self.accepted += 1
        try:
            sock.send(ACK)  # one byte into an empty send buffer: never blocks
        except OSError:
            pass  # the adopter's stream will see the connection is gone

    def _expire(self) -> None:
        now = time.monotonic()
        for sock, (deadline, _) in list(self._pending.items()):
            if deadline <= now:
                log.debug("dropped a data connection that sent no session token in time")
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._pending.pop(sock, None)
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        self.dropped += 1
        sock.close()


def connect_data_stream(host: str, port: int, token: bytes, timeout: float) -> socket.socket:
    """Open a session's data connection: connect, send the preamble, wait for the ACK.

    Returns a blocking socket with TCP_NODELAY set. Raises
    :class:`FastEnvTimeout` if it takes longer than ``timeout`` seconds,
    :class:`StreamRefused` if the server holds no session with that token,
    :class:`ConnectionLost` if the connection dropped during the handshake,
    and :class:`TransportError` if nothing listens there.
    """
    deadline = time.monotonic() + timeout
    endpoint = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError as exc:
        raise FastEnvTimeout(f"connecting the data stream to {endpoint} timed out") from exc
    except (ConnectionResetError, ConnectionAbortedError) as exc:  # reached, then cut: not "nothing listens"
        raise ConnectionLost(f"the data stream to {endpoint} was cut while connecting: {exc.strerror or exc}") from exc
    except OSError as exc:
        raise TransportError(f"cannot connect the data stream to {endpoint}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(HELLO + bytes(token))
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        answer = sock.recv(1)
        if not answer:
            raise ConnectionLost(f"the data stream to {endpoint} was cut during its handshake")
        if answer == NAK:
            raise StreamRefused(f"the server at {endpoint} refused the data stream (unknown or expired session token)")
        if answer != ACK:
            raise ProtocolError(f"the server at {endpoint} answered the data stream preamble with {answer!r}")
        sock.settimeout(None)
        return sock
    except TimeoutError as exc:
        sock.close()
        raise FastEnvTimeout(f"the data stream handshake with {endpoint} timed out") from exc
    except OSError as exc:
        sock.close()
        raise ConnectionLost(f"the data stream handshake with {endpoint} failed: {exc.strerror or exc}") from exc
    except BaseException:
        sock.close()
        raise


__all__ = [
    "ACK",
    "DEFAULT_ACCEPT_TIMEOUT_S",
    "DEFAULT_IO_TIMEOUT_S",
    "DEFAULT_TOKEN_SIZE",
    "HELLO",
    "NAK",
    "StreamRefused",
    "TcpClientPlane",
    "TcpDataListener",
    "TcpServerWorker",
    "connect_data_stream",
]
