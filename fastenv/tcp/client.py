"""The client's end of a session's TCP data stream (see :mod:`fastenv.tcp`)."""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from fastenv import codec
from fastenv.errors import ProtocolError
from fastenv.tcp.format import CALL, ERROR, KIND_NAMES, RESULT, MessageRejected
from fastenv.tcp.framing import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_MESSAGE_BYTES
from fastenv.tcp.handshake import open_stream
from fastenv.tcp.layouts import StreamDecoder, StreamEncoder


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
        dial: opens a new connection for :meth:`reconnect` (``timeout -> socket``,
            see :func:`~fastenv.tcp.handshake.connect_data_stream`).
        first_seq: the sequence number of the last call made on this session's
            earlier streams: numbers keep counting across reconnections, so the
            server recognises a call re-sent after a drop (see :mod:`fastenv.replay`).
    """

    name = "tcp"
    resumable = True

    def __init__(
        self,
        sock: socket.socket,
        alive: Callable[[], None],
        *,
        dial: Callable[[float], socket.socket] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compression: str | bool | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        limits: codec.Limits = codec.DEFAULT_LIMITS,
        first_seq: int = 0,
    ) -> None:
        self._dial = dial
        self._stream_options = (chunk_size, compression, max_message_bytes)
        self._stream = open_stream(sock, *self._stream_options)
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

    def reconnect(self, deadline: float | None) -> None:
        """Replace a broken stream with a new connection to the same session.

        Sequence numbers go on from :attr:`resume_seq`, so :meth:`resend`
        sends an unanswered call under its number; layouts are announced
        afresh on the new stream.
        """
        if self._dial is None:
            raise ProtocolError("this data stream was opened without a way to reconnect it")
        timeout = 10.0 if deadline is None else max(0.001, deadline - time.monotonic())
        sock = self._dial(timeout)
        with self._lock:
            self._stream.close()
            self._stream = open_stream(sock, *self._stream_options)
            self._encoder = StreamEncoder()
            self._decoder = StreamDecoder(self._limits)
            self._seq = self.resume_seq
            self.pending_seq = None

    def resend(self, body: Any, deadline: float | None, what: str) -> int:
        """Send the unanswered call again: after :meth:`reconnect` it goes out under its old number."""
        return self.send(body, deadline, what)

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
