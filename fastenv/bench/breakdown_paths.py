"""A fastenv data plane's encode and decode, redone in-process on real buffers (for the breakdown).

:func:`open_path` gives a :class:`PlanePath` for a plane: :class:`ShmPath` (the
shm plane's compiled layouts in a real shared-memory arena, reply arrays lent
from the slot) or :class:`TcpPath` (the stream's encoder and decoder, decoded
from owned ``uint8`` buffers). :func:`fastenv.bench.breakdown.measure_costs`
times each call; see :mod:`fastenv.bench.breakdown` for what each part holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from fastenv import codec
from fastenv.errors import FastEnvError
from fastenv.layout import Layout, LayoutMismatch
from fastenv.layout_spec import infer_spec
from fastenv.loans import ReplyLoans
from fastenv.shm.arena import (
    CALL,
    FAST,
    FAST_DATA,
    RESULT,
    WITH_LAYOUT,
    Arena,
    ArenaShape,
    envelope_size,
)
from fastenv.shm.layouts import LayoutReceiver, LayoutSender
from fastenv.shm.plane import DEFAULT_SHAPE
from fastenv.tcp.format import FLAG_LAYOUT
from fastenv.tcp.layouts import StreamDecoder, StreamEncoder

__all__ = ["PlanePath", "ShmPath", "TcpPath", "open_path"]

_KEY = "step"  # the plane keys layouts by call name


class PlanePath(Protocol):
    """One plane's steps; ``seq`` numbers calls from 1 as the plane does.

    :meth:`deliver` runs untimed between an encode and its decode: whatever
    moving the message to the peer does (the transport's part).
    """

    general_messages: int

    def encode_request(self, seq: int, body: Any) -> None: ...
    def decode_request(self, seq: int) -> Any: ...
    def encode_reply(self, seq: int, value: Any) -> None: ...
    def decode_reply(self, seq: int) -> Any: ...
    def deliver(self) -> None: ...
    def start_call(self, seq: int) -> None: ...


class TcpPath:
    """The TCP plane's encoding work (:mod:`fastenv.tcp.layouts`); decode from owned uint8 buffers."""

    def __init__(self) -> None:
        self.general_messages = 0
        self._client, self._server = StreamEncoder(), StreamEncoder()
        self._client_decoder = StreamDecoder(codec.DEFAULT_LIMITS)
        self._server_decoder = StreamDecoder(codec.DEFAULT_LIMITS)
        self._encoded: tuple[Any, list[Any], int, int] = (b"", [], 0, 0)
        self._received: tuple[bytes, list[np.ndarray], int, int] = (b"", [], 0, 0)

    def deliver(self) -> None:
        """Copy the message to where the peer's stream leaves it after ``recv_into``."""
        skeleton, buffers, flags, layout_id = self._encoded
        if not flags & FLAG_LAYOUT:
            self.general_messages += 1
        arrays = [np.frombuffer(memoryview(buffer).cast("B"), dtype=np.uint8).copy() for buffer in buffers]
        self._received = bytes(skeleton), arrays, flags, layout_id

    def start_call(self, seq: int) -> None:
        """Nothing to prepare: reply arrays are plain arrays on the stream."""

    def encode_request(self, seq: int, body: Any) -> None:
        self._encoded = self._client.encode(_KEY, body)

    def decode_request(self, seq: int) -> Any:
        return self._server_decoder.decode(*self._received)

    def encode_reply(self, seq: int, value: Any) -> None:
        self._encoded = self._server.encode(_KEY, value)

    def decode_reply(self, seq: int) -> Any:
        return self._client_decoder.decode(*self._received)


class ShmPath:
    """The shared-memory plane's encode/decode on one real arena (unlinked at once; closed by :meth:`close`)."""

    def __init__(self, request: Any, reply: Any) -> None:
        shape = ArenaShape(
            _capacity(request, DEFAULT_SHAPE.request_capacity),
            _capacity(reply, DEFAULT_SHAPE.slot_capacity),
            DEFAULT_SHAPE.slots,
        )
        self.arena = Arena.create(shape)
        self.arena.unlink()  # nobody attaches: the memory lives as long as the mapping
        self.general_messages = 0
        self._client_sender, self._client_receiver = LayoutSender(), LayoutReceiver()
        self._server_sender, self._server_receiver = LayoutSender(), LayoutReceiver()
        # The env's fastenv.reply_array() calls during a step get reply-slot memory, as on the plane.
        self._loans = ReplyLoans(self._reply_views)
        self._loans.bind()

    def _reply_views(self, call: tuple[str, Arena, int]) -> tuple[list, Any] | None:
        _, arena, seq = call
        prepared = self._server_sender.prepared(arena, *self._slot(seq), _KEY)
        return None if prepared is None else (prepared[1], prepared[3])

    def start_call(self, seq: int) -> None:
        """The env step of ``seq`` is about to run (its reply arrays come from that reply's slot)."""
        self._loans.call = (_KEY, self.arena, seq)

    def deliver(self) -> None:
        """Nothing to move: the peer reads the same memory (the doorbell is the transport's part)."""

    def _slot(self, seq: int) -> tuple[int, int]:
        shape = self.arena.shape
        return shape.slot_offset(seq % shape.slots), shape.slot_capacity

    def _request_region(self) -> tuple[int, int]:
        return self.arena.request_offset(), self.arena.shape.request_capacity

    def _write(self, sender: LayoutSender, offset: int, capacity: int, kind: int, seq: int, value: Any) -> bool:
        """As the plane sends: a FAST envelope when the key's layout fits (True), else the general codec."""
        if sender.write_fast(self.arena, offset, capacity, _KEY, kind, seq, value, -1, self._loans.places()):
            return True
        self.general_messages += 1
        definition = sender.define(_KEY, value)
        payload = value if definition is None else (definition[0], definition[1], value)
        skeleton, buffers = codec.encode(payload)
        if self._loans.from_slot:  # as the worker does: the envelope overwrites the slot the arrays live in
            buffers = [bytes(memoryview(buffer)) for buffer in buffers]
        self.arena.write_envelope(offset, capacity, kind, seq, skeleton, buffers, WITH_LAYOUT if definition else 0)
        return False

    def _read(self, receiver: LayoutReceiver, offset: int, capacity: int, *, server: bool) -> Any:
        """As the plane receives: the server copies (the env may keep it), the client takes views."""
        arena = self.arena
        kind, flags, _, skeleton_len, _ = arena.read_header(offset)
        if kind == FAST:
            return receiver.read(arena, offset, capacity, skeleton_len, readonly=not server, copy=server)
        _, _, skeleton, buffers = arena.read_envelope(offset, capacity)
        if server:
            buffers = [bytearray(b) for b in buffers]
            skeleton = bytes(skeleton)
        value = codec.decode(skeleton, buffers)
        if flags & WITH_LAYOUT:
            receiver.define(value[0], value[1])
            value = value[2]
        return value

    def encode_request(self, seq: int, body: Any) -> None:
        self._write(self._client_sender, *self._request_region(), CALL, seq, body)

    def decode_request(self, seq: int) -> Any:
        return self._read(self._server_receiver, *self._request_region(), server=True)

    def encode_reply(self, seq: int, value: Any) -> None:
        loans = self._loans
        if not loans.lent:
            loans.call = None
            self._write(self._server_sender, *self._slot(seq), RESULT, seq, value)
            return
        settled = self._write(self._server_sender, *self._slot(seq), RESULT, seq, value)
        loans.end(value, settled=settled)

    def decode_reply(self, seq: int) -> Any:
        return self._read(self._client_receiver, *self._slot(seq), server=False)

    def close(self) -> None:
        """Drop the cached views, then the mapping (a view still alive keeps it until collected)."""
        self._loans.unbind()
        del self._client_sender, self._client_receiver, self._server_sender, self._server_receiver, self._loans
        with contextlib.suppress(BufferError):  # a caller still holds a view: the GC unmaps later
            self.arena.close()


def _capacity(value: Any, default: int) -> int:
    """A region size that holds ``value`` in either encoding (the plane grows to 5/4 of the need)."""
    skeleton, buffers = codec.encode(value)
    need = envelope_size(len(skeleton) + 4096, [memoryview(b).nbytes for b in buffers])  # + the layout spec
    with contextlib.suppress(LayoutMismatch, FastEnvError):
        need = max(need, FAST_DATA + Layout(infer_spec(value)).size)
    return max(default, (need * 5 // 4 + 4095) // 4096 * 4096)


@contextlib.contextmanager
def open_path(plane: str, request: Any, reply: Any) -> Iterator[PlanePath]:
    """The in-process path of ``plane`` (``shm`` sized for ``request`` and ``reply``), closed on exit."""
    if plane == "tcp":
        yield TcpPath()
        return
    if plane != "shm":
        raise KeyError(f"unknown data plane {plane!r}; choose shm or tcp")
    path = ShmPath(request, reply)
    try:
        yield path
    finally:
        path.close()
