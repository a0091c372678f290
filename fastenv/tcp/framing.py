"""The wire format of the TCP data plane, and a socket stream that speaks it.

One message on the stream::

    header   24 bytes  struct "<4sBBHQII"
             magic     b"FEs1"
             kind      u8   CALL=1, RESULT=2, ERROR=3
             flags     u8   bit 0: at least one buffer is compressed;
                            bit 1: the skeleton defines a layout; bit 2: the
                            message is a layout's scalars + arrays
                            (see fastenv.tcp.layouts)
             layout    u16  the layout id of a bit-2 message, else 0
             seq       u64  the call's sequence number (a reply repeats its call's)
             skeleton  u32  length of the codec skeleton
             buffers   u32  number of raw buffers
    table    17 bytes per buffer, struct "<BQQ"
             codec     u8   0 raw, 1 lz4 block, 2 zstd frame
             raw       u64  the buffer's length once decompressed
             wire      u64  the number of bytes that follow for it (== raw when codec is 0)
    skeleton the codec skeleton (pickle protocol 5 of plain data, see fastenv.codec)
    buffers  each buffer's wire bytes, back to back, no padding

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

Compression (``compression="lz4"`` or ``"zstd"``; off by default) applies per
buffer, only to buffers of at least :data:`COMPRESS_THRESHOLD` bytes, and only
when a 64 KiB sample from the buffer compresses to less than
:data:`MAX_SAMPLE_RATIO` of its size (so incompressible camera frames cost a
few microseconds, not a full compression pass). Measured on this project's
camera payload (two 480x640x3 uint8 frames + 20 floats), one core:

=========================  ===============  =========================
frame content              lz4 (block)      zstd (level 1)
=========================  ===============  =========================
random texture (the demo)  1.00x, 6.3 GB/s  1.00x, 3.2 GB/s
smooth + sigma-1 noise     1.00x, 4.5 GB/s  1.06x, 0.7 GB/s
flat-shaded render         186x, 10 GB/s    117x, 1.7 GB/s
zeros                      254x, 4.9 GB/s   18000x, 2.7 GB/s
=========================  ===============  =========================

(ratio, compression speed; decompression is 6-18 GB/s for both except zstd on
noisy frames, 0.8 GB/s). lz4 is the default codec (``compression=True``):
it is never slower than a 10 Gb/s link, while zstd's extra ratio only shows on
data both already shrink 100x, and zstd is slower than the link on noisy
frames.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastenv import native
from fastenv.errors import (
    ConnectionLost,
    DecodeError,
    FastEnvTimeout,
    FrameTooLarge,
    MissingDependency,
    ProtocolError,
)
from fastenv.tcp.pool import ReceivePool

log = logging.getLogger("fastenv.tcp")

MAGIC = b"FEs1"
HEADER = struct.Struct("<4sBBHQII")
ENTRY = struct.Struct("<BQQ")

CALL, RESULT, ERROR = 1, 2, 3
KINDS = frozenset((CALL, RESULT, ERROR))
KIND_NAMES = {CALL: "CALL", RESULT: "RESULT", ERROR: "ERROR"}
FLAG_COMPRESSED = 0x01
FLAG_LAYOUT_DEF = 0x02
FLAG_LAYOUT = 0x04
KNOWN_FLAGS = FLAG_COMPRESSED | FLAG_LAYOUT_DEF | FLAG_LAYOUT

RAW, LZ4, ZSTD = 0, 1, 2
CODEC_IDS = {"lz4": LZ4, "zstd": ZSTD}
CODEC_NAMES = {LZ4: "lz4", ZSTD: "zstd"}
DEFAULT_CODEC = "lz4"

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
COMPRESS_THRESHOLD = 64 * 1024
SAMPLE_BYTES = 64 * 1024
MAX_SAMPLE_RATIO = 0.9
WAIT_SLICE_S = 0.05  # blocking waits are cut into slices to notice a dead peer or a stop
IOV_BATCH = 512  # stay under IOV_MAX (1024 on Linux)
# Kernel socket buffers (SO_SNDBUF / SO_RCVBUF, each side). Measured over loopback on the
# 2-core VM, a 1.8 MB reply to an 8-byte request, p50 of 1,000 (benchmarks/bench_tcp_stream.py
# --buffer-sweep): kernel autotuning from its defaults 1,254 us; 256 KiB 830 us; 512 KiB 442 us;
# 1 MiB 368 us; 2 MiB 331 us. With a buffer smaller than a message the sender stalls until the
# receiver drains it, one window at a time; 2 MiB holds a camera step. The kernel caps the
# request at net.core.[rw]mem_max (4 MiB by default) and doubles it for its bookkeeping.
DEFAULT_SOCKET_BUFFER = int(os.environ.get("FASTENV_TCP_SOCKET_BUFFER", str(2 << 20)))
# Before a blocking read of the next message, poll the socket this long (µs, GIL released,
# native extension only): an answer that comes within it skips the receiving thread's sleep
# and wake-up, and the caches the network stack evicts while it sleeps. Measured with
# fastenv-bench --payload small (fastenv-tcp p50 on the 2-core VM, one run each):
# 0 -> 113 us, 100 -> 86 us, 300 -> 88 us, at the price of ~40 us more client CPU and ~20 us
# more server CPU per step. The same spin-then-block trade as the shared-memory doorbell.
DEFAULT_SPIN_US = int(os.environ.get("FASTENV_TCP_SPIN_US", "100"))

_WAITALL = getattr(socket, "MSG_WAITALL", 0)
# Kernel send/receive timeouts (Linux): elsewhere, Python socket timeouts (poll + call).
_OS_TIMEOUTS = sys.platform.startswith("linux") and os.environ.get("FASTENV_TCP_POLL", "") != "1"


_HEAD_STRUCTS: dict[int, struct.Struct] = {}


def _head_struct(count: int) -> struct.Struct:
    """The struct of a header followed by a table of ``count`` entries."""
    found = _HEAD_STRUCTS.get(count)
    if found is None:
        found = struct.Struct(HEADER.format + ENTRY.format[1:] * count)
        if len(_HEAD_STRUCTS) < 256:
            _HEAD_STRUCTS[count] = found
    return found


class MessageRejected(ProtocolError):
    """A whole message was read but cannot be used; the stream is still in sync.

    Attributes:
        seq: the message's sequence number (a reply to it may still be sent).
        kind: the message's kind.
    """

    def __init__(self, message: str, seq: int, kind: int) -> None:
        super().__init__(message)
        self.seq = seq
        self.kind = kind


@dataclass(slots=True)
class Message:
    """One received message: buffers are owned, writable uint8 arrays nobody else references."""

    kind: int
    seq: int
    skeleton: bytes | bytearray
    buffers: list[np.ndarray]
    flags: int = 0  # FLAG_LAYOUT_DEF / FLAG_LAYOUT (compression is already undone)
    layout_id: int = 0


def _import_codec(name: str) -> Any:
    try:
        if name == "lz4":
            import lz4.block as module
        else:
            import zstandard as module
    except ImportError as exc:
        raise MissingDependency(
            f"compression={name!r} needs the {'lz4' if name == 'lz4' else 'zstandard'} package: "
            'pip install "fastenv[compress]"'
        ) from exc
    return module


class _Compressor:
    def __init__(self, name: str) -> None:
        self.name = name
        self.codec_id = CODEC_IDS[name]
        module = _import_codec(name)
        if name == "lz4":
            self._compress = lambda data: module.compress(data, store_size=False)
        else:
            compressor = module.ZstdCompressor(level=1, write_content_size=True)
            self._compress = compressor.compress

    def maybe_compress(self, view: memoryview) -> bytes | None:
        """Compressed bytes, or None when compressing would not pay."""
        n = view.nbytes
        if n < COMPRESS_THRESHOLD:
            return None
        if n > 4 * SAMPLE_BYTES:
            start = (n // 2) & ~4095
            sample = view[start : start + SAMPLE_BYTES]
            if len(self._compress(sample)) > MAX_SAMPLE_RATIO * SAMPLE_BYTES:
                return None
        packed = self._compress(view)
        if len(packed) > MAX_SAMPLE_RATIO * n:
            return None
        return packed


def resolve_compression(compression: str | bool | None) -> _Compressor | None:
    """The compressor for a ``compression`` argument: None/False, True (the default codec), "lz4", "zstd"."""
    if compression is None or compression is False:
        return None
    if compression is True:
        compression = DEFAULT_CODEC
    if compression not in CODEC_IDS:
        raise ValueError(f"unknown compression {compression!r}: use None, True, 'lz4' or 'zstd'")
    return _Compressor(compression)


_DECOMPRESSORS: dict[int, Callable[[np.ndarray, int], np.ndarray]] = {}


def _decompressor(codec_id: int) -> Callable[[np.ndarray, int], np.ndarray]:
    found = _DECOMPRESSORS.get(codec_id)
    if found is not None:
        return found
    module = _import_codec(CODEC_NAMES[codec_id])
    if codec_id == LZ4:

        def decompress(wire: np.ndarray, raw: int) -> np.ndarray:
            out = module.decompress(wire, uncompressed_size=raw, return_bytearray=True)
            if len(out) != raw:
                raise DecodeError(f"lz4 buffer decompressed to {len(out)} bytes, {raw} declared")
            return np.frombuffer(out, np.uint8)

    else:
        dctx = module.ZstdDecompressor()

        def decompress(wire: np.ndarray, raw: int) -> np.ndarray:
            out = np.empty(raw, np.uint8)
            view = memoryview(out)
            got = 0
            with dctx.stream_reader(memoryview(wire), read_across_frames=False) as reader:
                while got < raw:
                    step = reader.readinto(view[got:])
                    if not step:
                        break
                    got += step
                extra = reader.read(1)
            if got != raw or extra:
                raise DecodeError(f"zstd buffer does not decompress to the {raw} bytes declared")
            return out

    _DECOMPRESSORS[codec_id] = decompress
    return decompress


class MessageStream:
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
        self._compressor = resolve_compression(compression)
        self.sock = sock
        self.chunk_size = int(chunk_size)
        self.max_message_bytes = int(max_message_bytes)
        self.broken: BaseException | None = None
        self._timeout: float | None = -1.0
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
        self._label = "data stream"
        self._deadline: float | None = None
        self._stall: float | None = None
        self._progress = 0.0
        self._started = False
        self._alive: Callable[[], None] | None = None
        self.last_seq = 0
        if _OS_TIMEOUTS:
            sock.settimeout(None)  # blocking; waits are bounded by SO_RCVTIMEO / SO_SNDTIMEO
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a socketpair in a test): nothing to tune
        if socket_buffer:
            for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, int(socket_buffer))
                except OSError:
                    pass  # refused: the kernel's autotuning stays in charge

    # ------------------------------------------------------------------ state

    def _check(self) -> None:
        if self.broken is not None:
            raise ConnectionLost(f"the TCP data stream is unusable after an earlier failure: {self.broken}")

    def _abort(self, exc: BaseException) -> None:
        """Mark the stream broken and cut the connection (the peer sees EOF)."""
        if self.broken is None:
            self.broken = exc
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Close the socket; later calls raise :class:`ConnectionLost`. Safe to call twice."""
        if self.broken is None:
            self.broken = ConnectionLost("the data stream was closed")
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # ------------------------------------------------------------------ one bounded system call

    def _set_wait(self, wait: float) -> None:
        if _OS_TIMEOUTS:
            # Blocking socket + kernel timeouts: one system call per operation, and a
            # large send or MSG_WAITALL receive completes inside the kernel.
            micros = max(1000, int(wait * 1e6))  # a zero timeval would mean "forever"
            timeval = struct.pack("ll", micros // 1_000_000, micros % 1_000_000)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        else:
            self.sock.settimeout(wait)
        self._timeout = wait

    def _io(self, op: Callable[..., int], *args: Any) -> int:
        """Run one socket operation, waiting in slices until the deadline; returns its count."""
        while True:
            wait = WAIT_SLICE_S
            deadline = self._deadline
            if self._stall is not None and self._started:
                stall_deadline = self._progress + self._stall
                if deadline is None or stall_deadline < deadline:
                    deadline = stall_deadline
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self._started and deadline != self._deadline:
                        raise FastEnvTimeout(f"{self._label}: the peer stopped exchanging data for {self._stall:g} s")
                    raise FastEnvTimeout(f"{self._label} did not complete within the timeout (tcp)")
                wait = min(wait, remaining)
            if wait != self._timeout:
                self._set_wait(wait)
            try:
                count = op(*args)
            except (TimeoutError, BlockingIOError):  # one slice passed with no progress
                if self._alive is not None:
                    self._alive()
                continue
            except OSError as exc:
                raise ConnectionLost(f"{self._label}: connection lost ({exc.strerror or exc})") from exc
            if self._stall is not None:
                self._progress = time.monotonic()
            return count

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
        head = _head_struct(count).pack(*fields)
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
        if self._spin is not None and self._end == self._start:
            self._spin(self.sock, self._spin_us)  # whatever it found, the read below takes it
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
    ) -> Message:
        """Receive one whole message.

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
                    out = _decompressor(codec_id)(out, raw)
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
    "DEFAULT_CODEC",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ENTRY",
    "ERROR",
    "HEADER",
    "MAGIC",
    "RESULT",
    "Message",
    "MessageRejected",
    "MessageStream",
    "MissingDependency",
    "resolve_compression",
]
