"""The server's end of a session's TCP data stream: a worker thread that runs its calls."""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastenv import codec, native
from fastenv.errors import ConnectionLost, EncodeError, ProtocolError
from fastenv.metrics import replied
from fastenv.replay import ReplyRecord, StaleRequest
from fastenv.tcp.format import CALL, ERROR, KIND_NAMES, RESULT, MessageRejected
from fastenv.tcp.framing import DEFAULT_CHUNK_SIZE
from fastenv.tcp.handshake import open_stream
from fastenv.tcp.layouts import StreamDecoder, StreamEncoder
from fastenv.transport.base import Executor
from fastenv.wire import ErrorKind, error_body, parse_call

if TYPE_CHECKING:
    from fastenv.session.envthread import EnvThread

log = logging.getLogger("fastenv.tcp")

DEFAULT_IO_TIMEOUT_S = 30.0
WAIT_SLICE_MS = 50  # how often a hosted wait looks at the stop flag


class _Stopped(Exception):
    """Raised inside the worker's waits when stop() was called."""

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
        self._stream = open_stream(sock, chunk_size, compression, max_message_bytes)
        self._sock = sock
        self._execute = execute
        self._limits = limits
        self._encoder = StreamEncoder()
        self._decoder = StreamDecoder(limits)
        self._io_timeout = io_timeout
        self._on_exit = on_exit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastenv-tcp-worker", daemon=True)
        self._host: EnvThread | None = None  # the env thread serving this stream, when it hosts it
        self._wake_fd = -1  # an eventfd a hosted wait polls beside the socket (pokes write to it)
        self._wake_lock = threading.Lock()  # a wake never writes to the number of an eventfd closed meanwhile
        self._ended = threading.Event()  # the stream was closed and on_exit called
        self._hosting = False  # the host thread is in serve_hosted() now
        self.calls = 0
        self.exit_reason: BaseException | None = None

    def start(self, host: EnvThread | None = None, wait: float = 0.0) -> None:
        """Start serving: on ``host``'s thread when it takes the stream (no hop per call), else on a thread of its own.

        ``wait``: how long ``host`` may take to drop a stream it serves now (see :meth:`EnvThread.host`).
        """
        if host is not None and self._stream.native_spin:
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._host = host  # before the host thread can start: stop() must know who serves the stream
            if host.host(self, wait):
                return
            self._host = None
            with self._wake_lock:
                os.close(self._wake_fd)
                self._wake_fd = -1
        self._thread.start()

    def is_alive(self) -> bool:
        """Whether the stream is still served (by the worker thread, or by the env thread hosting it)."""
        if self._host is not None:
            return not self._ended.is_set()
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end; True if it has."""
        if self._host is not None:
            return self._ended.wait(timeout)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the connection; waits up to ``timeout`` for a running call."""
        self._stop.set()
        host = self._host
        if host is None and not self._thread.is_alive():
            if self._thread.ident is None:  # never started: close here
                self._stream.close()
            return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read or write; the thread closes
        except OSError:
            pass
        if host is not None:
            if not host.on_owner():
                host.poke()
                self._ended.wait(timeout)
            elif not self._hosting:  # the host thread has left the loop (it is shutting down): end here
                self._end(None)
        elif self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped()

    def _run(self) -> None:
        self._served(self._serve_forever)

    def _serve_forever(self) -> bool:
        while not self._stop.is_set():
            self._serve_one()
        return False

    def serve_hosted(self, poke: Any, poke_offset: int, poke_seen: int) -> bool:
        """Serve requests on the calling thread (an env's, see :meth:`EnvThread.host`) until poked or stopped.

        Returns True when the u32 at ``poke_offset`` in ``poke`` no longer
        reads ``poke_seen`` (the stream stays open for the next hosted wait),
        False once the stream has ended (closed here, ``on_exit`` called).
        """
        self._hosting = True
        try:
            return self._served(lambda: self._serve_until_poked(poke, poke_offset, poke_seen))
        finally:
            self._hosting = False

    def _serve_until_poked(self, poke: Any, poke_offset: int, poke_seen: int) -> bool:
        """Wait for a request or a poke: spin on the socket (GIL released), then poll it beside the wake eventfd."""
        load = native.BACKEND.native.load
        stream = self._stream
        spin, spin_us = stream.native_spin, stream.spin_us
        sock, wake_fd = self._sock, self._wake_fd
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(wake_fd, select.POLLIN)
        while not self._stop.is_set():
            if not stream.buffered:
                if load(poke, poke_offset) != poke_seen:
                    return True
                if not spin(sock, spin_us):
                    ready = poller.poll(WAIT_SLICE_MS)
                    if any(fd == wake_fd for fd, _ in ready):
                        try:
                            os.eventfd_read(wake_fd)
                        except BlockingIOError:
                            pass
                    if len(ready) != 1 or ready[0][0] == wake_fd:  # a poke, or a slice passed: look again
                        continue
            self._serve_one(readable=True)
        return False

    def wake(self) -> None:
        """Wake a hosted wait (it then looks at its poke word)."""
        with self._wake_lock:
            if self._wake_fd >= 0:  # else the stream ended, and nobody waits there any more
                os.eventfd_write(self._wake_fd, 1)

    def _served(self, loop: Callable[[], bool]) -> bool:
        """Run ``loop``; True when it returned for a poke, else close the stream and report why it ended."""
        reason: BaseException | None = None
        try:
            if loop():
                return True
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
        except BaseException:  # KeyboardInterrupt on the main thread: close, then let it through
            self._end(None)
            raise
        self._end(reason)
        return False

    def _end(self, reason: BaseException | None) -> None:
        if self._ended.is_set():
            return
        self._stream.close()
        with self._wake_lock:
            if self._wake_fd >= 0:
                os.close(self._wake_fd)
                self._wake_fd = -1
        self.exit_reason = reason
        self._ended.set()
        if self._on_exit is not None:
            try:
                self._on_exit(reason)
            except Exception:
                log.exception("on_exit callback of a TCP worker failed")

    def _serve_one(self, readable: bool = False) -> None:
        """Receive one request, run it and send its reply (``readable``: the socket was just seen readable)."""
        try:
            request = self._stream.recv(
                alive=self._check_stop, stall=self._io_timeout, label="data stream request", readable=readable
            )
        except MessageRejected as exc:
            self._send(ERROR, exc.seq, error_body(ErrorKind.PROTOCOL, exc))
            return
        self.calls += 1
        seq = request.seq
        kind, value, name = self._run_once(request)
        del request
        self._send(kind, seq, value, name)
        replied(self._execute)

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
