"""What a fastenv recording holds, and how its records are encoded.

A recording is an MCAP file. Every call a session made is one message on
topic ``/fastenv/<method>``; the message holds ``(args, kwargs, result)`` (or
``(args, kwargs, error)`` for a call the env raised from) in one of two
encodings, named by the channel's ``message_encoding``:

``fastenv.layout``
    The compiled layout of :mod:`fastenv.layout`: scalars packed with one
    ``struct`` code, then every array's raw bytes, 64-byte aligned. The
    channel's schema holds the layout's spec (:func:`encode_value`), so a
    reader rebuilds values without knowing the env.
``fastenv.codec``
    :func:`encode_value`: fastenv's data-only codec (a skeleton plus raw
    array buffers), for values without a fixed layout.

Channel metadata names the session, the method, whether the server made the
call itself as a deadline's fallback, and the call's outcome. The message's
``sequence`` is the server's call number: a gap means calls were dropped.
Arrays that look like camera frames are also published as ROS 2
``sensor_msgs/msg/Image`` messages (CDR) on ``/fastenv/<method>/<path>``, so
Foxglove and other robotics viewers show them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

from fastenv import codec
from fastenv.errors import DecodeError

PROFILE = "fastenv"
LAYOUT_ENCODING = "fastenv.layout"
CODEC_ENCODING = "fastenv.codec"
RECORDING_METADATA = "fastenv.recording"  # name of the metadata record written at the start
SUMMARY_METADATA = "fastenv.recording.summary"  # written when the recording is closed: counts of kept and dropped calls
DESCRIPTION_PREFIX = "fastenv.recording.description/"  # metadata record per session: its env's description
FORMAT_VERSION = "1"

_FRAME_COUNT = struct.Struct("<I")
_FRAME_SIZE = struct.Struct("<Q")


def call_topic(method: str) -> str:
    """The topic of a method's calls."""
    return f"/fastenv/{method}"


def encode_value(value: Any) -> bytes:
    """``value`` through the data-only codec, as one bytes object (the skeleton, then each buffer)."""
    skeleton, buffers = codec.encode(value)
    frames = [skeleton, *(memoryview(buffer).cast("B") for buffer in buffers)]
    parts: list[Any] = [_FRAME_COUNT.pack(len(frames))]
    for frame in frames:
        parts.append(_FRAME_SIZE.pack(len(frame)))
        parts.append(frame)
    return b"".join(parts)


def decode_value(data: bytes | memoryview) -> Any:
    """Rebuild what :func:`encode_value` encoded (data only; arrays are copies owned by the caller)."""
    view = memoryview(data)
    try:
        (count,) = _FRAME_COUNT.unpack_from(view, 0)
        offset, frames = _FRAME_COUNT.size, []
        for _ in range(count):
            (size,) = _FRAME_SIZE.unpack_from(view, offset)
            offset += _FRAME_SIZE.size
            if offset + size > len(view):
                raise DecodeError("a recorded value is cut short")
            frames.append(bytearray(view[offset : offset + size]))
            offset += size
    except struct.error as exc:
        raise DecodeError(f"a recorded value is malformed: {exc}") from exc
    if not frames:
        raise DecodeError("a recorded value has no skeleton")
    return codec.decode(bytes(frames[0]), frames[1:])


def array_paths(spec: Any, prefix: str = "") -> Iterator[str]:
    """The path (``"2/0/rgb"``) of each array or tensor leaf of a layout spec, in the layout's array order."""
    kind = spec[0]
    if kind in ("array", "tensor"):
        yield prefix
    elif kind in ("tuple", "list"):
        for index, child in enumerate(spec[1]):
            yield from array_paths(child, f"{prefix}/{index}" if prefix else str(index))
    elif kind in ("dict", "odict"):
        for key, child in zip(spec[1], spec[2]):
            yield from array_paths(child, f"{prefix}/{key}" if prefix else str(key))


# ----------------------------------------------------------------------------- camera frames as ROS 2 images

IMAGE_SCHEMA_NAME = "sensor_msgs/msg/Image"
IMAGE_SCHEMA_ENCODING = "ros2msg"
IMAGE_MESSAGE_ENCODING = "cdr"
IMAGE_SCHEMA = b"""std_msgs/Header header
uint32 height
uint32 width
string encoding
uint8 is_bigendian
uint32 step
uint8[] data
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""
MIN_IMAGE_SIDE = 16  # smaller 2-D arrays are data, not pictures


def image_encoding(dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
    """The ``sensor_msgs/Image`` encoding of an array of this dtype and shape, or None if it is no image."""
    if len(shape) == 3 and shape[2] in (1, 3, 4):
        height, width, channels = shape
    elif len(shape) == 2:
        (height, width), channels = shape, 1
    else:
        return None
    if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        return None
    if dtype == np.uint8:
        return {1: "mono8", 3: "rgb8", 4: "rgba8"}[channels]
    if dtype == np.dtype("<u2") and channels == 1:
        return "mono16"
    if dtype == np.dtype("<f4") and channels == 1:
        return "32FC1"
    return None


def _cdr_string(text: str, parts: list[bytes], offset: int) -> int:
    data = text.encode() + b"\0"
    parts.append(b"\0" * (-offset % 4) + struct.pack("<I", len(data)) + data)
    return offset + (-offset % 4) + 4 + len(data)


def image_message(frame: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> bytes:
    """One ``sensor_msgs/msg/Image`` in little-endian CDR (what ROS 2 and Foxglove read)."""
    return b"".join(image_message_parts(frame, encoding, stamp_ns, frame_id))


def image_message_parts(frame: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> list[Any]:
    """:func:`image_message` in pieces, the pixels last and not copied (a C-contiguous frame is viewed)."""
    height, width = frame.shape[0], frame.shape[1]
    pixels = np.ascontiguousarray(frame)
    row_bytes = pixels.nbytes // height if height else 0
    parts = [b"\x00\x01\x00\x00", struct.pack("<iI", stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000)]
    offset = 8  # CDR alignment counts from after the 4-byte encapsulation header
    offset = _cdr_string(frame_id, parts, offset)
    parts.append(b"\0" * (-offset % 4) + struct.pack("<II", height, width))
    offset += (-offset % 4) + 8
    offset = _cdr_string(encoding, parts, offset)
    parts.append(b"\0")  # is_bigendian
    offset += 1
    parts.append(b"\0" * (-offset % 4) + struct.pack("<II", row_bytes, pixels.nbytes))
    parts.append(pixels.data.cast("B"))
    return parts
