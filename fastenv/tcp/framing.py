"""A socket stream that speaks the TCP data plane's message format (:mod:`fastenv.tcp.format`).

Sending: header + table + skeleton are built as one small ``bytes``; the array
buffers are never concatenated: :meth:`MessageStream.send` hands memoryviews of
them to ``socket.sendmsg`` (scatter-gather), at most ``chunk_size`` bytes per
call. A message that fits in :data:`SMALL_MESSAGE` bytes is joined and sent in
one system call.

Receiving: the header is read exactly and every declared length is checked
against ``max_message_bytes`` *before* anything is allocated
(:class:`~fastenv.errors.FrameTooLarge`); then each buffer gets a ``uint8``
array nobody else references (buffers of :data:`POOLED_BYTES` and more are
recycled from a :class:`~fastenv.tcp.pool.ReceivePool` once every array built
on them is gone, smaller ones are fresh ``np.empty``) that is filled with
``recv_into`` in chunks of at most ``chunk_size`` bytes. Small messages are read through a fixed 64 KiB
staging buffer, so a step's header, skeleton and small arrays usually arrive in
one ``recv``.

Failure rule (dask's): once a message has been partly written or read, it
cannot be resumed. Any error that leaves the stream out of sync -- EOF or reset
mid-message (:class:`~fastenv.errors.ConnectionLost`), a deadline passed
(:class:`~fastenv.errors.FastEnvTimeout`), a bad magic or kind
(:class:`~fastenv.errors.ProtocolError`), an oversized declaration, an
interrupt -- aborts the connection, and every later call on the stream raises
:class:`~fastenv.errors.ConnectionLost` at once. Partial data is never
returned. Errors found after a whole message was read (a buffer that does not
decompress) leave the stream usable; they raise :class:`MessageRejected`.

Memory: a receive holds the message's arrays (which it returns) plus at most
one compressed copy of one buffer and the 64 KiB staging buffer; its pool
keeps at most twice the largest message received; a send holds
nothing but the (optional) compressed copies of the message's buffers. Nothing
is queued: the kernel's socket buffers are the only buffering between peers,
so a peer that stops reading makes the sender block (TCP backpressure) until
its deadline, never makes it buffer.

"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fastenv import native
from fastenv.errors import ConnectionLost, FrameTooLarge, ProtocolError
from fastenv.tcp.compression import CODEC_NAMES, COMPRESS_THRESHOLD, RAW, decompressor, resolve_compression
from fastenv.tcp.format import (
    CALL,
    ENTRY,
    ERROR,
    FLAG_COMPRESSED,
    FLAG_LAYOUT,
    FLAG_LAYOUT_DEF,
    HEADER,
    KINDS,
    KNOWN_FLAGS,
    MAGIC,
    RESULT,
    Message,
    MessageRejected,
    head_struct,
)
from fastenv.tcp.pool import ReceivePool
from fastenv.tcp.socketio import DEFAULT_SOCKET_BUFFER, BoundedSocket

log = logging.getLogger("fastenv.tcp")

# Measured with benchmarks/bench_tcp_stream.py --chunk-sweep (16 MB array over loopback):
# 64 KiB chunks cost ~25% throughput in system-call overhead; from 1 MiB up the
# curve is flat. 1 MiB keeps each call's GIL-free stretch long and its latency short.
DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 4096
DEFAULT_MAX_MESSAGE_BYTES = 1 << 31
MAX_BUFFERS = 1 << 16
SMALL_MESSAGE = 64 * 1024  # joined and sent with one system call
STAGING_BYTES = 64 * 1024  # reads of small parts go through this buffer
POOLED_BYTES = 64 * 1024  # buffers from this size on are recycled (see fastenv.tcp.pool)
IOV_BATCH = 512  # stay under IOV_MAX (1024 on Linux)
# Before a blocking read of the next message, poll the socket this long (µs, GIL released,
# native extension only): an answer that comes within it skips the receiving thread's sleep
# and wake-up, and the caches the network stack evicts while it sleeps. Measured with
# fastenv-bench --payload small (fastenv-tcp p50 on the 2-core VM, one run each):
# 0 -> 113 us, 100 -> 86 us, 300 -> 88 us, at the price of ~40 us more client CPU and ~20 us
# more server CPU per step. The same spin-then-block trade as the shared-memory doorbell.
DEFAULT_SPIN_US = int(os.environ.get("FASTENV_TCP_SPIN_US", "100"))

_WAITALL = getattr(socket, "MSG_WAITALL", 0)


class MessageStream(BoundedSocket):
    """Sends and receives framed messages on a connected socket (see the module docstring).

    Not thread-safe: one sender and one receiver at a time, which the planes
    guarantee by doing one call (request then reply) at a time.

    Args:
        sock: a connected stream socket; the stream owns it from now on.
        chunk_size: most bytes handed to one ``sendmsg`` / ``recv_into``.
        compression: None, True, "lz4" or "zstd" for what this side sends
            (any codec is accepted on receive if its module is installed).
        max_message_bytes: largest message accepted (header, table, skeleton
            and decompressed buffers together) and sent.
        socket_buffer: SO_SNDBUF and SO_RCVBUF to ask the kernel for (see
            :data:`DEFAULT_SOCKET_BUFFER`); None or 0 leaves the kernel's
            autotuning in charge.
        spin_us: how long to poll for the next message before blocking (see
            :data:`DEFAULT_SPIN_US`; needs the native extension, 0 turns it off).
    """
    def __init__(
        self,
        sock: socket.socket,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compression: str | bool | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        socket_buffer: int | None = DEFAULT_SOCKET_BUFFER,
        spin_us: int = DEFAULT_SPIN_US,
    ) -> None:
        if chunk_size < MIN_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be at least {MIN_CHUNK_SIZE} bytes")
        super().__init__(sock, socket_buffer)
        self._compressor = resolve_compression(compression)
        self.chunk_size = int(chunk_size)
        self.max_message_bytes = int(max_message_bytes)
        self._staging = bytearray(STAGING_BYTES)
        self._pool = ReceivePool()
        # The native poll loop (fastenv._native, with the rest of the native backend); without it
        # the stream blocks at once.
        compiled = native.BACKEND.native
        self._spin = compiled.spin_readable if compiled is not None and spin_us > 0 else None
        self._spin_us = int(spin_us)
        self._view = memoryview(self._staging)
        self._start = 0
        self._end = 0
        self._readable = False  # the next read need not spin: the socket was just seen readable
        self.last_seq = 0

    @property
    def native_spin(self) -> Callable[[socket.socket, int], bool] | None:
        """The compiled ``spin_readable(sock, spin_us)`` this stream polls with before a blocking read (None: none)."""
        return self._spin

    @property
    def spin_us(self) -> int:
        """How long (µs) the stream polls the socket before a blocking read."""
        return self._spin_us

    @property
    def buffered(self) -> bool:
        """Whether bytes of the next message were read already (a wait on the socket would not see them)."""
        return self._end > self._start

    # ------------------------------------------------------------------ send

    def send(
        self,
        kind: int,
        seq: int,
        skeleton: bytes,
        buffers: list[Any],
        *,
        deadline: float | None = None,
        alive: Callable[[], None] | None = None,
        stall: float | None = None,
        label: str = "send",
        flags: int = 0,
        layout_id: int = 0,
    ) -> None:
        """Send one message; raises :class:`FrameTooLarge` (stream intact) if it exceeds the limit.

        ``flags`` (:data:`FLAG_LAYOUT_DEF` or :data:`FLAG_LAYOUT`) and
        ``layout_id`` describe a skeleton made by :mod:`fastenv.tcp.layouts`.

        ``deadline`` (monotonic) bounds the whole send; ``stall`` bounds each
        stretch without progress; ``alive`` is called after each idle slice.
        """
        if self.broken is not None:
            self._check()
        count = len(buffers)
        if count > MAX_BUFFERS:
            raise FrameTooLarge(f"a message of {count} arrays exceeds the limit of {MAX_BUFFERS}")
        compressor = self._compressor
        fields: list[Any] = [MAGIC, kind, flags, layout_id, seq, len(skeleton), count]
        wires: list[Any] = []
        raw_total = 0
        payload = 0
        for buffer in buffers:
            view = buffer if type(buffer) is memoryview else memoryview(buffer)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            n = view.nbytes
            raw_total += n
            packed = compressor.maybe_compress(view) if compressor is not None and n >= COMPRESS_THRESHOLD else None
            if packed is None:
                fields += (RAW, n, n)
                wires.append(view)
                payload += n
            else:
                fields += (compressor.codec_id, n, len(packed))  # type: ignore[union-attr]
                fields[2] |= FLAG_COMPRESSED
                wires.append(memoryview(packed))
                payload += len(packed)
        head = head_struct(count).pack(*fields)
        declared = len(head) + len(skeleton) + raw_total
        if declared > self.max_message_bytes:
            raise FrameTooLarge(
                f"a message of {declared} bytes exceeds the data stream's limit of {self.max_message_bytes}"
            )
        self._deadline, self._alive, self._stall, self._label = deadline, alive, stall, label
        if stall is not None:
            self._progress = time.monotonic()
        self._started = True
        try:
            if len(head) + len(skeleton) + payload <= SMALL_MESSAGE:
                data = b"".join([head, skeleton, *wires]) if wires else head + skeleton
                sent = self._io(self.sock.send, data)
                if sent < len(data):
                    view = memoryview(data)[sent:]
                    while view:
                        view = view[self._io(self.sock.send, view) :]
            else:
                self._sendmsg([memoryview(head), memoryview(skeleton), *wires])
        except BaseException as exc:
            self._abort(exc)
            raise

    def _sendmsg(self, segments: list[memoryview]) -> None:
        chunk = self.chunk_size
        sendmsg = self.sock.sendmsg
        segments = [s for s in segments if s.nbytes]
        i = 0
        count = len(segments)
        while i < count:
            batch = []
            size = 0
            j = i
            while j < count and size < chunk and len(batch) < IOV_BATCH:
                seg = segments[j]
                room = chunk - size
                if seg.nbytes > room:
                    seg = seg[:room]
                batch.append(seg)
                size += seg.nbytes
                j += 1
            sent = self._io(sendmsg, batch)
            # advance past what was sent
            while sent:
                head = segments[i]
                if sent >= head.nbytes:
                    sent -= head.nbytes
                    i += 1
                else:
                    segments[i] = head[sent:]
                    sent = 0

    # ------------------------------------------------------------------ receive

    def _fill(self, need: int) -> None:
        """Make ``need`` (<= STAGING_BYTES) bytes available in the staging buffer."""
        if self._start + need > STAGING_BYTES:
            have = self._end - self._start
            self._view[:have] = self._view[self._start : self._end]
            self._start, self._end = 0, have
        recv_into = self.sock.recv_into
        if self._spin is not None and self._end == self._start and not self._readable:
            self._spin(self.sock, self._spin_us)  # whatever it found, the read below takes it
        self._readable = False
        while self._end - self._start < need:
            got = self._io(recv_into, self._view[self._end :])
            if got == 0:
                if self._started or self._end > self._start:
                    raise ConnectionLost(f"{self._label}: the peer closed the data stream in the middle of a message")
                raise ConnectionLost(f"{self._label}: the peer closed the data stream")
            self._started = True
            self._end += got

    def _take(self, n: int) -> memoryview:
        """The next ``n`` (<= STAGING_BYTES) bytes, valid until the next read."""
        if self._end - self._start < n:
            self._fill(n)
        start = self._start
        self._start = start + n
        if self._start == self._end:
            self._start = self._end = 0
        return self._view[start : start + n]

    def _read_into(self, dest: memoryview) -> None:
        n = dest.nbytes
        have = min(self._end - self._start, n)
        if have:
            dest[:have] = self._view[self._start : self._start + have]
            self._start += have
            if self._start == self._end:
                self._start = self._end = 0
        done = have
        if n - done <= STAGING_BYTES // 2:
            if n > done:
                dest[done:] = self._take(n - done)
            return
        chunk = self.chunk_size
        recv_into = self.sock.recv_into
        while done < n:
            part = dest[done : done + chunk]
            got = self._io(recv_into, part, part.nbytes, _WAITALL)
            if got == 0:
                raise ConnectionLost(f"{self._label}: the peer closed the data stream in the middle of a message")
            done += got

    def recv(
        self,
        *,
        deadline: float | None = None,
        alive: Callable[[], None] | None = None,
        stall: float | None = None,
        label: str = "receive",
        readable: bool = False,
    ) -> Message:
        """Receive one whole message (``readable``: the caller saw the socket readable, so no spin first).

        ``deadline`` (monotonic) bounds the whole receive, including the wait
        for its first byte; ``stall`` bounds each stretch without progress once
        the message has begun; ``alive`` is called after each idle slice and
        may raise to give up (which aborts the stream like any other error).
        Raises :class:`MessageRejected` (stream intact) for a complete message
        that cannot be used.
        """
        if self.broken is not None:
            self._check()
        self._deadline, self._alive, self._stall, self._label = deadline, alive, stall, label
        if stall is not None:
            self._progress = time.monotonic()
        self._started = self._end > self._start
        self._readable = readable
        try:
            return self._recv()
        except MessageRejected:
            raise
        except BaseException as exc:
            self._abort(exc)
            raise

    def _recv(self) -> Message:
        if self._end - self._start < HEADER.size:
            self._fill(HEADER.size)
        magic, kind, flags, layout_id, seq, skeleton_len, count = HEADER.unpack_from(self._view, self._start)
        self._start += HEADER.size
        if magic != MAGIC:
            raise ProtocolError(f"{self._label}: not a fastenv data stream (bad magic {bytes(magic)!r})")
        if kind not in KINDS:
            raise ProtocolError(f"{self._label}: unknown message kind {kind}")
        if flags & ~KNOWN_FLAGS or (flags & FLAG_LAYOUT and flags & FLAG_LAYOUT_DEF):
            raise ProtocolError(f"{self._label}: unknown message flags {flags:#x}")
        self.last_seq = seq
        limit = self.max_message_bytes
        if count > MAX_BUFFERS:
            raise FrameTooLarge(f"{self._label}: a message of {count} arrays exceeds the limit of {MAX_BUFFERS}")
        table_len = count * ENTRY.size
        declared = HEADER.size + table_len + skeleton_len
        if declared > limit:
            raise FrameTooLarge(f"{self._label}: a message of at least {declared} bytes exceeds the limit of {limit}")
        if table_len <= STAGING_BYTES:
            if self._end - self._start < table_len:
                self._fill(table_len)
            table: Any = self._view
            base = self._start
            self._start += table_len
        else:
            table, base = self._read_bytes(table_len), 0
        entries = [ENTRY.unpack_from(table, base + i * ENTRY.size) for i in range(count)]
        compressed = False
        for codec_id, raw, wire in entries:
            declared += raw
            if codec_id == RAW:
                if wire != raw:
                    raise ProtocolError(f"{self._label}: raw buffer declares {raw} bytes but carries {wire}")
            elif codec_id in CODEC_NAMES:
                if not 0 < wire < raw:
                    raise ProtocolError(f"{self._label}: compressed buffer of {raw} bytes declares {wire} on the wire")
                compressed = True
            else:
                raise ProtocolError(f"{self._label}: unknown buffer codec {codec_id}")
        if declared > limit:
            raise FrameTooLarge(f"{self._label}: a message of {declared} bytes exceeds the limit of {limit}")
        if compressed != bool(flags & FLAG_COMPRESSED):
            raise ProtocolError(f"{self._label}: compression flag does not match the buffer table")
        # Every length is now known to fit: allocate and read.
        if skeleton_len <= STAGING_BYTES:
            if self._end - self._start < skeleton_len:
                self._fill(skeleton_len)
            start = self._start
            skeleton: bytes | bytearray = self._staging[start : start + skeleton_len]
            self._start = start + skeleton_len
        else:
            skeleton = self._read_bytes(skeleton_len)
        if self._start == self._end:
            self._start = self._end = 0
        buffers: list[np.ndarray] = []
        problem: str | None = None
        pool = self._pool
        if declared > pool.max_bytes // 2:
            pool.max_bytes = 2 * declared  # keep up to two of the largest messages warm
        for codec_id, raw, wire in entries:
            start = self._start
            if 0 < wire <= self._end - start and wire < POOLED_BYTES:
                # already in the staging buffer (a small message comes in one recv): one copy out
                out = np.frombuffer(self._staging[start : start + wire], np.uint8)
                self._start = start + wire
            else:
                out = np.frombuffer(pool.take(wire), np.uint8) if wire >= POOLED_BYTES else np.empty(wire, np.uint8)
                if wire:
                    with memoryview(out) as view:
                        self._read_into(view)
            if codec_id != RAW and problem is None:
                try:
                    out = decompressor(codec_id)(out, raw)
                except Exception as exc:  # noqa: BLE001 - corrupt data or a missing module: in sync, reject
                    problem = f"{self._label}: a {CODEC_NAMES[codec_id]} buffer could not be decompressed: {exc}"
            buffers.append(out)
        if self._start == self._end:
            self._start = self._end = 0
        if problem is not None:
            raise MessageRejected(problem, seq, kind)
        return Message(kind, seq, skeleton, buffers, flags & (FLAG_LAYOUT_DEF | FLAG_LAYOUT), layout_id)

    def _read_bytes(self, n: int) -> bytearray:
        out = bytearray(n)
        self._read_into(memoryview(out))
        return out


__all__ = [
    "CALL",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ENTRY",
    "ERROR",
    "HEADER",
    "MAGIC",
    "RESULT",
    "Message",
    "MessageRejected",
    "MessageStream",
]
