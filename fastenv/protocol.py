"""fastenv's wire format on the ZeroMQ control channel.

A message is a ZeroMQ multipart message::

    frame 0:   header (12 bytes) + skeleton      (see fastenv.codec)
    frame 1..: raw array buffers referenced by the skeleton

The header is ``b"FE"``, the protocol version (u8), the message kind (u8) and
a request id (u64, little endian). Its first four bytes keep this layout in
every protocol version, so that a peer speaking another version is told so in
words (a ``VERSION_MISMATCH`` reply whose body is plain ASCII) instead of
failing to parse.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from fastenv import codec
from fastenv.errors import ProtocolError

PROTOCOL_VERSION = 1
MAGIC = b"FE"
HEADER = struct.Struct("<2sBBQ")
HEADER_SIZE = HEADER.size
GETATTR = "__getattr__"  # the pseudo-method name of an attribute read in a CALL
BATCH_STEP = "__batch_step__"  # pseudo-method: K steps of one env in one round trip
LEASE = "__lease__"  # pseudo-method: ("acquire" | "release" | "holder",) on the control lease


class Kind(enum.IntEnum):
    """Message kinds. Part of the wire format: never renumber."""

    HELLO = 1  # client -> server: open a session
    WELCOME = 2  # server -> client: session opened, env description
    CALL = 3  # client -> server: (method, args, kwargs)
    RESULT = 4  # server -> client: the method's return value
    ERROR = 5  # server -> client: {"kind", "type", "message", "traceback"}
    BYE = 6  # client -> server: close the session
    PING = 7  # either way: liveness
    PONG = 8
    VERSION_MISMATCH = 9  # server -> client: body is ASCII text
    ATTACH = 10  # client -> server: the data plane chosen after the shared-memory probe
    RESUME = 11  # client -> server: take up a session again after a dropped connection
    TRANSITION = 12  # server -> observers (publish socket): one call that changed the env


_KINDS = {int(k): k for k in Kind}


@dataclass
class Message:
    """A decoded message: its kind, request id, and the skeleton plus buffers of its body.

    ``user_id`` is who sent it when the connection is authenticated: the
    client's public key (Z85), as the server's ZAP handler vouched for it
    (see :func:`user_id_of`); None otherwise, or where nobody asked.
    """

    kind: Kind
    request_id: int
    version: int
    skeleton: memoryview | bytes
    buffers: Sequence[Any]
    user_id: str | None = None

    def body(self, limits: codec.Limits = codec.DEFAULT_LIMITS) -> Any:
        """Decode the body (raises :class:`DecodeError` for anything but plain data)."""
        return codec.decode(self.skeleton, self.buffers, limits=limits)


def pack(kind: Kind, request_id: int, value: Any = None) -> list[Any]:
    """Build the frames of a message carrying ``value``."""
    skeleton, buffers = codec.encode(value)
    return [HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, request_id) + skeleton, *buffers]


def pack_text(kind: Kind, request_id: int, text: str) -> list[bytes]:
    """Build a message whose body is plain ASCII text (for VERSION_MISMATCH)."""
    return [HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, request_id) + text.encode("ascii", "replace")]


def unpack(frames: Sequence[Any]) -> Message:
    """Parse the frames of a received message (``zmq.Frame`` or bytes).

    Raises :class:`ProtocolError` if frame 0 is not a fastenv header. A
    version other than ours is returned as is; callers decide what to do.
    """
    if not frames:
        raise ProtocolError("empty message")
    first = frames[0]
    head = first.bytes if hasattr(first, "bytes") else bytes(first)
    if len(head) < HEADER_SIZE:
        raise ProtocolError(f"message too short for a fastenv header ({len(head)} bytes)")
    magic, version, kind_value, request_id = HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ProtocolError("not a fastenv message (bad magic)")
    kind = _KINDS.get(kind_value)
    if kind is None:
        raise ProtocolError(f"unknown message kind {kind_value}")
    skeleton = memoryview(head)[HEADER_SIZE:]
    return Message(kind, request_id, version, skeleton, frames[1:])


def peek_request_id(frames: Sequence[Any]) -> int:
    """The request id of a possibly malformed message (0 when unreadable)."""
    try:
        first = frames[0]
        head = first.bytes if hasattr(first, "bytes") else bytes(first)
        return HEADER.unpack_from(head)[3]
    except (IndexError, struct.error, TypeError):
        return 0


def user_id_of(frame: Any) -> str | None:
    """The ZAP ``User-Id`` of the connection a received ``zmq.Frame`` came on (None: not authenticated)."""
    get = getattr(frame, "get", None)
    if get is None:
        return None
    try:
        value = get("User-Id")
    except zmq.ZMQError:  # EINVAL: no such property on an unauthenticated connection
        return None
    return value or None


def text_of(message: Message) -> str:
    """The ASCII body of a VERSION_MISMATCH message."""
    return bytes(message.skeleton).decode("ascii", "replace")


__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "Kind",
    "MAGIC",
    "Message",
    "PROTOCOL_VERSION",
    "BATCH_STEP",
    "GETATTR",
    "LEASE",
    "pack",
    "pack_text",
    "peek_request_id",
    "text_of",
    "unpack",
    "user_id_of",
]
