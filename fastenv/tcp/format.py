"""The TCP data plane's message format (written and read by :class:`~fastenv.tcp.framing.MessageStream`).
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
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from fastenv.errors import ProtocolError

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


HEAD_STRUCTS: dict[int, struct.Struct] = {}


def head_struct(count: int) -> struct.Struct:
    """The struct of a header followed by a table of ``count`` entries."""
    found = HEAD_STRUCTS.get(count)
    if found is None:
        found = struct.Struct(HEADER.format + ENTRY.format[1:] * count)
        if len(HEAD_STRUCTS) < 256:
            HEAD_STRUCTS[count] = found
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
